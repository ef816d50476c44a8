"""Read a CTranslate2 Whisper directory (model.bin, config.json, tokenizer.json).

model.bin layout (binary version 2 to 6, little-endian; strings are u16 length
including a trailing NUL, then the bytes):
    u32 binary_version, string spec_name, u32 spec_revision,
    u32 n_variables, n x (string name, u8 rank, u32 dims[rank], u8 dtype_id,
                          u32 n_bytes, bytes data),
    u32 n_aliases, n x (string alias, string target)
dtype_id: 0 f32, 1 i8, 2 i16, 3 i32, 4 f16, 5 bf16. int8 weights carry a per-row
`<name>_scale` (w = q / scale), as CTranslate2's quantizer writes them.

`read_ct2` maps every tensor to the Hugging Face Whisper names (un-fusing
CTranslate2's fused Q/K/V and cross-attention K/V; the key projection has no
bias in Whisper, so its fused bias slice must be zero) and synthesises the HF
config the rest of Amanuensis reads.
"""
from __future__ import annotations

import json
import mmap
import re
import struct
from pathlib import Path

import numpy as np

from kernels.errors import AmanuensisError

_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}
_BF16 = 5
MAX_RANK = 8


class _Cursor:
    """Bounds-checked reads over the mmapped model.bin."""

    def __init__(self, buf, path: Path):
        self.buf, self.pos, self.path = buf, 0, path

    def take(self, n: int, what: str) -> bytes:
        if n < 0 or self.pos + n > len(self.buf):
            raise AmanuensisError(
                f"{self.path}: truncated or corrupt: {what} needs {n} bytes at offset {self.pos}, "
                f"file has {len(self.buf)}")
        data = self.buf[self.pos:self.pos + n]  # a copy, so nothing pins the mmap
        self.pos += n
        return data

    def u8(self, what):
        return self.take(1, what)[0]

    def u16(self, what):
        return struct.unpack("<H", self.take(2, what))[0]

    def u32(self, what):
        return struct.unpack("<I", self.take(4, what))[0]

    def string(self, what):
        n = self.u16(what)
        raw = self.take(n, what)
        if n == 0 or raw[-1] != 0:
            raise AmanuensisError(f"{self.path}: corrupt string for {what} at offset {self.pos - n}")
        try:
            return raw[:-1].decode("utf-8")
        except UnicodeDecodeError:
            raise AmanuensisError(f"{self.path}: corrupt string for {what} at offset {self.pos - n}") from None


def _read_variable(cur: _Cursor, version: int):
    name = cur.string("variable name")
    rank = cur.u8(f"rank of {name}")
    if rank > MAX_RANK:
        raise AmanuensisError(f"{cur.path}: corrupt: variable {name!r} has rank {rank}")
    shape = tuple(cur.u32(f"shape of {name}") for _ in range(rank))
    if version >= 4:
        dtype_id = cur.u8(f"dtype of {name}")
        nbytes = cur.u32(f"size of {name}")
    else:
        item = cur.u8(f"item size of {name}")
        dtype_id = {4: 0, 1: 1, 2: 4}.get(item)
        nbytes = cur.u32(f"element count of {name}") * item
    count = int(np.prod(shape, dtype=np.int64))
    if dtype_id == _BF16:
        import ml_dtypes
        dtype = np.dtype(ml_dtypes.bfloat16)
    elif dtype_id in _DTYPES:
        dtype = np.dtype(_DTYPES[dtype_id])
    else:
        raise AmanuensisError(f"{cur.path}: variable {name!r} has unknown dtype id {dtype_id}")
    if nbytes != count * dtype.itemsize:
        raise AmanuensisError(
            f"{cur.path}: corrupt: variable {name!r} of shape {shape} ({dtype}) declares {nbytes} bytes")
    data = np.frombuffer(cur.take(nbytes, f"data of {name}"), dtype=dtype).reshape(shape)
    return name, data


def read_model_bin(path: Path) -> dict[str, np.ndarray]:
    """Parse model.bin into {CTranslate2 name: array} (aliases resolved, raw dtypes)."""
    path = Path(path)
    if not path.is_file():
        raise AmanuensisError(f"{path}: file not found")
    with open(path, "rb") as f:
        if path.stat().st_size == 0:
            raise AmanuensisError(f"{path}: empty file")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            cur = _Cursor(mm, path)
            version = cur.u32("binary version")
            if not 2 <= version <= 6:
                raise AmanuensisError(f"{path}: unsupported CTranslate2 binary version {version} (expected 2 to 6)")
            spec = cur.string("spec name")
            cur.u32("spec revision")
            if spec != "WhisperSpec":
                raise AmanuensisError(f"{path}: a CTranslate2 {spec!r} model, not a Whisper model")
            variables = {}
            for _ in range(cur.u32("variable count")):
                name, data = _read_variable(cur, version)
                variables[name] = data
            if version >= 3:
                for _ in range(cur.u32("alias count")):
                    alias, target = cur.string("alias"), cur.string("alias target")
                    if target not in variables:
                        raise AmanuensisError(f"{path}: alias {alias!r} points to missing {target!r}")
                    variables[alias] = variables[target]
            if cur.pos != len(mm):
                raise AmanuensisError(f"{path}: corrupt: {len(mm) - cur.pos} unexpected bytes after the model")
    return variables


