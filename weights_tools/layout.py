"""Encoder weights in the layout the kernels want, and back to Hugging Face's.

Kernel layout (encoder.safetensors, fp32, row-major), names as in HF minus `model.`:

    encoder.conv{1,2}.weight        (3*C_in, d)   im2col order: row k*C_in + c  <- HF (d, C_in, 3)
    encoder.conv{1,2}.bias          (d,)
    encoder.embed_positions.weight  (n_audio_ctx, d)
    encoder.layers.i.self_attn.qkv_proj.weight  (d, 3d)  columns [q | k | v]  <- q/k/v_proj.weight.T
    encoder.layers.i.self_attn.qkv_proj.bias    (3d,)    [q_bias | 0 | v_bias] (Whisper's key has no bias)
    encoder.layers.i.self_attn.out_proj.weight  (d, d)   <- HF .T
    encoder.layers.i.fc1.weight     (d, d_ff)      <- HF .T
    encoder.layers.i.fc2.weight     (d_ff, d)      <- HF .T
    every other tensor (biases, layer norms) unchanged

Every matmul is then `x @ W` with x (T, K) and W (K, N), both row-major, which
is the operand order of the 64x64 matmul tiles. The conv weight order makes
conv1d with k=3 a strided view of the time-major input times one matrix.
"""
from __future__ import annotations

import numpy as np

from weights_tools.dims import ModelDimensions


def conv_to_kernel(w: np.ndarray) -> np.ndarray:
    """HF conv weight (d, C, K) -> (K*C, d), row k*C + c."""
    d, c, k = w.shape
    return np.ascontiguousarray(w.transpose(2, 1, 0).reshape(k * c, d))


