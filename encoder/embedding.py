"""Encoder hidden states of audio files, and their export to .safetensors or .npy.

.safetensors holds one tensor per input, keyed by file name, with the metadata in its header;
.npy holds one array (one input, or several pooled and stacked) with the metadata in FILE.json.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kernels.errors import AmanuensisError
from kernels.frontend import FRAMES_PER_SECOND
from kernels.runner import Profile
from weights_tools.fileio import atomic_write
from weights_tools.safetensors_io import write_safetensors

SUFFIXES = (".safetensors", ".npy")
POOLINGS = ("none", "mean")


@dataclass
class Embedding:
    """Hidden states of one audio input, trimmed to its real length (50 frames per second)."""

    states: np.ndarray          # (frames, d) for one layer, (n_layers + 1, frames, d) for all; pooled drops frames
    layer: str                  # "N" or "all"
    pool: str                   # "none" or "mean"
    frames: int                 # real frames before pooling
    seconds: float
    profile: Profile = field(default_factory=Profile)   # per window, per node: backend and time


def check_output(path: Path, force: bool, n_inputs: int, pool: str) -> None:
    """Fail before any work if the output cannot be written as asked."""
    if path.suffix not in SUFFIXES:
        raise AmanuensisError(f"{path}: output must end in .safetensors or .npy")
    if path.suffix == ".npy" and n_inputs > 1 and pool == "none":
        raise AmanuensisError(f"{path}: a .npy file holds one array; with several inputs use .safetensors "
                              "or --pool mean")
    if path.exists() and not force:
        raise AmanuensisError(f"{path}: already exists (pass --force to overwrite)")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise AmanuensisError(f"{parent}: output directory does not exist")
    if not os.access(parent, os.W_OK):
        raise AmanuensisError(f"{parent}: output directory is not writable")


def _keys(paths: list[str]) -> list[str]:
    """Tensor names: the file names, or the paths where two inputs share a file name."""
    names = [Path(p).name for p in paths]
    return names if len(set(names)) == len(names) else [str(p) for p in paths]


def write_embeddings(path: Path, paths: list[str], results: list[Embedding], meta: dict) -> None:
    """Write the states of every input with `meta` to `path`, atomically."""
    meta = {**meta, "frame_rate": FRAMES_PER_SECOND, "sources": paths,
            "frames": [r.frames for r in results], "seconds": [round(r.seconds, 3) for r in results]}
    if path.suffix == ".safetensors":
        tensors = dict(zip(_keys(paths), (r.states for r in results)))
        atomic_write(path, lambda tmp: write_safetensors(tmp, tensors, {k: json.dumps(v) for k, v in meta.items()}))
    else:
        array = results[0].states if len(results) == 1 else np.stack([r.states for r in results])
        atomic_write(path, lambda tmp: np.save(open(tmp, "wb"), array.astype(np.float32)))
        sidecar = path.with_name(path.name + ".json")
        atomic_write(sidecar, lambda tmp: tmp.write_text(json.dumps({**meta, "shape": list(array.shape)}, indent=2)))