def _dequantize(variables: dict) -> dict[str, np.ndarray]:
    """fp16/bf16/int8 → fp32; int8 weights are divided by their per-row scale."""
    out = {}
    for name, value in variables.items():
        if name.endswith("_scale"):
            continue
        scale = variables.get(name + "_scale")
        if scale is not None and value.dtype in (np.int8, np.int16):
            scale = np.asarray(scale, np.float32)
            value = value.astype(np.float32) / (scale.reshape(-1, *([1] * (value.ndim - 1))) if scale.ndim else scale)
        out[name] = value
    return out


# CTranslate2 scope → Hugging Face module, per layer. Fused projections are split below.
_LAYER_MAP = {
    "self_attention/layer_norm": "self_attn_layer_norm",
    "self_attention/linear_1": "self_attn.out_proj",
    "attention/layer_norm": "encoder_attn_layer_norm",
    "attention/linear_0": "encoder_attn.q_proj",
    "attention/linear_2": "encoder_attn.out_proj",
    "ffn/layer_norm": "final_layer_norm",
    "ffn/linear_0": "fc1",
    "ffn/linear_1": "fc2",
}
_TOP_MAP = {
    "encoder/conv1": "encoder.conv1", "encoder/conv2": "encoder.conv2",
    "encoder/position_encodings/encodings": "encoder.embed_positions.weight",
    "encoder/layer_norm": "encoder.layer_norm",
    "decoder/embeddings/weight": "decoder.embed_tokens.weight",
    "decoder/position_encodings/encodings": "decoder.embed_positions.weight",
    "decoder/layer_norm": "decoder.layer_norm",
}
_PARAM = {"gamma": "weight", "beta": "bias", "weight": "weight", "bias": "bias"}
# Scalars CTranslate2 stores as variables; consumed as metadata, not weights.
_METADATA = {"activation", "alibi", "alignment_heads", "alignment_layer", "num_heads",
             "pre_norm", "scale_embeddings", "start_from_zero_embedding"}
_LAYER_RE = re.compile(r"^(encoder|decoder)/layer_(\d+)/(.+)/(gamma|beta|weight|bias)$")


def _split_fused(path: Path, hf: dict, prefix: str, parts: tuple, w, b) -> None:
    """Split a fused projection along its output axis into `parts` (HF module names)."""
    n = len(parts)
    if w.shape[0] % n:
        raise AmanuensisError(f"{path}: fused projection {prefix} has {w.shape[0]} rows, not a multiple of {n}")
    for part, wi, bi in zip(parts, np.split(w, n), np.split(b, n)):
        hf[f"{prefix}.{part}.weight"] = wi
        if part == "k_proj":
            if np.any(bi != 0):
                raise AmanuensisError(f"{path}: {prefix}.k_proj has a non-zero bias; Whisper's key projection has none")
        else:
            hf[f"{prefix}.{part}.bias"] = bi


def _map_names(path: Path, ct2: dict) -> tuple[dict, dict]:
    """Return ({HF name: fp32 array}, {metadata scalars}) for every CTranslate2 variable."""
    hf, meta, fused = {}, {}, {}
    for name, value in ct2.items():
        side, _, rest = name.partition("/")
        if rest in _METADATA:
            meta[f"{side}/{rest}"] = value
            continue
        if name == "decoder/projection/weight":
            continue  # tied to decoder.embed_tokens.weight in Whisper
        value = np.asarray(value, dtype=np.float32)
        m = _LAYER_RE.match(name)
        if m:
            side, idx, scope, param = m.groups()
            prefix = f"{side}.layers.{idx}"
            if scope in ("self_attention/linear_0", "attention/linear_1"):
                fused.setdefault((prefix, scope), {})[param] = value
                continue
            if scope not in _LAYER_MAP:
                raise AmanuensisError(f"{path}: unexpected CTranslate2 variable {name!r}")
            hf[f"{prefix}.{_LAYER_MAP[scope]}.{_PARAM[param]}"] = value
            continue
        scope, _, param = name.rpartition("/")
        if name in _TOP_MAP:
            hf[_TOP_MAP[name]] = value
        elif scope in _TOP_MAP and param in _PARAM:
            hf[f"{_TOP_MAP[scope]}.{_PARAM[param]}"] = value
        else:
            raise AmanuensisError(f"{path}: unexpected CTranslate2 variable {name!r}")
    for (prefix, scope), wb in fused.items():
        if set(wb) != {"weight", "bias"}:
            raise AmanuensisError(f"{path}: fused projection {prefix}/{scope} lacks its weight or bias")
        if scope == "self_attention/linear_0":
            _split_fused(path, hf, f"{prefix}.self_attn", ("q_proj", "k_proj", "v_proj"), wb["weight"], wb["bias"])
        else:
            _split_fused(path, hf, f"{prefix}.encoder_attn", ("k_proj", "v_proj"), wb["weight"], wb["bias"])
    return hf, meta


