"""Decoding one 30 s window: token selection strategies and temperature fallback.

    WindowDecoder.decode(cross, DecodingOptions) -> DecodingResult        one attempt
    WindowDecoder.decode_with_fallback(cross, TranscribeOptions)        Whisper's retry ladder
The strategies follow openai/whisper's decoding: greedy (temperature 0), sampling
with best-of (temperature > 0), and beam search with patience.
"""
from __future__ import annotations

import zlib
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

    def prefill(self, cross, options: DecodingOptions, batch: int) -> Prefill:
        """Run the initial tokens for `batch` rows: the state every strategy starts from."""
        initial, sot_index = self.initial_tokens(options)
        one = self.session.new_cache(1)                                            # every row starts the same:
        logits = self.session.step(np.array([initial], np.int64), one, cross, logits_from=sot_index)   # run it once
        cache = self.session.widen(one, batch)
        tokens = np.tile(np.array(initial, np.int64), (batch, 1))                  # (batch, n_initial)
        logits = np.repeat(logits, batch, axis=0)                                  # rows sot_index.. only
        return Prefill(len(initial), self.filters(options, len(initial)), self.sample_limit(options, len(initial)),
                       cache, tokens, logits, float(no_speech_probs(self, logits[:1, 0])[0]))

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
        if options.temperature == 0 and options.beam_size:
            return BeamSearch(self, options).run(cross)
        return Sampler(self, options).run(cross)

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
                   best_of=(options.best_of or BEST_OF) if temperature > 0 else None)


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
    tokens: np.ndarray       # (batch, n_initial)
    logits: np.ndarray       # (batch, n_initial - sot_index, vocab): from <|startoftranscript|> on
    no_speech: float         # probability of <|nospeech|> at <|startoftranscript|>


def no_speech_probs(wd: WindowDecoder, sot_logits: np.ndarray) -> np.ndarray:
    """P(<|nospeech|>) at <|startoftranscript|> of each row; sot_logits (n, vocab)."""
    if wd.tokenizer.no_speech is None:
        return np.zeros(len(sot_logits))
    return np.exp(log_softmax(sot_logits.astype(np.float32))[:, wd.tokenizer.no_speech])


def until_end(sampled: np.ndarray, eot: int) -> list[list[int]]:
    """Each row of sampled tokens (n, steps) up to its <|endoftext|>."""
    rows = [[int(t) for t in row] for row in sampled]
    return [row[:row.index(eot)] if eot in row else row for row in rows]


class Sampler:
    """Greedy (temperature 0) or best-of-N sampling (temperature > 0)."""

    def __init__(self, wd: WindowDecoder, options: DecodingOptions):
        self.wd, self.options = wd, options
        self.n = (options.best_of or 1) if options.temperature > 0 else 1
        self.rng = np.random.default_rng(options.seed)

    def run(self, cross) -> DecodingResult:
        start = self.wd.prefill(cross, self.options, self.n)
        tokens, sum_logprob = sample_rows(self.wd, cross, start, self._choose)
        return self._best(tokens[:, start.n_initial:], sum_logprob, start.no_speech)

    def _choose(self, last: np.ndarray) -> np.ndarray:
        """Each row's next token from its filtered logits (n, V)."""
        if self.options.temperature == 0:
            return last.argmax(axis=-1)
        p = np.exp(log_softmax(last / self.options.temperature))
        return np.array([self.rng.choice(p.shape[1], p=row / row.sum()) for row in p])

    def _best(self, sampled, sum_logprob, no_speech) -> DecodingResult:
        seqs = until_end(sampled, self.wd.tokenizer.eot)
        scores = [_rank_score(s, len(seq), self.options.length_penalty) for s, seq in zip(sum_logprob, seqs)]
        k = int(np.argmax(scores))
        return self.wd.finish(seqs[k], float(sum_logprob[k]), no_speech, self.options)


