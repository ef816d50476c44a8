"""Decoding several windows in the same token steps (decoder/batch.py, decoder/decoding.py): greedy,
beam search and best-of sampling give each window the result it gets decoded alone, up to the rounding
of ONNX Runtime's batched products, and the fallback ladder runs per window."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from decoder import batch as batch_module
from decoder.batch import decode_batch
from decoder.decoding import attempt_options
from decoder.options import DecodingOptions, TranscribeOptions
from encoder.audio import load_audio
from encoder.evaluation import score

GREEDY = DecodingOptions(language="en", temperature=0.0)
BEAM = DecodingOptions(language="en", temperature=0.0, beam_size=5)
SAMPLED = DecodingOptions(language="en", temperature=0.6, best_of=5, seed=7)


@pytest.fixture(scope="module")
def windows(tiny, speech):
    """Four real clips' windows bound as one batch: (cross, each window's own cross)."""
    tr = tiny.transcriber
    kv = [tr.cross_kv(load_audio(clip.path))[0] for clip in speech[:4]]
    return tr.session.bind_cross_rows(iter(kv), len(kv))


def _compare(tiny, windows, options: DecodingOptions, min_same: int):
    cross, rows = windows
    together = tiny.transcriber.decoder.decode_windows(cross, options)
    assert len(together) == len(rows)
    same = 0
    for row, result in zip(rows, together):
        alone = tiny.transcriber.decoder.decode(row, options)
        same += result.tokens == alone.tokens
        assert score(alone.text, result.text).wer <= 0.1, (alone.text, result.text)
        assert result.no_speech_prob == pytest.approx(alone.no_speech_prob, abs=1e-3)
        assert result.temperature == alone.temperature
    assert same >= min_same
    return together


def test_greedy_windows_decode_as_each_alone(tiny, windows):
    together = _compare(tiny, windows, GREEDY, min_same=3)
    assert all(r.text.strip() for r in together)


def test_beam_search_windows_decode_as_each_alone(tiny, windows):
    """Five beams for each of four windows, 20 rows a step; each window's beams see only its own audio."""
    together = _compare(tiny, windows, BEAM, min_same=3)
    texts = {r.text for r in together}
    assert len(texts) == len(together)              # a window's rows never read another's audio


def test_sampled_windows_draw_what_each_draws_alone(tiny, windows):
    """Each window samples from its own generator, seeded alike: its draws are those it makes alone."""
    _compare(tiny, windows, SAMPLED, min_same=3)


def test_the_fallback_ladder_runs_per_window_in_shared_calls(tiny, windows, monkeypatch):
    """A threshold no greedy result meets sends every window up the ladder, together; a threshold every
    greedy result meets stops there."""
    cross, rows = windows
    decoder = tiny.transcriber.decoder
    calls = []
    real = decoder.decode_windows

    def spy(batch, options, prompts=None):
        calls.append((batch.windows, options.temperature))
        return real(batch, options, prompts)

    monkeypatch.setattr(decoder, "decode_windows", spy)
    rules = TranscribeOptions(logprob_threshold=0.0, temperatures=(0.0, 0.5))
    results = decode_batch(decoder, cross, DecodingOptions(language="en"), rules)
    assert [r.temperature for r in results] == [0.5] * 4
    assert calls == [(4, 0.0), (4, 0.5)]
    calls.clear()
    results = decode_batch(decoder, cross, DecodingOptions(language="en"),
                           replace(rules, logprob_threshold=-5.0))
    assert [r.temperature for r in results] == [0.0] * 4 and calls == [(4, 0.0)]


