"""python -m encoder.evaluate MANIFEST: word error rate over a set of clips.

MANIFEST is JSON Lines with `file` (relative to the manifest) and `text` (the reference) per
clip, as in ../shared/speech/manifest.jsonl. Decoding options are transcribe's.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from encoder.cli import (
    add_decoder_precision,
    add_decoding,
    add_device,
    add_model,
    report_device,
    run,
    transcribe_options,
)
from encoder.evaluation import ClipResult, check_clips, evaluate, read_manifest
from encoder.model import load_model


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m encoder.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("manifest", type=Path, help="JSON Lines manifest with file and text per clip")
    add_model(p)
    add_device(p)
    add_decoder_precision(p)
    p.add_argument("--json", action="store_true", help='print {"wer": ..., "clips": [...]} instead of the table')
    add_decoding(p)
    return p


def _row(result: ClipResult) -> None:
    s = result.score
    wer = "  n/a " if s.wer is None else f"{100 * s.wer:5.1f}%"
    print(f"{wer}  {s.errors:3d}/{s.words:<3d} {result.clip.id}: {result.hypothesis}", flush=True)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    options = transcribe_options(args)
    clips = read_manifest(args.manifest)
    check_clips(clips, args.manifest)
    model = load_model(args.model, args.device, args.strict, args.decoder_precision)
    report_device(model, decoder=True)
    options = model.transcriber.check_options(options)
    result = evaluate(model, clips, options, None if args.json else _row)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2, ensure_ascii=False))
    else:
        print(f"corpus WER {100 * result.wer:.2f}% ({result.errors} errors / {result.words} words, "
              f"{len(clips)} clips, model {args.model}, device {model.backend.name})")
    return 0


if __name__ == "__main__":
    run(main)
