"""Where an archive job's outputs go and how they are written: each file appears whole or not at all
(written beside, then renamed). Transcripts: transcripts/NAME.FORMAT. Embeddings: shards of several
inputs (embeddings/shard-*.safetensors, one tensor per input, named by its key) and
embeddings/index.json mapping each input to its shard, tensor and frames, written from the ledger at
the end of each run."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from encoder.archive.job import EMBEDDINGS, TRANSCRIPTS, Item, Job
from encoder.archive.ledger import DONE, Ledger, input_key
from encoder.results import Transcription
from encoder.writers import write_result
from kernels.errors import AmanuensisError
from kernels.frontend import FRAMES_PER_SECOND
from weights_tools.fileio import atomic_write
from weights_tools.safetensors_io import write_safetensors

INDEX = "index.json"


def write_transcript(job: Job, item: Item, result: Transcription) -> list[str]:
    """The transcript files of `item`; their paths relative to the job directory."""
    name = Path(item.name)
    folder = job.out / TRANSCRIPTS / name.parent
    folder.mkdir(parents=True, exist_ok=True)
    written = write_result(result, f"{name.name}.audio", folder, job.output_format)   # named by the stem: all of it
    _sync(written)
    return [p.relative_to(job.out).as_posix() for p in written]


def write_shard(job: Job, states: dict[str, np.ndarray], meta: dict) -> str:
    """One shard of `states` (tensor name -> array), named by its tensors (the same inputs make the
    same shard); its path relative to the job directory."""
    digest = hashlib.sha256("\n".join(sorted(states)).encode()).hexdigest()[:16]
    path = job.out / EMBEDDINGS / f"shard-{digest}.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: np.ascontiguousarray(v, np.float32) for k, v in states.items()}
    atomic_write(path, lambda tmp: write_safetensors(tmp, tensors, {k: json.dumps(v) for k, v in meta.items()}))
    _sync([path])
    return path.relative_to(job.out).as_posix()


def _sync(paths: list[Path]) -> None:
    """Flush `paths` and their renames to disk before the ledger says they are done: after a power
    loss a done line must not point at an empty file."""
    for path in [*paths, *{p.parent for p in paths}]:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def embedding_meta(job: Job, dims: dict) -> dict:
    return {"model": job.model, "model_dims": dims, "layer": job.layer, "pool": job.pool,
            "frame_rate": FRAMES_PER_SECOND}


def finish_embeddings(job: Job, ledger: Ledger, meta: dict, options: str) -> Path:
    """Write the index of every input done with these options (`options`: options_key), and delete the
    shards no done input points to (written by a call whose result was lost, or by a run with other
    options whose inputs have been done again); returns the index's path."""
    done = [e for e in ledger.latest.values() if e.status == DONE]
    ours = [e for e in done if e.tensor and e.key == input_key(e.content, options)]
    folder = job.out / EMBEDDINGS
    folder.mkdir(parents=True, exist_ok=True)
    index = {"meta": meta, "inputs": [{"name": e.name, "input": e.input, "shard": e.outputs[0], "tensor": e.tensor,
                                       "frames": e.frames, "seconds": e.seconds} for e in ours]}
    path = folder / INDEX
    try:
        atomic_write(path, lambda tmp: tmp.write_text(json.dumps(index, indent=1), encoding="utf-8"))
    except OSError as e:
        raise AmanuensisError(f"{path}: cannot write the index ({e.strerror})") from None
    used = {job.out / e.outputs[0] for e in done if e.outputs}
    for shard in folder.glob("shard-*.safetensors"):
        if shard not in used:
            shard.unlink()
    return path


def sweep_partials(out: Path) -> int:
    """Delete the half-written files a killed process left (encoder.writers and atomic_write write
    `.NAME.*.partial` and rename); returns how many."""
    stale = list(Path(out).rglob(".*.partial"))
    for path in stale:
        path.unlink(missing_ok=True)
    return len(stale)