def test_a_retry_takes_only_the_windows_that_failed(tiny, windows, monkeypatch):
    """The windows a retry concerns are gathered into a batch of their own; each one's result is then
    the one decode_with_fallback gives it alone."""
    cross, rows = windows
    decoder = tiny.transcriber.decoder
    first = decoder.decode_windows(cross, attempt_options(GREEDY, 0.0))
    logprobs = sorted(r.avg_logprob for r in first)
    threshold = (logprobs[1] + logprobs[2]) / 2      # the two least probable windows fall back
    rules = TranscribeOptions(logprob_threshold=threshold, temperatures=(0.0, 0.4))
    results = decode_batch(decoder, cross, GREEDY, rules)
    retried = [i for i, r in enumerate(first) if r.avg_logprob < threshold]
    assert len(retried) == 2
    assert [i for i, r in enumerate(results) if r.temperature == 0.4] == retried
    for i in retried:
        alone = decoder.decode_with_fallback(rows[i], GREEDY, rules)
        assert score(alone.text, results[i].text).wer <= 0.1


def test_calls_hold_no_more_cache_than_the_budget(tiny, windows, monkeypatch):
    """With room for 10 rows of cache, beams of 5 go two windows to a call, with the same results."""
    cross, rows = windows
    decoder = tiny.transcriber.decoder
    monkeypatch.setattr(batch_module, "CACHE_BYTES", 10 * decoder.session.row_bytes())
    sizes = []
    real = decoder.decode_windows
    monkeypatch.setattr(decoder, "decode_windows", lambda batch, options, prompts=None: sizes.append(batch.windows)
                        or real(batch, options, prompts))
    results = decode_batch(decoder, cross, BEAM, TranscribeOptions(temperatures=(0.0,)))
    assert sizes == [2, 2]
    alone = [decoder.decode(row, BEAM) for row in rows]
    assert sum(a.tokens == r.tokens for a, r in zip(alone, results)) >= 3


def test_windows_that_end_leave_the_batch(tiny, windows, monkeypatch):
    """Once a quarter of the windows have ended they leave the batch, so later steps run fewer rows."""
    cross, rows = windows
    session = tiny.transcriber.session
    sizes = []
    real = session.step
    monkeypatch.setattr(session, "step", lambda tokens, *a, **k: sizes.append(len(tokens)) or real(tokens, *a, **k))
    tiny.transcriber.decoder.decode_windows(cross, BEAM)
    assert sizes[0] == 4 and sizes[1] == 20                # the prefill once per window, then every beam
    assert min(sizes[1:]) in (5, 10, 15)
    assert all(a >= b for a, b in zip(sizes[1:], sizes[2:]))


def test_a_cache_grown_slot_by_slot_decodes_alike(tiny, windows, monkeypatch):
    """The self-attention cache grows as tokens come; grown a few slots at a time (many reallocations,
    bindings made again each time) it gives the tokens of the usual growth."""
    from decoder import session as session_module

    cross, rows = windows
    usual = tiny.transcriber.decoder.decode(rows[0], BEAM)
    monkeypatch.setattr(session_module, "GROW_SLOTS", 3)
    assert tiny.transcriber.decoder.decode(rows[0], BEAM).tokens == usual.tokens


def test_a_part_of_the_cross_inputs_is_a_view_never_a_copy(windows):
    cross, rows = windows
    (k, _), = cross.part(1, 3).arrays[:1]
    assert np.shares_memory(k, cross.arrays[0][0]) and k.shape[0] == 2
    assert all(np.shares_memory(row.arrays[0][0], cross.arrays[0][0]) for row in rows)


def test_calls_take_runs_of_consecutive_windows():
    from decoder.batch import _calls

    assert _calls([0, 1, 2, 3], 8) == [(0, 4)]
    assert _calls([0, 2, 3, 7], 8) == [(0, 1), (2, 4), (7, 8)]
    assert _calls([0, 1, 2, 3, 4], 2) == [(0, 2), (2, 4), (4, 5)]


# ---- a draft checked in one step ----------------------------------------------------------------

