"""Decoding several windows at once: one ONNX Runtime call per token step for the whole batch.

A decoder step of tiny.en at batch 1 mostly reads weights (the vocabulary projection alone is
10-40 MB); a batch of windows reads them once per step for every row. Each window has its own
cross-attention inputs, stop and result, and as many rows as the attempt needs (one when greedy,
its beams, or its best-of samples); rows that finish keep feeding <|endoftext|>, which no result
includes. Each window has its own prompt; the shorter initial sequences are right-aligned to the
longest, behind padding the graph masks.

    decode_batch(wd, cross, options, rules) -> [DecodingResult per window]

Whisper's fallback ladder runs per window: each temperature decodes together the windows that no
earlier temperature gave an accepted result (each run of consecutive ones as a call).
"""
from __future__ import annotations

from decoder.decoding import DecodingResult, Prompts, WindowDecoder, accepted, attempt_options, rows_per_window
from decoder.options import DecodingOptions, TranscribeOptions
from decoder.session import CrossInputs

# Most bytes of self-attention cache one call holds (each row holds 2 · layers · n_text_ctx · d_model
# floats: 5.5 MB for tiny.en, 147 MB for large-v3); a call takes as many windows as fit, at least one.
CACHE_BYTES = 512 * 2**20


def decode_batch(wd: WindowDecoder, cross: CrossInputs, options: DecodingOptions,
                 rules: TranscribeOptions, prompts: Prompts = None) -> list[DecodingResult]:
    """Each window's result, as decode_with_fallback would give it, every temperature of `rules` decoding
    the windows it concerns together. cross: the windows' cross-attention inputs bound as one batch;
    prompts: each window's (default: options.prompt)."""
    results: list[DecodingResult | None] = [None] * cross.windows
    todo = list(range(cross.windows))
    for temperature in rules.temperatures:
        attempt = attempt_options(options, temperature)
        per_call = max(1, CACHE_BYTES // (rows_per_window(attempt) * wd.session.row_bytes()))
        for start, stop in _calls(todo, per_call):
            batch = cross if stop - start == cross.windows else cross.part(start, stop)
            results[start:stop] = wd.decode_windows(batch, attempt, None if prompts is None else prompts[start:stop])
        todo = [i for i in todo if not accepted(results[i], rules)]
        if not todo:
            break
    return results


def _calls(windows: list[int], most: int) -> list[tuple[int, int]]:
    """`windows` (ascending) as runs of consecutive windows, [start, stop), of at most `most`: a call
    takes a view of the batch's cross-attention inputs, which must be one run (a copy would cost
    18 MB a window for tiny.en while the batch is alive)."""
    runs: list[list[int]] = []
    for w in windows:
        if runs and runs[-1][1] == w and runs[-1][1] - runs[-1][0] < most:
            runs[-1][1] = w + 1
        else:
            runs.append([w, w + 1])
    return [(a, b) for a, b in runs]