def _special_ids(tokenizer: Path) -> dict[str, int]:
    try:
        added = json.loads(tokenizer.read_text(encoding="utf-8")).get("added_tokens", [])
        return {t["content"]: t["id"] for t in added}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise AmanuensisError(f"{tokenizer}: unreadable tokenizer ({e})") from None


def _require(ids: dict, token: str, tokenizer: Path) -> int:
    if token not in ids:
        raise AmanuensisError(f"{tokenizer}: special token {token!r} is missing")
    return ids[token]


def _count_layers(hf: dict, side: str) -> int:
    return len({k.split(".")[2] for k in hf if k.startswith(f"{side}.layers.")})


def _scalar(meta: dict, key: str, default: int) -> int:
    value = meta.get(key)
    return int(np.asarray(value).reshape(-1)[0]) if value is not None else default


def _hf_config(path: Path, hf: dict, meta: dict, ct2_config: dict, tokenizer: Path) -> tuple[dict, dict]:
    """Synthesise HF config.json and generation_config.json from tensor shapes and CT2 metadata."""
    def shape(name):
        if name not in hf:
            raise AmanuensisError(f"{path}: missing tensor for {name}")
        return hf[name].shape

    d_model, n_mels, _ = shape("encoder.conv1.weight")
    # Every released Whisper uses 64-wide heads; old CT2 files without num_heads rely on that.
    enc_heads = _scalar(meta, "encoder/num_heads", d_model // 64)
    dec_heads = _scalar(meta, "decoder/num_heads", d_model // 64)
    ids = _special_ids(tokenizer)
    eot = _require(ids, "<|endoftext|>", tokenizer)
    config = {
        "model_type": "whisper", "architectures": ["WhisperForConditionalGeneration"],
        "num_mel_bins": n_mels, "d_model": d_model,
        "max_source_positions": shape("encoder.embed_positions.weight")[0],
        "max_target_positions": shape("decoder.embed_positions.weight")[0],
        "vocab_size": shape("decoder.embed_tokens.weight")[0],
        "encoder_layers": _count_layers(hf, "encoder"), "decoder_layers": _count_layers(hf, "decoder"),
        "encoder_attention_heads": enc_heads, "decoder_attention_heads": dec_heads,
        "encoder_ffn_dim": shape("encoder.layers.0.fc1.weight")[0],
        "decoder_ffn_dim": shape("decoder.layers.0.fc1.weight")[0],
        "activation_function": "gelu", "scale_embedding": False, "use_cache": True,
        "pad_token_id": eot, "bos_token_id": eot, "eos_token_id": eot,
        "decoder_start_token_id": _require(ids, "<|startoftranscript|>", tokenizer),
        "suppress_tokens": ct2_config.get("suppress_ids", []),
        "begin_suppress_tokens": ct2_config.get("suppress_ids_begin", []),
    }
    generation = {
        "alignment_heads": ct2_config.get("alignment_heads", []),
        "suppress_tokens": config["suppress_tokens"],
        "begin_suppress_tokens": config["begin_suppress_tokens"],
        "lang_to_id": {t: i for t, i in ids.items() if i in set(ct2_config.get("lang_ids", []))},
        "is_multilingual": config["vocab_size"] >= 51865,
        "decoder_start_token_id": config["decoder_start_token_id"], "eos_token_id": eot,
    }
    # Key names as in Hugging Face's Whisper generation configs.
    if "<|notimestamps|>" in ids:
        generation["no_timestamps_token_id"] = ids["<|notimestamps|>"]
    generation["task_to_id"] = {task: ids[f"<|{task}|>"] for task in ("transcribe", "translate")
                                if f"<|{task}|>" in ids}
    return config, generation


def read_ct2(directory: Path) -> tuple[dict, dict, dict]:
    """Return (HF config, generation config, {HF name: fp32 array}) from a CT2 Whisper directory."""
    directory = Path(directory)
    tokenizer = directory / "tokenizer.json"
    if not tokenizer.is_file():
        raise AmanuensisError(f"{directory}: no tokenizer.json beside model.bin")
    try:
        ct2_config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        ct2_config = {}
    except ValueError as e:
        raise AmanuensisError(f"{directory / 'config.json'}: invalid JSON ({e})") from None
    variables = _dequantize(read_model_bin(directory / "model.bin"))
    hf, meta = _map_names(directory / "model.bin", variables)
    config, generation = _hf_config(directory / "model.bin", hf, meta, ct2_config, tokenizer)
    return config, generation, hf