def sample_rows(wd: WindowDecoder, cross, start: Prefill, choose) -> tuple[np.ndarray, np.ndarray]:
    """Token by token from `start`, each row's next token `choose(filtered logits (n, V))`, until every
    row has ended (a row that has ended repeats <|endoftext|>): (tokens (n, n_initial + steps), the sum
    of each row's sampled log-probabilities)."""
    cache, tokens, logits = start.cache, start.tokens, start.logits
    n, eot = len(tokens), wd.tokenizer.eot
    sum_logprob, done = np.zeros(n), np.zeros(n, bool)
    for _ in range(start.limit):
        last = logits[:, -1].astype(np.float32)        # a copy: the filters write into it
        for f in start.filters:
            f.apply(last, tokens)
        nxt = np.where(done, eot, choose(last))
        sum_logprob += np.where(done, 0.0, log_softmax(last)[np.arange(n), nxt])
        done |= nxt == eot
        tokens = np.concatenate([tokens, nxt[:, None]], axis=1)
        if done.all() or cache.length >= wd.n_ctx:
            break
        logits = wd.session.step(nxt[:, None], cache, cross)
    return tokens, sum_logprob


def _rank_score(sum_logprob: float, length: int, length_penalty: float | None) -> float:
    penalty = length if length_penalty is None else ((5 + length) / 6) ** length_penalty
    return sum_logprob / max(penalty, 1e-9)


class BeamSearch:
    """Beam search over `beam_size` hypotheses, stopping once beam_size x patience have finished."""

    def __init__(self, wd: WindowDecoder, options: DecodingOptions):
        self.wd, self.options = wd, options

    def run(self, cross) -> DecodingResult:
        wd, opt, beams = self.wd, self.options, self.options.beam_size
        eot = wd.tokenizer.eot
        start = wd.prefill(cross, opt, beams)
        cache, tokens, logits, n_initial = start.cache, start.tokens, start.logits, start.n_initial
        scores = np.zeros(beams)
        scores[1:] = NEG_INF                    # all beams start identical: expand only the first
        finished: dict[tuple, float] = {}
        max_finished = round(beams * opt.patience)
        for _ in range(start.limit):
            last = logits[:, -1].astype(np.float32)        # a copy: the filters write into it
            for f in start.filters:
                f.apply(last, tokens)
            cand = scores[:, None] + log_softmax(last)                       # (beams, V)
            order = np.argsort(cand, axis=None)[::-1]
            keep_rows, keep_tokens, keep_scores = [], [], []
            for flat in order[:2 * beams + 1]:
                row, token = divmod(int(flat), cand.shape[1])
                if not np.isfinite(cand[row, token]):
                    break
                seq = tuple(tokens[row, n_initial:].tolist()) + (token,)
                if token == eot:
                    finished.setdefault(seq[:-1], float(cand[row, token]))
                else:
                    keep_rows.append(row)
                    keep_tokens.append(token)
                    keep_scores.append(cand[row, token])
                if len(keep_rows) == beams:
                    break
            if len(finished) >= max_finished or not keep_rows or cache.length >= wd.n_ctx:
                break
            while len(keep_rows) < beams:       # too few live candidates: pad with dead copies
                keep_rows.append(keep_rows[0])
                keep_tokens.append(keep_tokens[0])
                keep_scores.append(NEG_INF)
            cache.reorder(keep_rows)
            tokens = np.concatenate([tokens[keep_rows], np.array(keep_tokens)[:, None]], axis=1)
            scores = np.array(keep_scores)
            logits = wd.session.step(np.array(keep_tokens)[:, None], cache, cross)
        if not finished:                        # out of room: take the live beams as they are
            finished = {tuple(tokens[r, n_initial:].tolist()): float(scores[r]) for r in range(len(tokens))}
        best = max(finished, key=lambda s: _rank_score(finished[s], len(s), opt.length_penalty))
        return wd.finish(list(best), finished[best], start.no_speech, opt)
