"""python -m encoder.bench: encoder and end-to-end speed, memory and the peers, measured in one run.

Every figure comes from a child process (encoder.benchmark.jobs) so that each peak resident
memory is that system's own. The input is the project's own synthesised speech
(encoder/benchmark/data), reordered into 30 s, 5 min, ... Whole processes, start-up included, run
on five minutes of more varied speech, a short clip and twelve files (encoder.benchmark.whole),
and, given real clips (--clips), on all of them in one command against the sequential path; the
server then takes concurrent clients sending the clips (encoder.benchmark.server_load). --vad's
word errors are also scored over variants of the inputs (encoder.benchmark.vad_accuracy).
Results: a table on stdout (or one JSON object with --json), bench.json and profile.png in --out-dir.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from encoder.benchmark.chart import draw
from encoder.benchmark.report import format_report
from encoder.benchmark.server_load import SERVER_REQUESTS
from encoder.benchmark.suite import VARIANT_BACKENDS, measure
from encoder.cli import add_model, run, say
from encoder.evaluation import read_manifest
from kernels import native
from kernels.backends import BACKENDS
from kernels.errors import AmanuensisError
from weights_tools.fileio import atomic_write
from weights_tools.model_dir import DECODER_PRECISIONS

DEFAULT_CLIPS = "../shared/speech/manifest.jsonl"


def _names(text: str, option: str, allowed) -> list[str]:
    """The comma-separated names of `text`, each one of `allowed`, at least one."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    bad = [n for n in names if n not in allowed]
    if bad or not names:
        raise AmanuensisError(f"{option} {','.join(bad) or '(empty)'}: choose from {', '.join(allowed)}")
    return names


def _numbers(text: str, name: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise AmanuensisError(f"{name} {text!r}: expected numbers separated by commas") from None
    if any(v <= 0 for v in values):
        raise AmanuensisError(f"{name} {text!r}: every value must be positive")
    return values


def _clips(option: str | None) -> list | None:
    """The clips of the --clips manifest (None for none); the default only where it exists."""
    if option is None and not Path(DEFAULT_CLIPS).is_file():
        return None
    if option == "":
        return None
    path = Path(option or DEFAULT_CLIPS)
    if not path.is_file():
        raise AmanuensisError(f"--clips {path}: no such manifest")
    clips = read_manifest(path)
    missing = [str(c.path) for c in clips if not c.path.is_file()]
    if missing or not clips:
        raise AmanuensisError(f"--clips {path}: " + (f"clip missing: {missing[0]}" if missing else "no clips"))
    return clips


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m encoder.bench", description="Measure the encoder per 30 s window on each backend (with a "
        "per-node profile against the machine's sgemm peak), end-to-end speed and peak memory on synthesised "
        "speech, and, with --peers, faster-whisper, transformers and ONNX Runtime in the same run.")
    add_model(parser)
    backends = "cpu,cpu-numpy,emu" + (",cpu-bf16" if native.BF16 is not None else "")
    parser.add_argument("--backends", default=backends, help="encoder backends, the first also runs end "
                        "to end and gives the profile; cpu-numpy is the cpu backend with its native kernels switched "
                        f"off (default {backends}: cpu-bf16 where AMX or AVX512-BF16 is usable; add npu on a "
                        "machine with one)")
    parser.add_argument("--lengths", default="30,300",
                        help="seconds of speech for the end-to-end runs (default 30,300)")
    parser.add_argument("--memory-minutes", default="30", help="extra, longer end-to-end runs of ours, for memory "
                        "growth (default 30; '' for none; e.g. 30,60,180 for hours of input)")
    parser.add_argument("--decoder-precisions", default=",".join(DECODER_PRECISIONS), help="decoder weights of our "
                        "end-to-end runs, each run in turn; the first gives the headline figures (default "
                        f"{','.join(DECODER_PRECISIONS)})")
    parser.add_argument("--repeats", type=int, default=5, help="timed encoder runs per system (median; default 5)")
    parser.add_argument("--whole-repeats", type=int, default=3, help="runs of each whole process (start-up and "
                        "model load included) on 5 min of varied speech, a 3 s clip and 12 files, alternating, "
                        "median; with --peers, faster-whisper plain and batched beside ours (default 3; 0 skips)")
    parser.add_argument("--clips", default=None, help="a manifest of real clips (JSON Lines, as "
                        f"../shared/speech/manifest.jsonl) for the many-files and server runs (default {DEFAULT_CLIPS} "
                        "when it exists; '' for none)")
    parser.add_argument("--vad-variants", type=int, default=6, help="word errors of --vad, sequential and, with "
                        "--peers, faster-whisper batched 8, over this many variants of the varied speech (pauses "
                        "lengthened) and orders of the clips joined (default 6; 0 skips)")
    parser.add_argument("--server-clients", type=int, default=16, help="concurrent clients of the server run, "
                        f"each sending {SERVER_REQUESTS} of the clips (default 16; 0 skips)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(),
                        help="threads for every system (default: all cores)")
    parser.add_argument("--peers", action="store_true", help="also measure faster-whisper int8/fp32, transformers "
                        "and ONNX Runtime when installed")
    parser.add_argument("--out-dir", default="bench-results", help="where bench.json and profile.png go")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object instead of a table")
    args = parser.parse_args(argv)
    args.backends = _names(args.backends, "--backends", list(BACKENDS) + list(VARIANT_BACKENDS))
    args.decoder_precisions = _names(args.decoder_precisions, "--decoder-precisions", DECODER_PRECISIONS)
    if args.repeats < 1 or args.threads < 1:
        raise AmanuensisError("--repeats and --threads must be at least 1")
    if args.whole_repeats < 0:
        raise AmanuensisError("--whole-repeats must be 0 or more")
    for option, value in (("--server-clients", args.server_clients), ("--vad-variants", args.vad_variants)):
        if value < 0:
            raise AmanuensisError(f"{option} must be 0 or more")
    args.clips = _clips(args.clips)
    args.lengths = _numbers(args.lengths, "--lengths")
    args.memory_minutes = _numbers(args.memory_minutes, "--memory-minutes")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if not os.access(out_dir, os.W_OK):
        raise AmanuensisError(f"--out-dir {out_dir}: not writable")
    result = measure(args)
    atomic_write(out_dir / "bench.json", lambda tmp: tmp.write_text(json.dumps(result, indent=1)))
    why = draw(result, out_dir / "profile.png")
    result["chart"] = None if why else str(out_dir / "profile.png")
    say(f"bench: chart not drawn: {why}" if why else f"bench: wrote {out_dir / 'bench.json'} and {result['chart']}")
    print(json.dumps(result) if args.json else format_report(result))
    return 0


if __name__ == "__main__":
    run(main)
