"""python -m encoder.live_bench: several live WebSocket streams at once, each at real-time pace,
against a server started for the run; commit latency, dropped audio, WER against the offline
transcript and the server's memory over time (encoder.benchmark.live_load)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from encoder.benchmark.live_load import measure
from encoder.cli import add_model, positive_int, run, say
from kernels.errors import AmanuensisError
from weights_tools.fileio import atomic_write


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m encoder.live_bench", description=__doc__.split("\n\n")[0])
    add_model(p)
    p.add_argument("--streams", type=positive_int, default=4, help="streams at once (default 4)")
    p.add_argument("--minutes", type=float, default=5.0, help="minutes each stream sends (default 5)")
    p.add_argument("--out", default=None, help="also write the JSON result to this file")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if not args.minutes > 0:
        raise AmanuensisError("--minutes must be positive")
    say(f"live_bench: {args.streams} streams of {args.minutes:g} min at real-time pace ...")
    result = measure(args.model, args.streams, args.minutes)
    text = json.dumps(result, indent=1)
    if args.out:
        atomic_write(Path(args.out), lambda tmp: tmp.write_text(text))
    print(text)
    return 0


if __name__ == "__main__":
    run(main)