def conv_from_kernel(w: np.ndarray, c_in: int) -> np.ndarray:
    """Inverse of conv_to_kernel."""
    kc, d = w.shape
    return np.ascontiguousarray(w.reshape(kc // c_in, c_in, d).transpose(2, 1, 0))


def _t(w: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(w.T)


def encoder_to_kernel(hf: dict, dims: ModelDimensions) -> dict[str, np.ndarray]:
    """HF encoder tensors (checked by names.check_tensors) -> kernel layout."""
    out = {
        "encoder.conv1.weight": conv_to_kernel(hf["encoder.conv1.weight"]),
        "encoder.conv2.weight": conv_to_kernel(hf["encoder.conv2.weight"]),
    }
    for name in ("encoder.conv1.bias", "encoder.conv2.bias", "encoder.embed_positions.weight",
                 "encoder.layer_norm.weight", "encoder.layer_norm.bias"):
        out[name] = hf[name]
    for i in range(dims.n_audio_layer):
        p = f"encoder.layers.{i}"
        a = f"{p}.self_attn"
        out[f"{a}.qkv_proj.weight"] = np.concatenate(
            [hf[f"{a}.q_proj.weight"].T, hf[f"{a}.k_proj.weight"].T, hf[f"{a}.v_proj.weight"].T], axis=1)
        out[f"{a}.qkv_proj.bias"] = np.concatenate(
            [hf[f"{a}.q_proj.bias"], np.zeros_like(hf[f"{a}.q_proj.bias"]), hf[f"{a}.v_proj.bias"]])
        for lin in (f"{a}.out_proj", f"{p}.fc1", f"{p}.fc2"):
            out[f"{lin}.weight"] = _t(hf[f"{lin}.weight"])
            out[f"{lin}.bias"] = hf[f"{lin}.bias"]
        for norm in (f"{p}.self_attn_layer_norm", f"{p}.final_layer_norm"):
            out[f"{norm}.weight"], out[f"{norm}.bias"] = hf[f"{norm}.weight"], hf[f"{norm}.bias"]
    return out


def kernel_to_encoder(k: dict, dims: ModelDimensions) -> dict[str, np.ndarray]:
    """Kernel layout -> HF encoder tensors (used to load our converted weights into PyTorch)."""
    d = dims.n_audio_state
    out = {
        "encoder.conv1.weight": conv_from_kernel(k["encoder.conv1.weight"], dims.n_mels),
        "encoder.conv2.weight": conv_from_kernel(k["encoder.conv2.weight"], d),
    }
    for name, value in k.items():
        if name.endswith("qkv_proj.weight"):
            a = name.removesuffix(".qkv_proj.weight")
            for j, part in enumerate(("q_proj", "k_proj", "v_proj")):
                out[f"{a}.{part}.weight"] = _t(value[:, j * d:(j + 1) * d])
        elif name.endswith("qkv_proj.bias"):
            a = name.removesuffix(".qkv_proj.bias")
            out[f"{a}.q_proj.bias"], out[f"{a}.v_proj.bias"] = value[:d], value[2 * d:]
        elif name.endswith(("out_proj.weight", "fc1.weight", "fc2.weight")):
            out[name] = _t(value)
        elif name not in out:
            out[name] = value
    return out


def kernel_shapes(dims: ModelDimensions) -> dict[str, tuple]:
    """Names and shapes of encoder.safetensors (the kernel layout above)."""
    d, f = dims.n_audio_state, dims.n_audio_mlp
    shapes = {
        "encoder.conv1.weight": (3 * dims.n_mels, d), "encoder.conv1.bias": (d,),
        "encoder.conv2.weight": (3 * d, d), "encoder.conv2.bias": (d,),
        "encoder.embed_positions.weight": (dims.n_audio_ctx, d),
        "encoder.layer_norm.weight": (d,), "encoder.layer_norm.bias": (d,),
    }
    for i in range(dims.n_audio_layer):
        p = f"encoder.layers.{i}"
        shapes.update({
            f"{p}.self_attn_layer_norm.weight": (d,), f"{p}.self_attn_layer_norm.bias": (d,),
            f"{p}.self_attn.qkv_proj.weight": (d, 3 * d), f"{p}.self_attn.qkv_proj.bias": (3 * d,),
            f"{p}.self_attn.out_proj.weight": (d, d), f"{p}.self_attn.out_proj.bias": (d,),
            f"{p}.final_layer_norm.weight": (d,), f"{p}.final_layer_norm.bias": (d,),
            f"{p}.fc1.weight": (d, f), f"{p}.fc1.bias": (f,),
            f"{p}.fc2.weight": (f, d), f"{p}.fc2.bias": (d,),
        })
    return shapes


def cross_kv_projection(layer: int) -> str:
    """Name (without .weight/.bias) of decoder layer `layer`'s fused cross-attention [K | V] projection,
    (d, 2d) in the kernel layout: the encoder's backend runs it once per window."""
    return f"decoder.layers.{layer}.encoder_attn.kv_proj"


def cross_kv_sources(dims: ModelDimensions) -> set[str]:
    """The decoder tensors (HF names) that cross_kv_to_kernel reads."""
    return {f"decoder.layers.{i}.encoder_attn.{part}" for i in range(dims.n_text_layer)
            for part in ("k_proj.weight", "v_proj.weight", "v_proj.bias")}


def cross_kv_to_kernel(decoder: dict, dims: ModelDimensions) -> dict[str, np.ndarray]:
    """Decoder cross-attention K and V projections fused for one matmul: W (d, 2d) = [k.T | v.T], b = [0 | v_bias]."""
    out = {}
    for i in range(dims.n_text_layer):
        a, kv = f"decoder.layers.{i}.encoder_attn", cross_kv_projection(i)
        out[f"{kv}.weight"] = np.concatenate([decoder[f"{a}.k_proj.weight"].T, decoder[f"{a}.v_proj.weight"].T], 1)
        out[f"{kv}.bias"] = np.concatenate([np.zeros_like(decoder[f"{a}.v_proj.bias"]), decoder[f"{a}.v_proj.bias"]])
    return out


def cross_kv_shapes(dims: ModelDimensions) -> dict[str, tuple]:
    d = dims.n_text_state
    return {name: shape for i in range(dims.n_text_layer) for name, shape in (
        (f"{cross_kv_projection(i)}.weight", (d, 2 * d)), (f"{cross_kv_projection(i)}.bias", (2 * d,)))}
