"""python -m encoder.transcribe: speech to text with the Amanuensis encoder and the ONNX decoder.

Flags and output files follow openai-whisper's command line where they overlap.
Existing transcripts of the same name in --output-dir are replaced (atomically).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from encoder.errors import AmanuensisError


def _positive_int(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {value!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {n}")
    return n


def _bool(value: str) -> bool:
    if value.lower() in ("true", "1", "yes"):
        return True
    if value.lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected True or False, got {value!r}")


def build_parser() -> argparse.ArgumentParser:
    from encoder.cli import add_decoder_precision
    from encoder.model import DEVICES
    from encoder.writers import FORMATS

    p = argparse.ArgumentParser(prog="python -m encoder.transcribe", description=__doc__.split("\n\n")[0])
    p.add_argument("audio", nargs="+", help="audio files (wav, flac, ogg, mp3, m4a, ...; any length)")
    p.add_argument("--model", default="tiny.en", help="default name, model directory or hub id (default tiny.en)")
    p.add_argument("--device", choices=DEVICES, default="auto", help="encoder backend (default auto: NPU if present, else cpu)")
    p.add_argument("--strict", action="store_true", help="fail instead of letting any op fall back from the device")
    add_decoder_precision(p)
    p.add_argument("--language", default=None, help="language code such as en or de (default: detect; en for .en models)")
    p.add_argument("--task", choices=("transcribe", "translate"), default="transcribe", help="translate = to English")
    p.add_argument("--output-format", "-f", choices=FORMATS + ("all",), default="all", help="transcript format(s) (default all)")
    p.add_argument("--output-dir", "-o", type=Path, default=Path("."), help="where transcripts go (default .)")
    p.add_argument("--beam-size", type=_positive_int, default=None, help="beam search width at temperature 0 (default greedy)")
    p.add_argument("--best-of", type=_positive_int, default=5, help="samples kept when falling back to temperature > 0")
    p.add_argument("--patience", type=float, default=1.0, help="beam search patience")
    p.add_argument("--length-penalty", type=float, default=None, help="length penalty (default: average log-probability)")
    p.add_argument("--temperature", type=float, default=0.0, help="first temperature")
    p.add_argument("--temperature-increment-on-fallback", type=float, default=0.2,
                   help="step of the fallback ladder up to 1.0 (0 disables fallback)")
    p.add_argument("--compression-ratio-threshold", type=float, default=2.4, help="fall back above this gzip ratio")
    p.add_argument("--logprob-threshold", type=float, default=-1.0, help="fall back below this average log-probability")
    p.add_argument("--no-speech-threshold", type=float, default=0.6, help="skip windows more likely silent than this")
    p.add_argument("--condition-on-previous-text", type=_bool, default=True, help="prompt each window with the text so far")
    p.add_argument("--initial-prompt", default=None, help="text to prompt the first window with")
    p.add_argument("--word-timestamps", action="store_true", help="word-level timestamps (cross-attention + DTW)")
    p.add_argument("--without-timestamps", action="store_true", help="no timestamp tokens: one segment per window")
    p.add_argument("--profile", action="store_true", help="print per encoder node the backend and time to stderr")
    p.add_argument("--verbose", type=_bool, default=True, help="print segments as they are transcribed")
    return p


def _temperatures(args) -> tuple:
    if args.temperature_increment_on_fallback <= 0:
        return (args.temperature,)
    steps, t = [], args.temperature
    while t <= 1.0 + 1e-9:
        steps.append(round(t, 4))
        t += args.temperature_increment_on_fallback
    return tuple(steps)


def options_from_args(args):
    from decoder.decoding import DecodingOptions
    from decoder.pipeline import TranscribeOptions

    decoding = DecodingOptions(task=args.task, language=args.language, beam_size=args.beam_size,
                               best_of=args.best_of, patience=args.patience, length_penalty=args.length_penalty,
                               without_timestamps=args.without_timestamps)
    return TranscribeOptions(decoding=decoding, condition_on_previous_text=args.condition_on_previous_text,
                             initial_prompt=args.initial_prompt, temperatures=_temperatures(args),
                             compression_ratio_threshold=args.compression_ratio_threshold,
                             logprob_threshold=args.logprob_threshold, no_speech_threshold=args.no_speech_threshold,
                             word_timestamps=args.word_timestamps)


def check_output_dir(path: Path, create: bool = True) -> None:
    """Create the output directory, or fail if it cannot be written. With create=False only check
    (the nearest existing ancestor must be a writable directory), so a run can fail before any work
    and still leave nothing behind when a later check refuses it."""
    if create:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise AmanuensisError(f"{path}: cannot create the output directory ({e.strerror})") from None
        target = path
    else:
        target = next(p for p in (path, *path.parents) if p.exists() or p == p.parent)
    if not target.is_dir():
        raise AmanuensisError(f"{path}: not a directory" if create else
                              f"{path}: cannot create the output directory (Not a directory)")
    if not os.access(target, os.W_OK | os.X_OK):
        raise AmanuensisError(f"{path}: output directory is not writable")


def provenance(result: dict, model) -> dict:
    """Which backend ran each encoder node (over all windows), and the device choice."""
    nodes: dict[str, set] = {}
    fallbacks: dict[str, set] = {}
    for window in result.get("encoder_profile", []):
        for row in window:
            nodes.setdefault(row["node"], set()).add(row["backend"])
            if row.get("fallback"):
                fallbacks.setdefault(row["node"], set()).add(row["fallback"])
    out = {"device": model.backend.name, "device_note": model.device_note, "decoder": model.describe_decoder(),
           "encoder_nodes": {n: sorted(b) for n, b in nodes.items()},
           "fallbacks": {n: sorted(r) for n, r in fallbacks.items()},
           "windows": len(result.get("encoder_profile", []))}
    if hasattr(model.backend, "status"):
        out["npu"] = model.backend.status()
    return out


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    for audio in args.audio:
        if not Path(audio).is_file():
            raise AmanuensisError(f"{audio}: file not found")
    check_output_dir(args.output_dir, create=False)   # before loading anything
    from encoder.model import load_model, report_device
    from encoder.runner import format_profile
    from encoder.writers import write_result

    options = options_from_args(args)
    model = load_model(args.model, args.device, args.strict, args.decoder_precision)
    report_device(model, decoder=True)
    model.transcriber.check_options(options)
    check_output_dir(args.output_dir)              # after every check, so a refused run leaves nothing
    for audio in args.audio:
        result = model.transcribe(audio, options, progress=True)
        result["provenance"] = provenance(result, model)
        profile = result.pop("encoder_profile")
        if args.profile:
            print(format_profile(profile), file=sys.stderr)
            result["encoder_profile"] = profile
        if args.verbose:
            from encoder.writers import timestamp

            for s in result["segments"]:
                print(f"[{timestamp(s['start'], False, '.')} --> {timestamp(s['end'], False, '.')}] {s['text'].strip()}")
        else:
            print(result["text"].strip())
        for path in write_result(result, audio, args.output_dir, args.output_format):
            print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    from encoder.cli import run_main

    run_main(main)
