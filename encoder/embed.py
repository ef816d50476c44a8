"""python -m encoder.embed: export encoder hidden states of audio files.

Writes .safetensors (one tensor per input, keyed by file name, metadata in the
header) or .npy (one input, or several with --pool mean, metadata in FILE.json).
States are trimmed to each file's real length at 50 frames per second; audio
longer than 30 s is encoded in consecutive 30 s windows.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

from encoder.dims import FRAMES_PER_SECOND
from encoder.errors import AmanuensisError
from encoder.fileio import atomic_write

SUFFIXES = (".safetensors", ".npy")


def _layer(value: str):
    if value == "all":
        return "all"
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--layer takes an integer or 'all', not {value!r}") from None


def build_parser() -> argparse.ArgumentParser:
    from encoder.model import DEVICES

    p = argparse.ArgumentParser(prog="python -m encoder.embed", description=__doc__.split("\n\n")[0],
                                epilog="--layer follows Hugging Face's hidden_states numbering: 0 is the conv stem "
                                "plus positional embedding, N the output of block N, and the number of blocks (the "
                                "default) the final encoder output after ln_post; 'all' exports every one.")
    p.add_argument("audio", nargs="+", help="audio files (wav, flac, ogg, mp3, m4a, ...)")
    p.add_argument("--model", default="tiny.en", help="default name, model directory or hub id (default tiny.en)")
    p.add_argument("--output", "-o", required=True, type=Path, help="output file, .safetensors or .npy")
    p.add_argument("--layer", type=_layer, default=None, help="hidden state N, or 'all' (default: final output)")
    p.add_argument("--pool", choices=("none", "mean"), default="none", help="average over frames (default none)")
    p.add_argument("--device", choices=DEVICES, default="auto", help="backend (default auto: NPU if present, else cpu)")
    p.add_argument("--strict", action="store_true", help="fail instead of letting any op fall back from the device")
    p.add_argument("--force", action="store_true", help="overwrite an existing output file")
    p.add_argument("--profile", action="store_true", help="print per-node backend and time to stderr")
    return p


def check_output(path: Path, force: bool, n_inputs: int, pool: str) -> None:
    """Fail before any work if the output cannot be written as asked."""
    if path.suffix not in SUFFIXES:
        raise AmanuensisError(f"{path}: output must end in .safetensors or .npy")
    if path.suffix == ".npy" and n_inputs > 1 and pool == "none":
        raise AmanuensisError(f"{path}: a .npy file holds one array; with several inputs use .safetensors or --pool mean")
    if path.exists() and not force:
        raise AmanuensisError(f"{path}: already exists (pass --force to overwrite)")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise AmanuensisError(f"{parent}: output directory does not exist")
    if not os.access(parent, os.W_OK):
        raise AmanuensisError(f"{parent}: output directory is not writable")


def _keys(paths: list[str]) -> list[str]:
    names = [Path(p).name for p in paths]
    return names if len(set(names)) == len(names) else [str(p) for p in paths]


def write_embeddings(path: Path, paths: list[str], results: list, meta: dict) -> None:
    """Write the states of every input with `meta` to `path`, atomically."""
    meta = {**meta, "frame_rate": FRAMES_PER_SECOND, "sources": paths,
            "frames": [r.frames for r in results], "seconds": [round(r.seconds, 3) for r in results]}
    if path.suffix == ".safetensors":
        from weights_tools.safetensors_io import write_safetensors

        tensors = dict(zip(_keys(paths), (r.states for r in results)))
        atomic_write(path, lambda tmp: write_safetensors(tmp, tensors, {k: json.dumps(v) for k, v in meta.items()}))
    else:
        array = results[0].states if len(results) == 1 else np.stack([r.states for r in results])
        atomic_write(path, lambda tmp: np.save(open(tmp, "wb"), array.astype(np.float32)))
        sidecar = path.with_name(path.name + ".json")
        atomic_write(sidecar, lambda tmp: tmp.write_text(json.dumps({**meta, "shape": list(array.shape)}, indent=2)))


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    check_output(args.output, args.force, len(args.audio), args.pool)
    for audio in args.audio:
        if not Path(audio).is_file():
            raise AmanuensisError(f"{audio}: file not found")
    from encoder.model import load_model, report_device
    from encoder.runner import format_profile

    model = load_model(args.model, args.device, args.strict)
    report_device(model)
    results = []
    for audio in args.audio:
        result = model.embed(audio, layer=args.layer, pool=args.pool)
        print(f"{audio}: {result.seconds:.2f} s -> {result.frames} frames, states {list(result.states.shape)}",
              file=sys.stderr)
        if args.profile:
            print(format_profile(result.profile), file=sys.stderr)
        results.append(result)
    meta = {"model": args.model, "model_dims": model.dims.as_dict(), "layer": results[0].layer,
            "pool": args.pool, "device": model.backend.name}
    write_embeddings(args.output, args.audio, results, meta)
    print(f"wrote {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    from encoder.cli import run_main

    run_main(main)
