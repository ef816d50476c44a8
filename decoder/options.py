"""Decoding options, with Whisper's thresholds and temperature ladder defined once.

DecodingOptions hold one decoding attempt over one window; TranscribeOptions add what a whole
transcription decides: the fallback ladder and its thresholds, conditioning on earlier text,
word timestamps. The command line, the server and the Python API all build these.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from kernels.errors import BadOption

COMPRESSION_RATIO_THRESHOLD = 2.4   # gzip ratio above which text counts as repetitive: retry hotter
LOGPROB_THRESHOLD = -1.0            # average log-probability below which text counts as improbable
NO_SPEECH_THRESHOLD = 0.6           # a window this likely silent (and improbable) is skipped
# A window is also skipped when the no-speech probability alone is this high: an all-zero window
# scores 0.95 with a confident " you", while on the 18 real speech clips of ../shared/speech the
# highest is 0.044 (measured 2026-11-24, tiny.en).
NO_SPEECH_CERTAIN = 0.9
TEMPERATURE_INCREMENT = 0.2         # step of the fallback ladder
MAX_TEMPERATURE = 1.0               # top of the ladder
BEST_OF = 5                         # samples per attempt at temperature > 0
BATCH_SIZE = 8                      # windows decoded at once (VAD chunks; several files' windows)


def temperature_ladder(first: float = 0.0, increment: float = TEMPERATURE_INCREMENT) -> tuple[float, ...]:
    """The temperatures tried in turn: `first`, then up by `increment` to MAX_TEMPERATURE (just `first`
    when increment is 0)."""
    if not (isinstance(first, (int, float)) and math.isfinite(first) and 0 <= first <= MAX_TEMPERATURE):
        raise BadOption("temperature", f"temperature must be a number from 0 to {MAX_TEMPERATURE:g}, got {first!r}")
    if not (isinstance(increment, (int, float)) and math.isfinite(increment) and increment >= 0):
        raise BadOption("temperature_increment_on_fallback",
                        f"temperature increment on fallback must be a number of at least 0, got {increment!r}")
    if increment == 0:
        return (float(first),)
    steps = math.floor((MAX_TEMPERATURE - first) / increment + 1e-9)
    return tuple(round(first + k * increment, 4) for k in range(steps + 1))


@dataclass(frozen=True)
class DecodingOptions:
    task: str = "transcribe"               # or "translate" (multilingual models)
    language: str | None = None            # None: English for .en models, detected otherwise
    temperature: float = 0.0               # 0: greedy or beam search; > 0: sampling
    beam_size: int | None = None           # beams at temperature 0 (None: greedy)
    best_of: int | None = None             # samples kept at temperature > 0
    patience: float = 1.0                  # beam search: finished candidates = beam_size x patience
    length_penalty: float | None = None    # None: rank by average log-probability per token
    prompt: tuple[int, ...] = ()           # previous text tokens (conditioning)
    without_timestamps: bool = False       # <|notimestamps|> and no timestamp grammar
    max_initial_timestamp: float = 1.0     # seconds
    sample_len: int | None = None          # max new tokens (default: half the context)
    suppress_blank: bool = True
    suppress_tokens: tuple[int, ...] | None = None   # None: the model's configured list
    seed: int = 0                          # sampling RNG seed: the same input gives the same transcript
    draft: tuple[int, ...] = ()            # tokens the first window is expected to start with (a live
                                           # buffer's last hypothesis): greedy decoding checks them in one
                                           # step and goes on from the first one it would not choose

    def __post_init__(self):
        if self.task not in ("transcribe", "translate"):
            raise BadOption("task", f"unknown task {self.task!r} (transcribe or translate)")
        for name in ("beam_size", "best_of"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise BadOption(name, f"{name} must be a whole number of at least 1, got {value!r}")
        if not (isinstance(self.patience, (int, float)) and self.patience > 0):
            raise BadOption("patience", f"patience must be a positive number, got {self.patience!r}")


@dataclass(frozen=True)
class TranscribeOptions:
    decoding: DecodingOptions = field(default_factory=DecodingOptions)
    temperatures: tuple[float, ...] = temperature_ladder()
    compression_ratio_threshold: float | None = COMPRESSION_RATIO_THRESHOLD
    logprob_threshold: float | None = LOGPROB_THRESHOLD
    no_speech_threshold: float | None = NO_SPEECH_THRESHOLD
    condition_on_previous_text: bool = True    # prompt each window with the text so far
    initial_prompt: str | None = None          # text to prompt the first window with
    word_timestamps: bool = False              # word-level timestamps (cross-attention + DTW)
    vad: bool = False                          # transcribe only the speech found by voice activity detection
    batch_size: int = BATCH_SIZE               # windows decoded together (VAD chunks, several files)

    def __post_init__(self):
        if not isinstance(self.batch_size, int) or isinstance(self.batch_size, bool) or self.batch_size < 1:
            raise BadOption("batch_size", f"batch size must be a whole number of at least 1, got {self.batch_size!r}")
        if not self.temperatures or any(not (isinstance(t, (int, float)) and math.isfinite(t) and t >= 0)
                                        for t in self.temperatures):
            raise BadOption("temperature", f"temperatures must be numbers of at least 0, got {self.temperatures!r}")


# DecodingOptions fields that each attempt sets itself, not the caller
_PER_ATTEMPT = {"temperature", "prompt"}


def with_changes(options: TranscribeOptions, **changes) -> TranscribeOptions:
    """`options` with the named fields replaced, whether TranscribeOptions' or DecodingOptions'
    (as transcribe() takes them). `temperature` is the ladder: one number (no fallback) or several."""
    if "temperature" in changes:
        value = changes.pop("temperature")
        changes["temperatures"] = tuple(value) if isinstance(value, (list, tuple)) else (value,)
    decoding = {k: v for k, v in changes.items() if k in DecodingOptions.__dataclass_fields__}
    rest = {k: v for k, v in changes.items() if k in TranscribeOptions.__dataclass_fields__}
    unknown = set(changes) - set(decoding) - set(rest) | (set(decoding) & _PER_ATTEMPT) | ({"decoding"} & set(rest))
    if unknown:
        raise TypeError(f"unknown transcription option(s): {', '.join(sorted(unknown))}")
    return replace(options, decoding=replace(options.decoding, **decoding), **rest)