def test_a_draft_is_checked_in_one_step_and_changes_nothing(tiny, windows, monkeypatch):
    """Greedy decoding with a draft gives the tokens it gives without one, whether the draft is the
    answer itself (then one step checks it all), its first half, or wrong from its first token."""
    from dataclasses import replace as change

    cross, rows = windows
    decoder, session = tiny.transcriber.decoder, tiny.transcriber.session
    plain = decoder.decode(rows[1], GREEDY)
    steps = []
    real = session.step
    monkeypatch.setattr(session, "step", lambda tokens, *a, **k: steps.append(tokens.shape) or real(tokens, *a, **k))
    half = plain.tokens[:len(plain.tokens) // 2]
    wrong = [plain.tokens[0] + 1] + plain.tokens[1:]
    for draft in (plain.tokens, half, wrong):
        steps.clear()
        result = decoder.decode(rows[1], change(GREEDY, draft=tuple(draft)))
        assert result.tokens == plain.tokens
        assert result.avg_logprob == pytest.approx(plain.avg_logprob, abs=1e-3)
        assert steps[1] == (1, len(draft))                   # after the prefill, the draft in one step
    steps.clear()
    decoder.decode(rows[1], change(GREEDY, draft=tuple(plain.tokens)))
    assert len(steps) == 2                                   # prefill and draft: <|endoftext|> comes next
    steps.clear()
    decoder.decode(rows[1], change(GREEDY, draft=tuple(half)))
    assert len(steps) == 2 + len(plain.tokens) - len(half)  # then a step per token the draft lacked


def test_a_draft_is_not_used_by_sampling_or_beam_search():
    from decoder.decoding import attempt_options

    draft = DecodingOptions(language="en", draft=(1, 2, 3))
    assert attempt_options(draft, 0.0).draft == (1, 2, 3)
    assert attempt_options(draft, 0.2).draft == ()
    assert attempt_options(replace(draft, beam_size=5), 0.0).draft == ()


# ---- each window with its own prompt -------------------------------------------------------------

def _prompts(tiny) -> list[tuple[int, ...]]:
    """Prompts of four lengths (none, short, long, medium), as earlier windows' text would give them."""
    encode = tiny.transcriber.tokenizer.encode
    return [(), tuple(encode(" The weather was fine.")),
            tuple(encode(" She had been thinking for a long while about what her brother told her, and"
                         " whether any of it could be true, when the carriage finally stopped.")),
            tuple(encode(" And so, my fellow citizens."))]


def test_a_row_behind_padding_computes_what_it_computes_alone(tiny, windows):
    """A shorter prompt is right-aligned behind padding: its row's logits, at the prefill and at the next
    step, are those it has alone (masking and positions per row), up to batched rounding."""
    cross, rows = windows
    wd, prompts = tiny.transcriber.decoder, _prompts(tiny)
    together = wd.prefill(cross, GREEDY, 1, prompts)
    lengths = [len(wd.initial_tokens(replace(GREEDY, prompt=p))[0]) for p in prompts]
    assert together.cache.pad.tolist() == [max(lengths) - n for n in lengths]
    nxt = together.logits[:, -1].argmax(-1)
    after = wd.session.step(nxt[:, None], together.cache, cross)
    for w, prompt in enumerate(prompts):
        alone = wd.prefill(rows[w], replace(GREEDY, prompt=prompt), 1)
        np.testing.assert_allclose(together.logits[w], alone.logits[0], atol=2e-3, rtol=0)
        step = wd.session.step(nxt[w:w + 1, None], alone.cache, rows[w])
        np.testing.assert_allclose(after[w], step[0], atol=2e-3, rtol=0)


@pytest.mark.parametrize("options", [GREEDY, BEAM], ids=["greedy", "beam"])
def test_windows_with_prompts_of_their_own_decode_as_each_alone(tiny, windows, options):
    cross, rows = windows
    wd, prompts = tiny.transcriber.decoder, _prompts(tiny)
    together = wd.decode_windows(cross, options, prompts)
    same = 0
    for row, prompt, result in zip(rows, prompts, together):
        alone = wd.decode(row, replace(options, prompt=prompt))
        same += result.tokens == alone.tokens
        assert score(alone.text, result.text).wer <= 0.1, (alone.text, result.text)
    assert same >= 3
