"""Logit rules applied before each token is chosen (Whisper's decoding rules).

Each filter takes logits (B, V) for the next token and the tokens sampled so far
(B, n), and sets forbidden entries to -inf in place.
"""
from __future__ import annotations

import numpy as np

NEG_INF = -np.inf


def log_softmax(x: np.ndarray) -> np.ndarray:
    """log softmax over the last axis, in float32 as openai-whisper does it: in float64 it was
    5% of a transcription's time (it runs twice per token over the whole vocabulary)."""
    shifted = np.asarray(x, np.float32) - x.max(axis=-1, keepdims=True).astype(np.float32)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


class SuppressBlank:
    """At the first sampled position, forbid a lone space and end-of-text (no empty transcripts)."""

    def __init__(self, tokens: list[int], sample_begin: int):
        self.tokens, self.sample_begin = tokens, sample_begin

    def apply(self, logits, tokens):
        if tokens.shape[1] == self.sample_begin:
            logits[:, self.tokens] = NEG_INF


class SuppressTokens:
    """Always forbid `tokens` (non-speech symbols and task/control tokens)."""

    def __init__(self, tokens: list[int]):
        self.tokens = list(tokens)

    def apply(self, logits, tokens):
        logits[:, self.tokens] = NEG_INF


class TimestampRules:
    """Whisper's timestamp grammar.

    Timestamps come in pairs (end of one segment, start of the next) except at the
    start and the end; they never decrease; the first token is a timestamp no later
    than `max_initial` steps; and when the timestamps together are more likely than
    any text token, a timestamp must come next.
    """

    def __init__(self, tokenizer, sample_begin: int, max_initial: int | None):
        self.eot, self.no_timestamps = tokenizer.eot, tokenizer.no_timestamps
        self.begin = tokenizer.timestamp_begin
        self.sample_begin, self.max_initial = sample_begin, max_initial

    def _pairing(self, row: np.ndarray, seq: np.ndarray) -> None:
        last_ts = len(seq) >= 1 and seq[-1] >= self.begin
        penultimate_ts = len(seq) < 2 or seq[-2] >= self.begin
        if last_ts:
            if penultimate_ts:
                row[self.begin:] = NEG_INF          # a pair is complete: text (or eot) next
            else:
                row[:self.eot] = NEG_INF            # an unpaired timestamp: its partner next
        stamps = seq[seq >= self.begin]
        if stamps.size:
            floor = stamps[-1] if (last_ts and not penultimate_ts) else stamps[-1] + 1
            row[self.begin:floor] = NEG_INF         # never go back in time

    def apply(self, logits, tokens):
        logits[:, self.no_timestamps] = NEG_INF
        for k in range(tokens.shape[0]):
            self._pairing(logits[k], tokens[k, self.sample_begin:])
        if tokens.shape[1] == self.sample_begin:
            logits[:, :self.begin] = NEG_INF
            if self.max_initial is not None:
                logits[:, self.begin + self.max_initial + 1:] = NEG_INF
        logprobs = log_softmax(logits)
        for k in range(tokens.shape[0]):
            stamps = logprobs[k, self.begin:]
            finite = stamps[np.isfinite(stamps)]
            if finite.size:
                top = finite.max()
                stamp_logprob = top + np.log(np.exp(finite - top).sum())
                if stamp_logprob > logprobs[k, :self.begin].max():
                    logits[k, :self.begin] = NEG_INF
