"""What the commands share: their common options (each defined once here), how they tell the user
which backend runs, and how they run (a user error is one line `error: ...` and exit status 2)."""
from __future__ import annotations

import argparse
import sys

from decoder.options import (
    BATCH_SIZE,
    BEST_OF,
    COMPRESSION_RATIO_THRESHOLD,
    LOGPROB_THRESHOLD,
    NO_SPEECH_THRESHOLD,
    TEMPERATURE_INCREMENT,
    DecodingOptions,
    TranscribeOptions,
    temperature_ladder,
)
from encoder.memory import tune_allocator
from kernels.backends import DEVICES
from kernels.errors import run_main
from kernels.settings import parse_bool
from weights_tools.model_dir import DECODER_PRECISIONS, DEFAULT_DECODER_PRECISION
from weights_tools.resolve import DEFAULT_MODEL


def positive_int(text: str) -> int:
    """argparse type: a whole number of at least 1."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {n}")
    return n


def layer_option(value: str):
    """argparse type of --layer: a hidden state's number, or 'all'."""
    if value == "all":
        return "all"
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--layer takes an integer or 'all', not {value!r}") from None


def boolean(text: str) -> bool:
    """argparse type: True or False (also yes/no, 1/0, on/off)."""
    try:
        return parse_bool(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_model(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help=f"default name, model directory or Hugging Face hub id (default {DEFAULT_MODEL})")


def add_device(parser: argparse.ArgumentParser, default: str = "auto", strict: bool = True) -> None:
    """--device, and --strict where a fallback can happen during the run."""
    parser.add_argument("--device", choices=DEVICES, default=default,
                        help=f"encoder backend (default {default}; auto: the NPU if present, else cpu; cpu-bf16: "
                             "cpu with its matrix products in bf16, on AMX tiles (Intel Xeon 4th generation "
                             "and later) or AVX512-BF16 (AMD Zen 4 and later))")
    if strict:
        parser.add_argument("--strict", action="store_true",
                            help="fail instead of letting any op fall back from the device")


def add_decoder_precision(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--decoder-precision", choices=DECODER_PRECISIONS, default=DEFAULT_DECODER_PRECISION,
                        help="decoder weights: int8 (8-bit blocks: a quarter of fp32's weight bytes per token, "
                             "the same transcripts on our real clips) or fp32 (the transcripts of transformers); "
                             f"see docs/performance.md (default {DEFAULT_DECODER_PRECISION})")


def add_decoding(parser: argparse.ArgumentParser, more_tasks: tuple[str, ...] = ()) -> None:
    """The decoding options of openai-whisper's command line, with its defaults; `more_tasks`: what
    else the command's --task offers (help in the command's description)."""
    p = parser.add_argument_group("decoding")
    p.add_argument("--language", default=None,
                   help="language code or name, any case: en, EN, English (default: detect; en for .en models)")
    p.add_argument("--task", choices=("transcribe", "translate", *more_tasks), default="transcribe",
                   help="translate = to English" + "".join(f"; {t}: see the notes below" for t in more_tasks))
    p.add_argument("--beam-size", type=positive_int, default=None, help="beam search width at temperature 0 "
                   "(default greedy)")
    p.add_argument("--best-of", type=positive_int, default=BEST_OF, help=f"samples kept when falling back to "
                   f"temperature > 0 (default {BEST_OF})")
    p.add_argument("--patience", type=float, default=1.0, help="beam search patience (default 1.0)")
    p.add_argument("--length-penalty", type=float, default=None, help="length penalty (default: rank by "
                   "average log-probability)")
    p.add_argument("--temperature", type=float, default=0.0, help="first temperature, 0 to 1 (default 0)")
    p.add_argument("--temperature-increment-on-fallback", type=float, default=TEMPERATURE_INCREMENT,
                   help=f"step of the fallback ladder up to 1.0; 0 disables fallback (default {TEMPERATURE_INCREMENT})")
    p.add_argument("--compression-ratio-threshold", type=float, default=COMPRESSION_RATIO_THRESHOLD,
                   help=f"fall back above this gzip ratio (default {COMPRESSION_RATIO_THRESHOLD})")
    p.add_argument("--logprob-threshold", type=float, default=LOGPROB_THRESHOLD,
                   help=f"fall back below this average log-probability (default {LOGPROB_THRESHOLD})")
    p.add_argument("--no-speech-threshold", type=float, default=NO_SPEECH_THRESHOLD,
                   help=f"skip windows more likely silent than this (default {NO_SPEECH_THRESHOLD})")
    p.add_argument("--condition-on-previous-text", type=boolean, default=True,
                   help="prompt each window with the text so far: True or False (default True)")
    p.add_argument("--initial-prompt", default=None, help="text to prompt the first window with")
    p.add_argument("--word-timestamps", action="store_true", help="word-level timestamps (cross-attention + DTW)")
    p.add_argument("--without-timestamps", action="store_true", help="no timestamp tokens: one segment per window")
    p.add_argument("--vad", type=boolean, default=TranscribeOptions.vad,
                   help="True: transcribe only the speech that voice activity detection (Silero VAD) finds, in "
                        "chunks of at most 30 s decoded in batches, each chunk without the text before it as "
                        "prompt; False: Whisper's sequential windows (default %(default)s)")
    p.add_argument("--batch-size", type=positive_int, default=BATCH_SIZE,
                   help="windows decoded together: VAD chunks (--vad True), and the windows of several files, "
                        f"each with its own prompt; also how many files run at once (default {BATCH_SIZE})")


def transcribe_options(args: argparse.Namespace) -> TranscribeOptions:
    """The TranscribeOptions of the options add_decoding defined; BadOption names a bad value."""
    decoding = DecodingOptions(task=args.task, language=args.language, beam_size=args.beam_size,
                               best_of=args.best_of, patience=args.patience, length_penalty=args.length_penalty,
                               without_timestamps=args.without_timestamps)
    return TranscribeOptions(decoding=decoding, condition_on_previous_text=args.condition_on_previous_text,
                             initial_prompt=args.initial_prompt,
                             temperatures=temperature_ladder(args.temperature, args.temperature_increment_on_fallback),
                             compression_ratio_threshold=args.compression_ratio_threshold,
                             logprob_threshold=args.logprob_threshold, no_speech_threshold=args.no_speech_threshold,
                             word_timestamps=args.word_timestamps, vad=args.vad, batch_size=args.batch_size)


def say(message: str) -> None:
    """One line for the user on stderr, marked as ours."""
    print(f"amanuensis: {message}", file=sys.stderr, flush=True)


def report_device(model, decoder: bool = False) -> None:
    """Say which backend runs the encoder (never a silent choice), and with `decoder`, what runs the decoder."""
    say(f"device {model.backend.describe()} ({model.device_note})")
    if decoder:
        say(f"decoder {model.describe_decoder()}")


def run(main) -> None:
    """Run a command's main: the process's allocator set for the encoder's threads (encoder.memory),
    user errors as one line and exit status 2 (kernels.errors.run_main)."""
    tune_allocator()
    run_main(main)
