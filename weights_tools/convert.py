"""Convert a Hugging Face or CTranslate2 Whisper directory into an Amanuensis model directory.

The converted directory holds:
    amanuensis.json          format marker and version, source, dims
    config.json              Hugging Face Whisper config (dims and token ids)
    generation_config.json   alignment heads, suppressed tokens, language ids
    encoder.safetensors      encoder weights, fp32, in the kernel layout (see layout.py)
    decoder.safetensors      decoder weights, fp32, Hugging Face names and layout
    decoder.onnx             the decoder graph; its weights are external data in decoder.safetensors
    decoder-int8.onnx        the same with its linear layers in 8-bit blocks held in the file (the default)
    tokenizer.json           the model's tokenizer
It is written into a temporary sibling and renamed into place, so a failed or
interrupted conversion never leaves a half-written model behind.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from kernels.errors import AmanuensisError
from weights_tools import ct2, hf, layout, names
from weights_tools.dims import ModelDimensions
from weights_tools.fileio import umask_mode
from weights_tools.onnx_decoder import PRECISIONS, build_decoder_onnx
from weights_tools.safetensors_io import write_safetensors

FORMAT = "amanuensis-whisper"
FORMAT_VERSION = 7   # 2: logits_from; 3: decoder-int8.onnx; 4: decoder-int8-vocab.onnx; 5: int8 in 8-bit blocks;
                     # 6: cross-attention rows grouped per window, a cache of any size; 7: per-row padding
MANIFEST = "amanuensis.json"
DECODER_FILES = {p: "decoder.onnx" if p == "fp32" else f"decoder-{p}.onnx" for p in PRECISIONS}
FILES = (MANIFEST, "config.json", "generation_config.json", "encoder.safetensors", "decoder.safetensors",
         *DECODER_FILES.values(), "tokenizer.json")


def is_current(directory: Path) -> bool:
    """True if `directory` is a converted model of this format version with every file present."""
    try:
        manifest = json.loads((Path(directory) / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    return (manifest.get("format") == FORMAT and manifest.get("format_version") == FORMAT_VERSION
            and all((Path(directory) / name).is_file() for name in FILES))


REQUIRED_SPECIAL_TOKENS = ("<|endoftext|>", "<|startoftranscript|>")


def source_format(directory: Path) -> str:
    """'converted', 'ct2' or 'hf' for a model directory; AmanuensisError otherwise."""
    directory = Path(directory)
    if not directory.is_dir():
        raise AmanuensisError(f"{directory}: not a directory")
    if (directory / MANIFEST).is_file():
        return "converted"
    if (directory / "model.bin").is_file():
        return "ct2"
    if (directory / "config.json").is_file():
        return "hf"
    raise AmanuensisError(
        f"{directory}: not a Whisper model directory (expected model.bin for CTranslate2, "
        f"config.json + model.safetensors for Hugging Face, or {MANIFEST} for a converted model)")


def _check_tokenizer(path: Path) -> None:
    if not path.is_file():
        raise AmanuensisError(f"{path}: tokenizer.json is missing (needed to turn tokens into text)")
    content = {t.get("content") for t in hf.read_json(path).get("added_tokens", []) if isinstance(t, dict)}
    missing = [t for t in REQUIRED_SPECIAL_TOKENS if t not in content]
    if missing:
        raise AmanuensisError(f"{path}: special token(s) {', '.join(missing)} missing: not a Whisper tokenizer")


def read_source(directory: Path) -> tuple[ModelDimensions, dict, dict, dict]:
    """Read and check a source: (dims, config, generation config, {HF name: fp32 array})."""
    directory = Path(directory)
    kind = source_format(directory)
    if kind == "converted":
        raise AmanuensisError(f"{directory}: already a converted Amanuensis model")
    _check_tokenizer(directory / "tokenizer.json")
    config, generation, tensors = (ct2.read_ct2 if kind == "ct2" else hf.read_hf)(directory)
    dims = ModelDimensions.from_hf_config(config, source=str(directory / "config.json"))
    expected = {**names.encoder_shapes(dims), **names.decoder_shapes(dims)}
    names.check_tensors(tensors, expected, f"{directory} (dims from config: {dims})")
    return dims, config, generation, tensors


def _write(tmp: Path, source: Path, dims, config, generation, tensors) -> None:
    kind = source_format(source)
    encoder = layout.encoder_to_kernel({k: v for k, v in tensors.items() if k.startswith("encoder.")}, dims)
    write_safetensors(tmp / "encoder.safetensors", encoder, {"layout": "kernel-v1"})
    decoder = {k: v for k, v in tensors.items() if k.startswith("decoder.")}
    write_safetensors(tmp / "decoder.safetensors", decoder, {"layout": "hf"})
    heads = [tuple(h) for h in generation.get("alignment_heads") or []]
    for precision, file in DECODER_FILES.items():
        (tmp / file).write_bytes(build_decoder_onnx(dims, precision, tmp / "decoder.safetensors", heads))
    shutil.copyfile(source / "tokenizer.json", tmp / "tokenizer.json")
    config = {**config, **dims.hf_fields()}
    (tmp / "config.json").write_text(json.dumps(config, indent=2))
    (tmp / "generation_config.json").write_text(json.dumps(generation, indent=2))
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "source": str(source),
                "source_format": kind, "encoder_layout": "kernel-v1", "dims": dims.as_dict()}
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
    # mkdtemp makes the directory 0700: give it ordinary permissions.
    os.chmod(tmp, umask_mode(0o777))


def convert(source: Path, out: Path, force: bool = False) -> Path:
    """Convert `source` into `out`; refuse to overwrite anything but a converted model (with force)."""
    source, out = Path(source).resolve(), Path(out).resolve()
    if out.exists():
        if not (force and out.is_dir() and (out / MANIFEST).is_file()):
            why = "pass --force to replace it" if (out / MANIFEST).is_file() else "it is not a converted model"
            raise AmanuensisError(f"{out}: already exists; not overwriting ({why})")
    dims, config, generation, tensors = read_source(source)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        _write(tmp, source, dims, config, generation, tensors)
        if out.exists():
            old = out.with_name(f".{out.name}.old-{tmp.name[-8:]}")
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
