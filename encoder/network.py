"""Whisper's encoder as a layer graph of kernels, built from the model's dims.

Phases (names of boundary tensors in brackets):
  front   one 30 s window of 16 kHz samples [samples] → log-mel, time-major [mel]
  stem    conv1 + GELU [conv1], conv2 stride 2 + GELU + positions [embed]
  block i norm [layers.i.self_attn_layer_norm] → QKV [.self_attn.qkv_proj] →
          attention [.self_attn] → out-projection + residual [.self_attn.out_proj] →
          norm [.final_layer_norm] → fc1 + GELU [.fc1] → fc2 + residual [.fc2]
  post    ln_post [layer_norm]
  cross   (for transcription) per decoder layer i, the cross-attention keys and values of
          the encoder output in one matmul [cross_kv.i]: matmul work for the encoder's kernels
Each node names its kernel (kernels/interface.py), its activation inputs, its weights
(encoder.safetensors names), FLOPs and bytes moved (fp32). kernels.runner runs it on a backend,
from the samples, or from a log-mel given as `mel` (the front end's node is then skipped).
"""
from __future__ import annotations

from kernels.frontend import INPUT_STRIDE, N_FFT, N_FRAMES, N_SAMPLES
from kernels.graph import Graph, Node
from weights_tools.dims import ModelDimensions
from weights_tools.layout import cross_kv_projection, cross_kv_shapes, kernel_shapes

INPUT = "samples"
MEL = "mel"
OUTPUT = "layer_norm"


def _linear(name, x, w_prefix, t, k, n, gelu=False, residual=None) -> Node:
    flops = 2 * t * k * n + t * n * (1 + (8 if gelu else 0) + (1 if residual else 0))
    return Node(name, "linear", (x,), (f"{w_prefix}.weight", f"{w_prefix}.bias"), (t, n), flops,
                (("gelu", gelu),), residual)


def _layernorm(name, x, w_prefix, t, d) -> Node:
    return Node(name, "layernorm", (x,), (f"{w_prefix}.weight", f"{w_prefix}.bias"), (t, d), 8 * t * d)


def _block(i: int, x: str, dims: ModelDimensions) -> list[Node]:
    t, d, f, h = dims.n_audio_ctx, dims.n_audio_state, dims.n_audio_mlp, dims.n_audio_head
    p = f"layers.{i}"
    w = f"encoder.{p}"
    attn_flops = 4 * t * t * d + 4 * h * t * t          # QKᵀ and PV matmuls + softmax (4 per score)
    return [
        # norm
        _layernorm(f"{p}.self_attn_layer_norm", x, f"{w}.self_attn_layer_norm", t, d),
        # self-attention over all T positions
        _linear(f"{p}.self_attn.qkv_proj", f"{p}.self_attn_layer_norm", f"{w}.self_attn.qkv_proj", t, d, 3 * d),
        Node(f"{p}.self_attn", "attention", (f"{p}.self_attn.qkv_proj",), (), (t, d), attn_flops,
             (("n_head", h),)),
        _linear(f"{p}.self_attn.out_proj", f"{p}.self_attn", f"{w}.self_attn.out_proj", t, d, d, residual=x),
        # feed-forward
        _layernorm(f"{p}.final_layer_norm", f"{p}.self_attn.out_proj", f"{w}.final_layer_norm", t, d),
        _linear(f"{p}.fc1", f"{p}.final_layer_norm", f"{w}.fc1", t, d, f, gelu=True),
        _linear(f"{p}.fc2", f"{p}.fc1", f"{w}.fc2", t, f, d, residual=f"{p}.self_attn.out_proj"),
    ]


def block_output(i: int) -> str:
    """Name of block i's output tensor."""
    return f"layers.{i}.fc2"


def cross_kv_output(i: int) -> str:
    """Name of decoder layer i's cross-attention [K | V] tensor (n_audio_ctx, 2·d_model)."""
    return f"cross_kv.{i}"


def build_encoder_graph(dims: ModelDimensions, cross_kv: bool = False) -> Graph:
    """The encoder graph for one 30 s window of `dims` (with the decoder's cross K/V if asked)."""
    t, d, c = dims.n_audio_ctx, dims.n_audio_state, dims.n_mels
    frames = INPUT_STRIDE * t                                # conv2 has stride 2
    bins = N_FFT // 2 + 1
    nodes = [
        # the DFT and the mel filters as matmuls, + window, power and log (~10 per element)
        Node(MEL, "log_mel", (INPUT,), (), (N_FRAMES, c),
             2 * N_FRAMES * N_FFT * 2 * bins + 2 * N_FRAMES * bins * c + 10 * N_FRAMES * (N_FFT + c),
             (("n_mels", c),)),
        Node("conv1", "conv1d_k3", (MEL,), ("encoder.conv1.weight", "encoder.conv1.bias"), (frames, d),
             2 * frames * 3 * c * d + 9 * frames * d, (("stride", 1), ("gelu", True))),
        # conv2 with the positions as its epilogue's residual: GELU(conv2 + b) + positions, rounded once
        Node("embed", "conv1d_k3", ("conv1",),
             ("encoder.conv2.weight", "encoder.conv2.bias", "encoder.embed_positions.weight"), (t, d),
             2 * t * 3 * d * d + 10 * t * d, (("stride", 2), ("gelu", True))),
    ]
    x = "embed"
    for i in range(dims.n_audio_layer):
        nodes += _block(i, x, dims)
        x = block_output(i)
    nodes.append(_layernorm(OUTPUT, x, "encoder.layer_norm", t, d))
    weights = kernel_shapes(dims)
    outputs = (OUTPUT,)
    if cross_kv:
        for i in range(dims.n_text_layer):
            nodes.append(_linear(cross_kv_output(i), OUTPUT, cross_kv_projection(i), t, d, 2 * d))
        weights = {**weights, **cross_kv_shapes(dims)}
        outputs += tuple(cross_kv_output(i) for i in range(dims.n_text_layer))
    shapes = {INPUT: (N_SAMPLES,), **{n.name: n.shape for n in nodes}}
    return Graph(INPUT, nodes, shapes, weights, outputs)
