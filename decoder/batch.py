"""Decoding several windows at once: one ONNX Runtime call per token step for the whole batch.

A decoder step of tiny.en at batch 1 mostly reads weights (the vocabulary projection alone is
10-40 MB); a batch of windows reads them once per step for every row. Each window has its own
cross-attention inputs, stop and result, and as many rows as the attempt needs (one when greedy,
its beams, or its best-of samples); rows that finish keep feeding <|endoftext|>, which no result
includes. Every window starts from the same initial tokens (one prompt for the batch).

    decode_batch(wd, cross, options, rules) -> [DecodingResult per window]

Whisper's fallback ladder runs per window: each temperature decodes together the windows that no
earlier temperature gave an accepted result.
"""
from __future__ import annotations

from decoder.decoding import DecodingResult, WindowDecoder, accepted, attempt_options, rows_per_window
from decoder.options import DecodingOptions, TranscribeOptions
from decoder.session import CrossInputs

# Most bytes of self-attention cache one call holds (each row holds 2 · layers · n_text_ctx · d_model
# floats: 5.5 MB for tiny.en, 147 MB for large-v3); a call takes as many windows as fit, at least one.
CACHE_BYTES = 512 * 2**20


def decode_batch(wd: WindowDecoder, cross: CrossInputs, options: DecodingOptions,
                 rules: TranscribeOptions) -> list[DecodingResult]:
    """Each window's result, as decode_with_fallback would give it, every temperature of `rules` decoding
    the windows it concerns together. cross: the windows' cross-attention inputs bound as one batch."""
    results: list[DecodingResult | None] = [None] * cross.windows
    todo = list(range(cross.windows))
    for temperature in rules.temperatures:
        attempt = attempt_options(options, temperature)
        per_call = max(1, CACHE_BYTES // (rows_per_window(attempt) * wd.session.row_bytes()))
        for first in range(0, len(todo), per_call):
            part = todo[first:first + per_call]
            batch = cross if len(part) == cross.windows else cross.select(part)
            for i, result in zip(part, wd.decode_windows(batch, attempt)):
                results[i] = result
        todo = [i for i in todo if not accepted(results[i], rules)]
        if not todo:
            break
    return results
