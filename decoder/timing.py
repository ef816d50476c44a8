"""Word timestamps: cross-attention of the alignment heads, aligned to time with DTW.

For one window's text tokens, the decoder is run once over
[<|startoftranscript|> ... <|notimestamps|> text <|endoftext|>] and returns the
cross-attention of the alignment heads (from the model's generation config).
Each head's weights over the window's real frames are standardised over tokens,
median-filtered over time and averaged; dynamic time warping through the
negated matrix pairs each token with a run of frames, and a word starts where
its first token's run starts.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from decoder.logits import log_softmax
from kernels.frontend import FRAMES_PER_SECOND, SAMPLE_RATE, SAMPLES_PER_FRAME

MEDIAN_WIDTH = 7


@dataclass
class WordTiming:
    word: str
    tokens: list[int]
    start: float
    end: float
    probability: float


def dtw(cost: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Monotonic alignment path through `cost` (N, M) from (0, 0) to (N-1, M-1).

    Computed one anti-diagonal at a time (every cell of a diagonal depends only on
    the two before it), so the Python loop runs N + M times, not N x M.
    """
    n, m = cost.shape
    acc = np.full((n + 1, m + 1), np.inf)
    acc[0, 0] = 0.0
    trace = np.zeros((n + 1, m + 1), np.int8)           # 0 diagonal, 1 from above, 2 from the left
    for d in range(2, n + m + 1):
        i = np.arange(max(1, d - m), min(n, d - 1) + 1)
        j = d - i
        options = np.stack([acc[i - 1, j - 1], acc[i - 1, j], acc[i, j - 1]])
        choice = options.argmin(axis=0)
        acc[i, j] = cost[i - 1, j - 1] + options[choice, np.arange(len(i))]
        trace[i, j] = choice
    i, j, path = n, m, []
    while i > 0 and j > 0:
        path.append((i - 1, j - 1))
        step = trace[i, j]
        i, j = (i - 1, j - 1) if step == 0 else (i - 1, j) if step == 1 else (i, j - 1)
    path.reverse()
    rows, cols = np.array(path).T
    return rows, cols


def median_filter(x: np.ndarray, width: int) -> np.ndarray:
    """Median over a sliding window along the last axis (reflect-padded)."""
    if x.shape[-1] <= width // 2:
        return x
    pad = width // 2
    padded = np.pad(x, [(0, 0)] * (x.ndim - 1) + [(pad, pad)], mode="reflect")
    return np.median(np.lib.stride_tricks.sliding_window_view(padded, width, axis=-1), axis=-1)


ONSET_FRAME = SAMPLES_PER_FRAME   # samples per energy frame: one encoder position (20 ms)
ONSET_RANGE_DB = 40.0       # frames this far below the window's loudest frame count as silence


def speech_onset(samples: np.ndarray, start: float, end: float, rate: int = SAMPLE_RATE) -> float:
    """First time in [start, end) seconds of `samples` that is not silence (start if there is none)."""
    n = len(samples) // ONSET_FRAME
    if n == 0:
        return start
    frames = samples[:n * ONSET_FRAME].reshape(n, ONSET_FRAME).astype(np.float64)
    db = 10 * np.log10(np.mean(frames ** 2, axis=1) + 1e-20)
    loud = db >= max(db.max() - ONSET_RANGE_DB, -60.0)
    first, last = int(start * rate) // ONSET_FRAME, min(n, -(-int(end * rate) // ONSET_FRAME))
    hits = np.flatnonzero(loud[first:last])
    return start if hits.size == 0 else float(max(start, (first + hits[0]) * ONSET_FRAME / rate))


def clamp_long_words(words: list[WordTiming], first_of_segment: set[int]) -> None:
    """Cap the words DTW tends to stretch over pauses: a segment's first word loses its start,
    a sentence's last word its end, down to twice the median word duration (at most 1.4 s)."""
    durations = [w.end - w.start for w in words if w.end > w.start]
    if not durations:
        return
    longest = 2 * min(0.7, float(np.median(durations)))
    for k, w in enumerate(words):
        if w.end - w.start <= longest:
            continue
        if k in first_of_segment:
            w.start = w.end - longest
        elif w.word.rstrip().endswith((".", "?", "!")):
            w.end = w.start + longest


def word_timings(wd, cross, sot_sequence: list[int], text_tokens: list[int], num_frames: int) -> list[WordTiming]:
    """Words of `text_tokens` with start/end seconds (relative to the window) and probabilities."""
    tok = wd.tokenizer
    if not text_tokens:
        return []
    tokens = list(sot_sequence) + [tok.no_timestamps] + list(text_tokens) + [tok.eot]
    logits, attention = wd.session.step(np.array([tokens]), wd.session.new_cache(1), cross, alignment=True)
    if attention is None:
        return []
    first = len(sot_sequence) + 1
    probs = np.exp(log_softmax(logits[0, first - 1:first - 1 + len(text_tokens)]))
    token_probs = probs[np.arange(len(text_tokens)), text_tokens]
    frames = max(1, num_frames // 2)
    weights = attention[0][:, :, :frames].astype(np.float64)               # (heads, S, frames)
    weights /= weights.sum(axis=-1, keepdims=True) + 1e-12                   # softmax over the real frames
    weights = (weights - weights.mean(axis=-2, keepdims=True)) / (weights.std(axis=-2, keepdims=True) + 1e-10)
    matrix = median_filter(weights, MEDIAN_WIDTH).mean(axis=0)[first - 1:-1]  # <|notimestamps|> + text rows
    rows, cols = dtw(-matrix)
    words, word_tokens = tok.split_to_word_tokens(list(text_tokens))
    # Row r of the matrix is the decoder position that predicts text token r (row 0 is
    # <|notimestamps|>), so word k runs from its first token's row to the next word's.
    boundaries = np.pad(np.cumsum([len(t) for t in word_tokens]), (1, 0))
    jumps = np.pad(np.diff(rows), (1, 0), constant_values=1).astype(bool)
    jump_times = cols[jumps] / FRAMES_PER_SECOND                              # one per row
    out = []
    for k, word in enumerate(words):
        start, end = boundaries[k], boundaries[k + 1]
        out.append(WordTiming(word, word_tokens[k], float(jump_times[start]), float(jump_times[end]),
                              float(np.mean(token_probs[start:end]))))
    return out
