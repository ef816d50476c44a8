"""The Whisper encoder as a plain ONNX graph, for ONNX Runtime as a peer in `encoder.bench`.

Built in memory from the converted weights (HF layout, via kernel_to_encoder)
with the standard operators ONNX Runtime optimises (Conv, MatMul, Softmax,
LayerNormalization, erf GELU, which its optimiser fuses), so the bench compares
our kernels with ONNX Runtime's on the same weights and the same arithmetic.
Input `mel` (1, n_mels, 3000); output `last_hidden_state` (1, n_audio_ctx, d).
"""
from __future__ import annotations

import math

import numpy as np

from weights_tools.dims import ModelDimensions
from weights_tools.onnx_decoder import _Builder, _gelu, _layernorm


def _transposed(g: _Builder, name: str) -> str:
    """Weight `name` (HF layout (out, in)) stored transposed, so MatMul reads (in, out)."""
    return g.array(f"{name}.T", np.ascontiguousarray(g.arrays[name].T))


def _linear(g: _Builder, x: str, prefix: str) -> str:
    """x · Wᵀ + b with W in HF layout (out, in)."""
    return g.op("Add", g.op("MatMul", x, _transposed(g, f"{prefix}.weight")), g.weight(f"{prefix}.bias"))


def _attention(g: _Builder, x: str, p: str, dims: ModelDimensions) -> str:
    """Full self-attention over all positions, heads as a batch: (1, T, D) -> (1, T, D)."""
    h, d = dims.n_audio_head, dims.n_audio_state // dims.n_audio_head
    shape = g.const([1, dims.n_audio_ctx, h, d])

    def heads(t: str, perm: list[int]) -> str:
        return g.op("Transpose", g.op("Reshape", t, shape), perm=perm)

    scale = g.const(1 / math.sqrt(d), np.float32)
    q = heads(g.op("Mul", _linear(g, x, f"{p}.q_proj"), scale), [0, 2, 1, 3])          # (1, H, T, d)
    k = heads(g.op("MatMul", x, _transposed(g, f"{p}.k_proj.weight")), [0, 2, 3, 1])   # (1, H, d, T)
    v = heads(_linear(g, x, f"{p}.v_proj"), [0, 2, 1, 3])                              # (1, H, T, d)
    probs = g.op("Softmax", g.op("MatMul", q, k), axis=-1)                               # (1, H, T, T)
    out = g.op("Reshape", g.op("Transpose", g.op("MatMul", probs, v), perm=[0, 2, 1, 3]),
               g.const([1, dims.n_audio_ctx, dims.n_audio_state]))
    return _linear(g, out, f"{p}.out_proj")


def build_encoder_onnx(dims: ModelDimensions, w: dict[str, np.ndarray]) -> bytes:
    """Serialized ONNX encoder with its weights inside; `w` holds HF-layout encoder tensors."""
    from onnx import TensorProto, helper

    g = _Builder(arrays=w)
    x = g.op("Conv", "mel", g.weight("encoder.conv1.weight"), g.weight("encoder.conv1.bias"), pads=[1, 1])
    x = g.op("Conv", _gelu(g, x), g.weight("encoder.conv2.weight"), g.weight("encoder.conv2.bias"),
             pads=[1, 1], strides=[2])
    x = g.op("Transpose", _gelu(g, x), perm=[0, 2, 1])                                   # (1, T, D)
    x = g.op("Add", x, g.weight("encoder.embed_positions.weight"))
    for i in range(dims.n_audio_layer):
        p = f"encoder.layers.{i}"
        x = g.op("Add", x, _attention(g, _layernorm(g, x, f"{p}.self_attn_layer_norm"), f"{p}.self_attn", dims))
        hidden = _gelu(g, _linear(g, _layernorm(g, x, f"{p}.final_layer_norm"), f"{p}.fc1"))
        x = g.op("Add", x, _linear(g, hidden, f"{p}.fc2"))
    final = _layernorm(g, x, "encoder.layer_norm")
    g.nodes.append(helper.make_node("Identity", [final], ["last_hidden_state"]))
    frames = 2 * dims.n_audio_ctx
    return g.model_bytes(
        "whisper_encoder", [helper.make_tensor_value_info("mel", TensorProto.FLOAT, [1, dims.n_mels, frames])],
        [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT,
                                       [1, dims.n_audio_ctx, dims.n_audio_state])])
