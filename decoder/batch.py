"""Decoding several windows at once: one ONNX Runtime call per token step for the whole batch.

A decoder step of tiny.en at batch 1 mostly reads weights (the vocabulary projection alone is
10-40 MB); a batch of windows reads them once per step for every row. Each row has its own
cross-attention inputs, stop and result; rows that finish keep feeding <|endoftext|>, which
no result includes. Every row starts from the same initial tokens (one prompt for the batch).

    decode_batch(wd, cross_rows, options, rules) -> [DecodingResult per row]

Greedy decoding runs batched; beam search and sampling decode row by row. Rows whose first
attempt fails the fallback rules retry alone, up Whisper's ladder.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from decoder.decoding import (
    DecodingResult,
    Prefill,
    WindowDecoder,
    accepted,
    attempt_options,
    no_speech_probs,
    sample_rows,
    until_end,
)
from decoder.options import DecodingOptions, TranscribeOptions


def decode_batch(wd: WindowDecoder, cross, rows: list, options: DecodingOptions,
                 rules: TranscribeOptions) -> list[DecodingResult]:
    """Each row's result, as decode_with_fallback would give it: the first temperature of `rules`
    for all rows at once, then the ladder's next temperatures for the rows that need them.
    cross: the rows' cross-attention inputs bound as one batch; rows: each row's own."""
    first = attempt_options(options, rules.temperatures[0])
    if first.temperature == 0 and first.beam_size is None:
        results = greedy_batch(wd, cross, first)
    else:
        results = [wd.decode(row, first) for row in rows]
    ladder = replace(rules, temperatures=rules.temperatures[1:])
    return [r if accepted(r, rules) or not ladder.temperatures else wd.decode_with_fallback(row, options, ladder)
            for r, row in zip(results, rows)]


def greedy_batch(wd: WindowDecoder, cross, options: DecodingOptions) -> list[DecodingResult]:
    """Greedy decoding (temperature 0) of every row of `cross` together."""
    n = _rows(cross)
    initial, sot_index = wd.initial_tokens(options)
    cache = wd.session.new_cache(n)
    tokens = np.tile(np.array(initial, np.int64), (n, 1))                     # (n, n_initial)
    logits = wd.session.step(tokens, cache, cross, logits_from=sot_index)      # (n, n_initial - sot_index, V)
    no_speech = no_speech_probs(wd, logits[:, 0])
    start = Prefill(len(initial), wd.filters(options, len(initial)), wd.sample_limit(options, len(initial)),
                    cache, tokens, logits, no_speech=0.0)          # each row's is no_speech above
    tokens, sum_logprob = sample_rows(wd, cross, start, lambda last: last.argmax(axis=-1))
    return [wd.finish(seq, float(s), float(p), options)
            for seq, s, p in zip(until_end(tokens[:, len(initial):], wd.tokenizer.eot), sum_logprob, no_speech)]


def _rows(cross) -> int:
    return cross[0][0].shape()[0]

