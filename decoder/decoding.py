"""Decoding one 30 s window: token selection strategies and temperature fallback.

    WindowDecoder.decode(cross, DecodingOptions) -> DecodingResult        one attempt
    WindowDecoder.decode_with_fallback(cross, TranscribeOptions)        Whisper's retry ladder
The strategies follow openai/whisper's decoding: greedy (temperature 0), sampling
with best-of (temperature > 0), and beam search with patience.
"""
from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from decoder.logits import NEG_INF, SuppressBlank, SuppressTokens, TimestampRules, log_softmax
from decoder.options import BEST_OF, NO_SPEECH_CERTAIN, DecodingOptions, TranscribeOptions
from kernels.frontend import TIME_PRECISION


@dataclass
class DecodingResult:
    tokens: list[int]                      # sampled tokens (timestamps included, eot excluded)
    text: str
    avg_logprob: float
    no_speech_prob: float
    temperature: float
    compression_ratio: float
    language: str | None = None
    alignment: np.ndarray | None = field(default=None, repr=False)


# Each window's prompt (earlier text's tokens), or None: the options' prompt for every window.
Prompts = Sequence[tuple[int, ...]] | None


def compression_ratio(text: str) -> float:
    raw = text.encode("utf-8")
    return len(raw) / len(zlib.compress(raw)) if raw else 0.0


