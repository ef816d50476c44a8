"""python -m encoder.evaluate MANIFEST: word error rate over a set of clips.

MANIFEST is JSON Lines with `file` (relative to the manifest) and `text` (the
reference) per clip, as in ../shared/speech/manifest.jsonl. Both sides are
normalised (decoder/normalize.py) and aligned with jiwer; the corpus WER is the
total of substitutions, deletions and insertions over the total reference words.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from encoder.errors import AmanuensisError


def read_manifest(path: Path) -> list[dict]:
    """Clips of a manifest, each with an absolute `path`; errors name the line."""
    if not path.is_file():
        raise AmanuensisError(f"{path}: manifest not found")
    clips = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            clip = json.loads(line)
            clip["path"] = path.parent / clip["file"]
            clip["text"] = str(clip["text"])
        except (ValueError, KeyError, TypeError) as e:
            raise AmanuensisError(f"{path}:{n}: not a manifest line with 'file' and 'text' ({e})") from None
        clips.append(clip)
    if not clips:
        raise AmanuensisError(f"{path}: no clips")
    return clips


def score(reference: str, hypothesis: str) -> dict:
    """Word errors of one clip after normalisation."""
    import jiwer

    from decoder.normalize import normalize

    ref, hyp = normalize(reference), normalize(hypothesis)
    if not ref:
        return {"words": 0, "errors": len(hyp.split()), "wer": None, "reference_norm": ref, "hypothesis_norm": hyp}
    out = jiwer.process_words(ref, hyp or "")
    errors = out.substitutions + out.deletions + out.insertions
    return {"words": len(ref.split()), "errors": errors, "wer": errors / len(ref.split()),
            "substitutions": out.substitutions, "deletions": out.deletions, "insertions": out.insertions,
            "reference_norm": ref, "hypothesis_norm": hyp}


def evaluate(model, clips: list[dict], options=None, report=None) -> dict:
    """Transcribe every clip and score it; returns {"wer", "words", "errors", "clips"}."""
    results = []
    for clip in clips:
        hyp = model.transcribe(clip["path"], options)["text"].strip()
        row = {"id": clip.get("id", clip["file"]), "file": clip["file"], "reference": clip["text"],
               "hypothesis": hyp, **score(clip["text"], hyp)}
        results.append(row)
        if report:
            report(row)
    words = sum(r["words"] for r in results)
    errors = sum(r["errors"] for r in results)
    return {"wer": errors / words if words else None, "words": words, "errors": errors, "clips": results}


def main(argv=None) -> int:
    from encoder.cli import add_decoder_precision
    from encoder.model import DEVICES, load_model, report_device

    p = argparse.ArgumentParser(prog="python -m encoder.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("manifest", type=Path, help="JSON Lines manifest with file and text per clip")
    p.add_argument("--model", default="tiny.en", help="default name, model directory or hub id (default tiny.en)")
    p.add_argument("--device", choices=DEVICES, default="auto", help="encoder backend (default auto)")
    p.add_argument("--strict", action="store_true", help="fail instead of letting any op fall back from the device")
    p.add_argument("--beam-size", type=int, default=None, help="beam search width (default greedy)")
    add_decoder_precision(p)
    p.add_argument("--json", action="store_true", help='print {"wer": ..., "clips": [...]} instead of the table')
    args = p.parse_args(argv)
    clips = read_manifest(args.manifest)
    for clip in clips:
        if not clip["path"].is_file():
            raise AmanuensisError(f"{clip['path']}: file not found (listed in {args.manifest})")
    model = load_model(args.model, args.device, args.strict, args.decoder_precision)
    report_device(model, decoder=True)
    options = None
    if args.beam_size:
        from dataclasses import replace

        from decoder.pipeline import TranscribeOptions
        options = TranscribeOptions()
        options = replace(options, decoding=replace(options.decoding, beam_size=args.beam_size))

    def report(row):
        if not args.json:
            wer = "  n/a " if row["wer"] is None else f"{100 * row['wer']:5.1f}%"
            print(f"{wer}  {row['errors']:3d}/{row['words']:<3d} {row['id']}: {row['hypothesis']}")

    result = evaluate(model, clips, options, report)
    if args.json:
        print(json.dumps(result, indent=2, ensure_ascii=False))
    else:
        print(f"corpus WER {100 * result['wer']:.2f}% ({result['errors']} errors / {result['words']} words, "
              f"{len(clips)} clips, model {args.model}, device {model.backend.name})")
    return 0


if __name__ == "__main__":
    from encoder.cli import run_main

    run_main(main)
