"""python -m encoder.parity AUDIO: layer-by-layer parity of our encoder with PyTorch.

Runs the first 30 s window through our graph and through transformers' WhisperEncoder holding
the same converted weights, and prints per boundary tensor the max and mean abs error and the
cosine similarity; exit status 1 if any tensor misses its bound (encoder/layer_parity.py says
which). Needs the test extras (torch, transformers).
"""
from __future__ import annotations

import argparse
import json

from encoder.audio import load_audio
from encoder.cli import add_device, add_model, report_device, run
from encoder.layer_parity import compare, format_rows, thresholds
from encoder.model import load_model
from encoder.torch_reference import torch_modules


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m encoder.parity", description=__doc__.split("\n\n")[0])
    parser.add_argument("audio", help="audio file (the first 30 s are compared)")
    add_model(parser)
    add_device(parser, default="cpu", strict=False)
    parser.add_argument("--json", action="store_true",
                        help='print {"layers": [{"name", "max_abs", "mean_abs", "cosine", "peak", "floor", '
                             '"bound", "ok"}, ...]}')
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    torch_modules()                       # fail before the work if the test extras are missing
    samples = load_audio(args.audio)
    model = load_model(args.model, args.device)
    report_device(model)
    rows = compare(model, samples)
    if args.json:
        print(json.dumps({"model": args.model, "device": model.backend.name, "thresholds": thresholds(rows[0].fp32),
                          "layers": [r.to_dict() for r in rows]}, indent=2))
    else:
        print(format_rows(rows))
    return 0 if all(r.ok for r in rows) else 1


if __name__ == "__main__":
    run(main)