class WindowDecoder:
    """Decodes windows with one DecoderSession, tokenizer and the model's suppress list."""

    def __init__(self, session, tokenizer, suppress_tokens: list[int]):
        self.session, self.tokenizer = session, tokenizer
        self.suppress = list(suppress_tokens) or tokenizer.non_speech_tokens
        self.n_ctx = session.dims.n_text_ctx

    # ---- setup -------------------------------------------------------------------
    def initial_tokens(self, options: DecodingOptions) -> tuple[list[int], int]:
        """(initial sequence, index of <|startoftranscript|> in it)."""
        tok = self.tokenizer
        prefix = []
        if options.prompt and tok.sot_prev is not None:
            prefix = [tok.sot_prev] + list(options.prompt)[-(self.n_ctx // 2 - 1):]
        seq = prefix + tok.sot_sequence(options.language, options.task)
        if options.without_timestamps:
            seq.append(tok.no_timestamps)
        return seq, len(prefix)

    def filters(self, options: DecodingOptions, sample_begin: int) -> list:
        tok = self.tokenizer
        out = []
        if options.suppress_blank:
            out.append(SuppressBlank(tok.encode(" ") + [tok.eot], sample_begin))
        specials = [t for t in (tok.transcribe, tok.translate, tok.sot, tok.sot_prev, tok.sot_lm, tok.no_speech)
                    if t is not None]
        out.append(SuppressTokens(sorted(set(list(options.suppress_tokens or self.suppress) + specials))))
        if not options.without_timestamps:
            limit = options.max_initial_timestamp
            max_initial = round(limit / TIME_PRECISION) if limit else None
            out.append(TimestampRules(tok, sample_begin, max_initial))
        return out

    def prefill(self, cross, options: DecodingOptions, group: int, prompts: Prompts = None) -> Prefill:
        """Run the initial tokens once for each window of `cross`, then give each window `group` rows
        (its beams or samples) starting from that state: where every strategy starts. `prompts`: each
        window's prompt (default: options.prompt for all); shorter initial sequences are right-aligned
        to the longest, the slots before them padding, so every row samples from the same step on."""
        prompts = [options.prompt] * cross.windows if prompts is None else prompts
        initials = [self.initial_tokens(replace(options, prompt=p)) for p in prompts]
        n_initial = max(len(seq) for seq, _ in initials)
        tail = len(initials[0][0]) - initials[0][1]            # <|startoftranscript|> on: alike in every row
        tokens = np.array([[self.tokenizer.eot] * (n_initial - len(seq)) + seq for seq, _ in initials],
                          np.int64)                                                   # (n, n_initial)
        cache = self.session.new_cache(len(tokens))
        cache.pad[:] = [n_initial - len(seq) for seq, _ in initials]
        logits = self.session.step(tokens, cache, cross, logits_from=n_initial - tail)  # (n, tail, V)
        return Prefill(n_initial, self.filters(options, n_initial), self.sample_limit(options, n_initial),
                       self.session.widen(cache, group), np.repeat(tokens, group, axis=0),
                       np.repeat(logits, group, axis=0), no_speech_probs(self, logits[:, 0]), group)

    def sample_limit(self, options: DecodingOptions, n_initial: int) -> int:
        """Most tokens to sample after `n_initial` initial ones."""
        return min(options.sample_len or self.n_ctx // 2, self.n_ctx - n_initial)

    # ---- language ----------------------------------------------------------------
    def detect_language(self, cross) -> tuple[str, dict[str, float]]:
        """Most likely language from the logits after <|startoftranscript|>."""
        tok = self.tokenizer
        codes = tok.language_tokens
        if not tok.multilingual or not codes:
            return "en", {"en": 1.0}
        logits = self.session.step(np.array([[tok.sot]]), self.session.new_cache(1), cross)[0, -1]
        ids = np.array(list(codes.values()))
        probs = np.exp(log_softmax(logits[ids][None])[0])
        ranked = dict(sorted(zip(codes, probs.tolist()), key=lambda kv: -kv[1]))
        return next(iter(ranked)), ranked

    # ---- one attempt -------------------------------------------------------------
    def decode(self, cross, options: DecodingOptions) -> DecodingResult:
        """One attempt on one window."""
        return self.decode_windows(cross, options)[0]

    def decode_windows(self, cross, options: DecodingOptions, prompts: Prompts = None) -> list[DecodingResult]:
        """One attempt on each window of `cross` (bound as one batch), all in the same token steps, each
        prompted with its own of `prompts` (default: options.prompt); each window's result is the one it
        gets decoded alone, up to the rounding of batched products."""
        if options.temperature == 0 and options.beam_size:
            return BeamSearch(self, options).run(cross, prompts)
        return Sampler(self, options).run(cross, prompts)

    def finish(self, tokens: list[int], sum_logprob: float, no_speech: float, options) -> DecodingResult:
        text = self.tokenizer.decode(tokens)
        return DecodingResult(tokens, text, sum_logprob / (len(tokens) + 1), no_speech, options.temperature,
                              compression_ratio(text), options.language)

    def decode_with_fallback(self, cross, options: DecodingOptions, rules: TranscribeOptions) -> DecodingResult:
        """Decode with `options`, retrying at the next temperature of `rules` while the text repeats
        itself (compression ratio) or is improbable (average log-probability)."""
        result = None
        for t in rules.temperatures:
            result = self.decode(cross, attempt_options(options, t))
            if accepted(result, rules):
                return result
        return result


def attempt_options(options: DecodingOptions, temperature: float) -> DecodingOptions:
    """`options` for one attempt at `temperature`: beam search only at 0, best-of only above."""
    return replace(options, temperature=temperature, beam_size=options.beam_size if temperature == 0 else None,
                   best_of=(options.best_of or BEST_OF) if temperature > 0 else None,
                   draft=options.draft if temperature == 0 and not options.beam_size else ())


def accepted(result: DecodingResult, rules: TranscribeOptions) -> bool:
    """Whether an attempt ends the fallback ladder: its text neither repeats itself (compression ratio)
    nor is improbable (average log-probability), or the window is silence (then retrying is no use)."""
    repetitive = rules.compression_ratio_threshold is not None and \
        result.compression_ratio > rules.compression_ratio_threshold
    improbable = rules.logprob_threshold is not None and result.avg_logprob < rules.logprob_threshold
    silent = rules.no_speech_threshold is not None and result.no_speech_prob > rules.no_speech_threshold
    return (silent and improbable) or not (repetitive or improbable)


def is_silence(result: DecodingResult, rules: TranscribeOptions) -> bool:
    """Whether a window's decoding says it holds no speech: Whisper's rule (no-speech probability above
    its threshold and the text improbable), or a no-speech probability above NO_SPEECH_CERTAIN."""
    if rules.no_speech_threshold is None or result.no_speech_prob <= rules.no_speech_threshold:
        return False
    return result.no_speech_prob > NO_SPEECH_CERTAIN or rules.logprob_threshold is None or \
        result.avg_logprob < rules.logprob_threshold


@dataclass
class Prefill:
    n_initial: int           # tokens before the first sampled one
    filters: list            # logit rules
    limit: int               # most tokens to sample
    cache: object            # KVCache after the initial tokens
    tokens: np.ndarray       # (windows·group, n_initial)
    logits: np.ndarray       # (windows·group, n_initial - sot_index, vocab): from <|startoftranscript|> on
    no_speech: np.ndarray    # (windows,) probability of <|nospeech|> at <|startoftranscript|>
    group: int               # rows per window, consecutive
    logprob: float = 0.0     # sum of the log-probabilities of tokens already chosen (a checked draft's)


def no_speech_probs(wd: WindowDecoder, sot_logits: np.ndarray) -> np.ndarray:
    """P(<|nospeech|>) at <|startoftranscript|> of each row; sot_logits (n, vocab)."""
    if wd.tokenizer.no_speech is None:
        return np.zeros(len(sot_logits))
    return np.exp(log_softmax(sot_logits.astype(np.float32))[:, wd.tokenizer.no_speech])


def until_end(sampled, eot: int) -> list[list[int]]:
    """Each row of sampled tokens (an iterable of 1-D arrays) up to its <|endoftext|>."""
    rows = [[int(t) for t in row] for row in sampled]
    return [row[:row.index(eot)] if eot in row else row for row in rows]


def rows_per_window(options: DecodingOptions) -> int:
    """Decoder rows an attempt with `options` takes for each window: its beams, samples, or one."""
    if options.temperature == 0:
        return options.beam_size or 1
    return options.best_of or 1


# Windows that have ended at either end of the batch leave it once they are this share of it: until
# then their rows idle (each leaving copies the cache's rows; the cross-attention inputs of the
# windows that stay are a view, so ended windows between live ones stay too).
DROP_SHARE = 0.25


@dataclass
class _Batch:
    """The windows still decoding: their cache rows, cross-attention inputs and tokens, `group` rows each."""
    cache: object
    cross: object
    tokens: np.ndarray          # (len(windows)·group, n)
    windows: list[int]          # each one's index among the windows the attempt began with
    group: int

    def rows(self) -> np.ndarray:
        """Each row's index among the rows the attempt began with."""
        return (np.array(self.windows)[:, None] * self.group + np.arange(self.group)).reshape(-1)

    def sampled(self, into: list, which: np.ndarray, n_initial: int) -> None:
        """Put the sampled tokens of the windows `which` (bool, per window here) at their rows in `into`."""
        for k in np.flatnonzero(which):
            for r in range(self.group):
                into[self.windows[k] * self.group + r] = self.tokens[k * self.group + r, n_initial:]

    def drop(self, wd: WindowDecoder, keep: slice) -> np.ndarray:
        """Keep the windows `keep` of the batch (a run); returns the kept rows' positions."""
        rows = np.arange(keep.start * self.group, keep.stop * self.group)
        self.cache = wd.session.select_rows(self.cache, rows)
        self.cross = self.cross.part(keep.start, keep.stop)
        self.tokens = self.tokens[rows]
        self.windows = self.windows[keep]
        return rows


def _live_span(ended: np.ndarray) -> slice | None:
    """The windows from the first live one to the last, when those outside (ended) are DROP_SHARE of
    the batch or more; else None."""
    live = np.flatnonzero(~ended)
    if not len(live) or len(ended) - (live[-1] + 1 - live[0]) < max(1, DROP_SHARE * len(ended)):
        return None
    return slice(int(live[0]), int(live[-1]) + 1)


class Sampler:
    """Greedy (temperature 0) or best-of-N sampling (temperature > 0), of one or more windows."""

    def __init__(self, wd: WindowDecoder, options: DecodingOptions):
        self.wd, self.options = wd, options
        self.n = rows_per_window(options)          # beam_size is set only above temperature 0 here
        self.rngs: list[np.random.Generator] = []

    def run(self, cross, prompts: Prompts = None) -> list[DecodingResult]:
        start = self.wd.prefill(cross, self.options, self.n, prompts)
        if self.options.draft and self.n == 1 and cross.windows == 1:
            start = self._checked(cross, start, self.options.draft)
        # each window draws from a generator of its own, seeded alike: its samples are those it draws alone
        self.rngs = [np.random.default_rng(self.options.seed) for _ in start.no_speech]
        sampled, sum_logprob = sample_rows(self.wd, cross, start, self._choose)
        n = self.n
        return [self._best(sampled[w * n:(w + 1) * n], sum_logprob[w * n:(w + 1) * n], float(no_speech))
                for w, no_speech in enumerate(start.no_speech)]

    def _checked(self, cross, start: Prefill, draft: tuple[int, ...]) -> Prefill:
        """`start` moved past the longest prefix of `draft` that greedy decoding would choose itself: the
        draft runs as one step, then each position's filtered logits are checked in turn. The cache keeps
        the accepted tokens' slots (the rest lie past its length, masked, and are written over)."""
        wd = self.wd
        draft = [t for t in draft if t != wd.tokenizer.eot][:min(start.limit, wd.n_ctx - start.cache.length) - 1]
        if not draft:
            return start
        logits = wd.session.step(np.array([draft], np.int64), start.cache, cross)        # (1, k, V)
        predictions = np.concatenate([start.logits[:, -1:], logits[:, :-1]], axis=1)   # the one before each
        tokens, logprob, accepted = start.tokens, 0.0, 0
        for k, token in enumerate(draft):
            last = predictions[:, k].astype(np.float32)
            for f in start.filters:
                f.apply(last, tokens)
            if int(last[0].argmax()) != token:
                break
            logprob += float(log_softmax(last)[0, token])
            tokens = np.concatenate([tokens, [[token]]], axis=1)
            accepted = k + 1
        start.cache.length = start.n_initial + accepted
        after = logits[:, accepted - 1:accepted] if accepted else start.logits[:, -1:]
        return replace(start, tokens=tokens, logits=after, limit=start.limit - accepted, logprob=logprob)

    def _choose(self, last: np.ndarray, windows: list[int]) -> np.ndarray:
        """Each row's next token from its filtered logits (len(windows)·n, V)."""
        if self.options.temperature == 0:
            return last.argmax(axis=-1)
        p = np.exp(log_softmax(last / self.options.temperature))
        rows = p.reshape(len(windows), self.n, -1)
        return np.array([self.rngs[w].choice(p.shape[1], p=row / row.sum())
                         for w, own in zip(windows, rows) for row in own])

    def _best(self, sampled, sum_logprob, no_speech) -> DecodingResult:
        seqs = until_end(sampled, self.wd.tokenizer.eot)
        scores = [_rank_score(s, len(seq), self.options.length_penalty) for s, seq in zip(sum_logprob, seqs)]
        k = int(np.argmax(scores))
        return self.wd.finish(seqs[k], float(sum_logprob[k]), no_speech, self.options)


def sample_rows(wd: WindowDecoder, cross, start: Prefill, choose) -> tuple[list[np.ndarray], np.ndarray]:
    """Token by token from `start`, each row's next token `choose(filtered logits (rows, V), the windows in
    the batch)`, until every row has ended (a row that has ended repeats <|endoftext|>; windows whose rows
    have all ended leave the batch): (each row's sampled tokens, each row's sum of sampled log-probabilities)."""
    batch = _Batch(start.cache, cross, start.tokens, list(range(len(start.no_speech))), start.group)
    logits, eot, n = start.logits, wd.tokenizer.eot, len(start.tokens)
    sampled: list = [None] * n
    sum_logprob, done = np.full(n, start.logprob), np.zeros(n, bool)   # per row the attempt began with; here
    for _ in range(start.limit):
        last = logits[:, -1].astype(np.float32)        # a copy: the filters write into it
        for f in start.filters:
            f.apply(last, batch.tokens)
        nxt = np.where(done, eot, choose(last, batch.windows))
        sum_logprob[batch.rows()] += np.where(done, 0.0, log_softmax(last)[np.arange(len(nxt)), nxt])
        done |= nxt == eot
        batch.tokens = np.concatenate([batch.tokens, nxt[:, None]], axis=1)
        ended = done.reshape(-1, batch.group).all(axis=1)
        if ended.all() or batch.cache.length >= wd.n_ctx:
            break
        span = _live_span(ended)
        if span is not None:
            leaving = np.ones(len(ended), bool)
            leaving[span] = False
            batch.sampled(sampled, leaving, start.n_initial)
            kept = batch.drop(wd, span)
            nxt, done = nxt[kept], done[kept]
        logits = wd.session.step(nxt[:, None], batch.cache, batch.cross)
    batch.sampled(sampled, np.ones(len(batch.windows), bool), start.n_initial)
    return sampled, sum_logprob


def _rank_score(sum_logprob: float, length: int, length_penalty: float | None) -> float:
    penalty = length if length_penalty is None else ((5 + length) / 6) ** length_penalty
    return sum_logprob / max(penalty, 1e-9)


class BeamSearch:
    """Beam search over `beam_size` hypotheses per window, a window stopping once beam_size x patience
    of its hypotheses have finished; the windows of `cross` search side by side in the same steps."""

    def __init__(self, wd: WindowDecoder, options: DecodingOptions):
        self.wd, self.options = wd, options

    def run(self, cross, prompts: Prompts = None) -> list[DecodingResult]:
        wd, opt, beams = self.wd, self.options, self.options.beam_size
        eot = wd.tokenizer.eot
        start = wd.prefill(cross, opt, beams, prompts)
        batch = _Batch(start.cache, cross, start.tokens, list(range(len(start.no_speech))), beams)
        logits, n_initial = start.logits, start.n_initial
        scores = np.zeros((len(batch.windows), beams))     # per window in the batch
        scores[:, 1:] = NEG_INF                 # a window's beams start identical: expand only the first
        finished: list[dict[tuple, float]] = [{} for _ in batch.windows]      # per window of the attempt
        live = np.ones(len(batch.windows), bool)
        max_finished = round(beams * opt.patience)
        for _ in range(start.limit):
            last = logits[:, -1].astype(np.float32)        # a copy: the filters write into it
            for f in start.filters:
                f.apply(last, batch.tokens)
            cand = scores.reshape(-1, 1) + log_softmax(last)                   # (windows·beams, V)
            keep = []                                                          # (row, token, score)
            for k, w in enumerate(batch.windows):
                own = slice(k * beams, (k + 1) * beams)
                seqs = batch.tokens[own, n_initial:]
                best = _expand(cand[own], seqs, beams, eot, finished[w]) if live[k] else []
                if live[k] and (len(finished[w]) >= max_finished or not best or batch.cache.length >= wd.n_ctx):
                    live[k] = False
                    _keep_if_none(finished[w], seqs, scores[k])
                if not live[k]:                 # an ended window's rows idle until it leaves the batch
                    best = [(r, eot, NEG_INF) for r in range(beams)]
                best += [(best[0][0], best[0][1], NEG_INF)] * (beams - len(best))   # too few live: dead copies
                keep += [(k * beams + r, t, sc) for r, t, sc in best]
            if not live.any():
                break
            rows, nxt, new = (np.array(x) for x in zip(*keep))
            batch.cache.reorder(rows)
            batch.tokens = np.concatenate([batch.tokens[rows], nxt[:, None]], axis=1)
            scores = new.reshape(-1, beams)
            span = _live_span(~live)
            if span is not None:
                nxt, scores, live = nxt[batch.drop(wd, span)], scores[span], live[span]
            logits = wd.session.step(nxt[:, None], batch.cache, batch.cross)
        for k, w in enumerate(batch.windows):
            _keep_if_none(finished[w], batch.tokens[k * beams:(k + 1) * beams, n_initial:], scores[k])
        results = []
        for w, done in enumerate(finished):
            best = max(done, key=lambda s: _rank_score(done[s], len(s), opt.length_penalty))
            results.append(wd.finish(list(best), done[best], float(start.no_speech[w]), opt))
        return results


def _expand(cand: np.ndarray, seqs: np.ndarray, beams: int, eot: int, finished: dict) -> list:
    """One step of one window's search: its best `beams` live continuations (row, token, score) among the
    candidates cand (beams, V) of its rows' sampled tokens `seqs`; those ending add to `finished`."""
    keep = []
    flat_cand = cand.reshape(-1)
    top = np.argpartition(flat_cand, -(2 * beams + 1))[-(2 * beams + 1):]     # the best 2·beams + 1, then
    for flat in top[np.argsort(flat_cand[top])[::-1]]:                         # in order: O(V), not a full sort
        row, token = divmod(int(flat), cand.shape[1])
        if not np.isfinite(cand[row, token]):
            break
        if token == eot:
            finished.setdefault(tuple(seqs[row].tolist()), float(cand[row, token]))
        else:
            keep.append((row, token, cand[row, token]))
        if len(keep) == beams:
            break
    return keep


def _keep_if_none(finished: dict, seqs: np.ndarray, scores: np.ndarray) -> None:
    """A window out of room with no finished hypothesis takes its live beams as they are."""
    if not finished:
        finished.update({tuple(seq.tolist()): float(sc) for seq, sc in zip(seqs, scores)})
