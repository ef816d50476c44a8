"""python -m encoder.transcribe: speech to text with the Amanuensis encoder and the ONNX decoder.

Flags and output files follow openai-whisper's command line where they overlap. Existing
transcripts of the same name in --output-dir are replaced (atomically). Several files are
transcribed --batch-size at a time, their windows decoded together where their prompts allow;
results are written in the order given. A file that cannot be transcribed is reported and
skipped; the others are transcribed, and the exit status is 2.

With --live, text comes while the audio arrives (encoder.streaming): committed words on stdout,
a line per update, the partial rest on a terminal's stderr (Ctrl-C ends a stream). The source is
one file replayed in real time, - for raw 16 kHz 16-bit PCM on stdin, or without AUDIO the
microphone. Live mode writes no files.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from encoder.audio import check_audio_path
from encoder.cli import (
    add_decoder_precision,
    add_decoding,
    add_device,
    add_model,
    boolean,
    report_device,
    run,
    say,
    transcribe_options,
)
from encoder.live_audio import microphone, pcm_stream, replayed
from encoder.model import load_model
from encoder.results import Transcription
from encoder.streaming import LiveTranscriber, Update
from encoder.writers import FORMATS, check_distinct_outputs, check_output_dir, timestamp, write_result
from kernels.errors import EXIT_USER_ERROR, AmanuensisError, BadAudio, BadOption, print_error


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m encoder.transcribe", description=__doc__.split("\n\n")[0])
    p.add_argument("audio", nargs="*", help="audio files (wav, flac, ogg, mp3, m4a, ...; any length); with "
                   "--live one file, or - for raw 16 kHz s16le mono PCM on stdin, or none for the microphone")
    add_model(p)
    add_device(p)
    add_decoder_precision(p)
    p.add_argument("--output-format", "-f", choices=FORMATS + ("all",), default="all",
                   help="transcript format(s) (default all)")
    p.add_argument("--output-dir", "-o", type=Path, default=Path("."), help="where transcripts go (default .)")
    p.add_argument("--verbose", type=boolean, default=True,
                   help="True: print segments with their times as they are transcribed; False: print the text "
                        "(default True)")
    p.add_argument("--profile", action="store_true",
                   help="print per encoder node the backend and time to stderr (and add them to the json)")
    p.add_argument("--live", action="store_true", help="print text while the audio arrives: committed text on "
                   "stdout, the partial rest on a terminal's stderr; a file is replayed in real time")
    p.add_argument("--live-speed", type=float, default=1.0,
                   help="with --live and a file: replay it this many times faster than real time (0: as fast "
                        "as it is transcribed; default 1)")
    add_decoding(p)
    return p


def _usable(paths: list[str]) -> list[Path]:
    """The paths that name audio files; each other one reported with what it is."""
    usable = []
    for path in paths:
        try:
            usable.append(check_audio_path(path))
        except BadAudio as e:
            print_error(e)
    return usable


def _show(result: Transcription, verbose: bool) -> None:
    if not verbose:
        print(result.text.strip(), flush=True)
        return
    for s in result.segments:
        print(f"[{timestamp(s.start, False, '.')} --> {timestamp(s.end, False, '.')}] {s.text.strip()}", flush=True)


def _in_order(results):
    """transcribe_many's results (in the order they finish) in the order of the inputs."""
    waiting, following = {}, 0
    for i, result in results:
        waiting[i] = result
        while following in waiting:
            yield waiting.pop(following)
            following += 1


def _live(args, options) -> int:
    """--live: one source, text as it is committed."""
    if len(args.audio) > 1:
        raise BadOption("audio", f"--live takes one source, got {len(args.audio)}: a file, - (stdin) or none "
                                 "(the microphone)")
    if args.live_speed < 0:
        raise BadOption("live_speed", f"--live-speed {args.live_speed}: must be 0 or more")
    source = args.audio[0] if args.audio else None
    chunks = microphone() if source is None else pcm_stream(sys.stdin.buffer) if source == "-" else \
        replayed(check_audio_path(source), args.live_speed)             # checked before the model loads
    model = load_model(args.model, args.device, args.strict, args.decoder_precision)
    report_device(model, decoder=True)
    live = LiveTranscriber(model, model.transcriber.check_options(options))
    partial = sys.stderr.isatty()
    try:
        for chunk in chunks:
            for update in live.feed(chunk):
                _print_live(update, partial)
    except KeyboardInterrupt:                  # how a microphone stream ends: commit what was heard
        pass
    _print_live(live.finish(), partial=False)
    if partial:
        print("\r\033[K", end="", file=sys.stderr, flush=True)
    return 0


def _print_live(update: Update, partial: bool) -> None:
    """Each update's committed words as a line on stdout; on a terminal, the partial text on one
    stderr line redrawn in place (cleared first, so the two never share a line)."""
    if partial:
        print("\r\033[K", end="", file=sys.stderr, flush=True)
    if update.committed:
        print("".join(w.word for w in update.committed).strip(), flush=True)
    if partial and update.partial:
        print(f"… {update.partial[-70:]}", end="", file=sys.stderr, flush=True)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    options = transcribe_options(args)
    if args.live:
        return _live(args, options)
    if not args.audio:
        raise BadOption("audio", "no audio given: name one or more files (or use --live)")
    check_distinct_outputs(args.audio, args.output_dir)
    check_output_dir(args.output_dir, create=False)            # before loading anything
    inputs = _usable(args.audio)
    if not inputs:
        return EXIT_USER_ERROR
    model = load_model(args.model, args.device, args.strict, args.decoder_precision)
    report_device(model, decoder=True)
    options = model.transcriber.check_options(options)
    check_output_dir(args.output_dir)              # after every check, so a refused run leaves nothing
    failed = len(args.audio) - len(inputs)
    results = model.transcriber.transcribe_many(((audio, options) for audio in inputs),
                                                progress=len(inputs) == 1)
    for audio, result in zip(inputs, _in_order(results)):
        if isinstance(result, BadAudio):
            print_error(result)
            failed += 1
            continue
        if isinstance(result, AmanuensisError):
            raise result
        if args.profile:
            say(f"{audio}: per-node profile\n{result.profile.format()}")
        _show(result, args.verbose)
        for path in write_result(result, audio, args.output_dir, args.output_format, profile=args.profile):
            say(f"wrote {path}")
    if failed and len(args.audio) > 1:
        say(f"{failed} of {len(args.audio)} inputs failed: see the errors above")
    return EXIT_USER_ERROR if failed else 0


if __name__ == "__main__":
    run(main)
