"""Transcribing audio of any length: Whisper's seek loop over 30 s windows.

Each window: log-mel → encoder graph (which also computes the decoder's cross-attention K/V on
the encoder's backend) → decoding with temperature fallback → segments cut at timestamp tokens.
The next window starts where the last complete segment ended, so no speech is cut in half.
Audio is read window by window, so memory does not grow with the file's length.
"""
from __future__ import annotations

import itertools
import math
import sys
import time
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import replace
from typing import NamedTuple

import numpy as np

from decoder.decoding import DecodingResult, WindowDecoder, is_silence
from decoder.options import DecodingOptions, TranscribeOptions
from decoder.session import DecoderSession
from decoder.timing import clamp_long_words, speech_onset, word_timings
from decoder.tokenizer import WhisperTokenizer
from encoder.audio import AudioStream, as_samples
from encoder.batching import DecodeAsk, Reply, run_together
from encoder.network import cross_kv_output
from encoder.results import Provenance, Segment, Transcription, Word
from encoder.vad import FRAME, SileroVad, VadOptions, speech_chunks, speech_regions
from kernels.errors import AmanuensisError, BadAudio, BadOption
from kernels.frontend import HOP_LENGTH, INPUT_STRIDE, N_FRAMES, N_SAMPLES, SAMPLE_RATE, TIME_PRECISION
from kernels.runner import Profile, RunResult

# Windows quieter than this RMS (-80 dBFS) are skipped without running the model at all.
SILENCE_RMS = 1e-4
# No word fits in less than this; shorter inputs are refused, shorter trailing fragments skipped.
MIN_SECONDS = 0.1


class Progress:
    """A one-line progress bar over audio time on stderr (only on a terminal)."""

    def __init__(self, total: float, enabled: bool):
        self.total, self.enabled = total, enabled and sys.stderr.isatty()

    def update(self, done: float) -> None:
        if self.enabled:
            frac = min(1.0, done / self.total) if self.total else 0.0
            bar = "#" * int(30 * frac)
            print(f"\r[{bar:30}] {done:7.1f}/{self.total:.1f} s", end="", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.enabled:
            print(file=sys.stderr)


def _segments(tokens: list[int], begin: int, offset: float, window_frames: int) -> tuple[list[tuple], int]:
    """Cut sampled tokens at timestamp pairs: ([(start s, end s, text tokens)], mel frames consumed)."""
    is_ts = [t >= begin for t in tokens]
    single_end = len(tokens) >= 2 and not is_ts[-2] and is_ts[-1]
    cuts = [i for i in range(1, len(tokens)) if is_ts[i] and is_ts[i - 1]]
    segs = []
    if cuts:
        bounds = cuts + ([len(tokens)] if single_end else [])
        last = 0
        for cut in bounds:
            piece = tokens[last:cut]
            start, end = (piece[0] - begin) * TIME_PRECISION, (piece[-1] - begin) * TIME_PRECISION
            segs.append((offset + start, offset + end, [t for t in piece if t < begin]))
            last = cut
        if single_end:
            return segs, window_frames
        return segs, (tokens[last - 1] - begin) * INPUT_STRIDE
    stamps = [t for t in tokens if t >= begin]
    duration = window_frames * HOP_LENGTH / SAMPLE_RATE
    if stamps and stamps[-1] != begin:
        duration = (stamps[-1] - begin) * TIME_PRECISION
    return [(offset, offset + duration, [t for t in tokens if t < begin])], window_frames


class Job(NamedTuple):
    """One transcription for Transcriber.transcribe_many."""
    audio: object                                  # a path or 16 kHz samples
    options: TranscribeOptions | None = None
    # called on the transcribing thread with the segments that are final, in order, as they become
    # so (at least once per window); an AmanuensisError it raises ends this transcription alone
    on_segments: Callable[[list[Segment]], None] | None = None


class Transcriber:
    """Binds a model's encoder (graph + backend) to the ONNX decoder and the tokenizer."""

    def __init__(self, model):
        self.model = model
        conv = model.converted
        self.tokenizer = WhisperTokenizer(conv.path / "tokenizer.json", model.dims.is_multilingual)
        self.session = DecoderSession(model.decoder_path, model.dims)
        suppress = conv.config.get("suppress_tokens") or conv.generation_config.get("suppress_tokens") or []
        self.decoder = WindowDecoder(self.session, self.tokenizer, [t for t in suppress if t >= 0])
        self._vad = None

    def check_options(self, options: TranscribeOptions) -> TranscribeOptions:
        """`options` as this model takes them (the language as its code); BadOption for one it cannot
        honour, before any work."""
        d = options.decoding
        if d.task == "translate" and not self.tokenizer.multilingual:
            raise BadOption("task", "--task translate needs a multilingual model")
        if d.language is None:
            return options
        return replace(options, decoding=replace(d, language=self.tokenizer.check_language(d.language)))

    def cross_kv(self, samples: np.ndarray) -> tuple[list[np.ndarray], RunResult]:
        """(the window's cross-attention [K | V] per decoder layer, its encoder run)."""
        result = self.model.encode_with_cross(samples)
        return [result.tensors[cross_kv_output(i)] for i in range(self.model.dims.n_text_layer)], result

    def encode_window(self, samples: np.ndarray) -> tuple[list, RunResult]:
        """(cross-attention inputs bound for the decoder, encoder run) of one window."""
        kv, result = self.cross_kv(samples)
        return self.session.bind_cross(kv), result

    @property
    def vad(self) -> SileroVad:
        """The voice activity detector, loaded on first use."""
        if self._vad is None:
            self._vad = SileroVad()
        return self._vad

    def transcribe(self, audio, options: TranscribeOptions | None = None, progress: bool = False) -> Transcription:
        """Transcribe a path (streamed) or 16 kHz samples."""
        ((_, result),) = self.transcribe_many([(audio, options)], progress=progress)
        if isinstance(result, AmanuensisError):
            raise result
        return result

    def transcribe_many(self, jobs: Iterable, batch_size: int | None = None,
                        progress: bool = False) -> Iterator[tuple[int, Transcription | AmanuensisError]]:
        """Transcribe Jobs (or (audio, options) pairs) together: `batch_size` of them at a time (default:
        the first one's options.batch_size), their windows decoded in batches of as many rows. Yields
        (index, the Transcription or the AmanuensisError that stopped it) as each one finishes. Audio is
        a path or 16 kHz samples; each is opened when its turn comes."""
        jobs = (Job(*job) for job in jobs)
        first = next(jobs, None)
        if first is None:
            return
        size = batch_size or (first.options or TranscribeOptions()).batch_size
        loops = (self._steps(job, progress) for job in itertools.chain([first], jobs))
        # Every loop inside one backend session: a BLAS call of the decoding between windows would
        # otherwise wake BLAS's own threads, which then spin on the cores the next window's encoder
        # needs (measured: +46 ms on each 30 s window's encoder, 180 -> 226 ms).
        with self.model.backend.session():
            yield from run_together(self.decoder, self.session, loops, size)

    def _steps(self, job: Job, progress: bool):
        """The loop's steps; a problem found on opening ends it at once (as its result)."""
        loop = self._loop(job.audio, job.options, progress)
        loop.listener = job.on_segments
        return (yield from loop.steps())

    def _loop(self, audio, options: TranscribeOptions | None, progress: bool) -> _Loop:
        options = self.check_options(options or TranscribeOptions())
        if isinstance(audio, (str, bytes)) or hasattr(audio, "__fspath__"):
            opened = [AudioStream(audio)]                   # probed once: the first pass reads it
            duration, name = opened[0].duration, str(audio)

            def reader():
                return (opened.pop() if opened else AudioStream(audio)).window
        else:
            samples = as_samples(audio)
            duration, name = len(samples) / SAMPLE_RATE, "audio"

            def reader():
                return lambda a, n: samples[max(a, 0):a + n]
        return (_VadLoop if options.vad else _SeekLoop)(self, options, reader, duration, progress, name)


class _Loop:
    """State of one transcription: segments, language, profile, progress."""

    def __init__(self, tr: Transcriber, options: TranscribeOptions, reader, duration: float, progress: bool,
                 name: str = "audio"):
        self.tr, self.options, self.reader, self.name = tr, options, reader, name
        self.progress = Progress(duration, progress)
        self.segments: list[Segment] = []
        self.duration = 0.0                     # seconds of audio seen, measured while reading
        self.profile, self.language = Profile(), options.decoding.language
        self.started = time.perf_counter()
        self.listener = None                    # Job.on_segments
        self.published = 0                      # segments handed to it
        self.decoded: dict[int, tuple[int, ...]] = {}   # each decoded window's tokens, by its first mel frame

    def _publish(self, before: float = math.inf) -> None:
        """Hand the listener the segments not handed yet that start before `before` (no later segment
        can start earlier), in order."""
        if self.listener is None:
            return
        ready = sorted((s for s in self.segments[self.published:] if s.start < before), key=lambda s: s.start)
        self.segments[self.published:] = ready + [s for s in self.segments[self.published:] if s.start >= before]
        self.published += len(ready)
        self.listener(ready)

    def _too_short(self, n_samples: int) -> BadAudio:
        return BadAudio(f"{self.name}: {n_samples / SAMPLE_RATE:.3f} s long, too short to hold speech "
                        f"(at least {MIN_SECONDS} s is needed)")

    def _result(self) -> Transcription:
        self.progress.close()
        return Transcription("".join(s.text for s in self.segments), self.segments, self.language,
                             round(self.duration, 3), round(time.perf_counter() - self.started, 3),
                             Provenance.of(self.tr.model, self.profile), self.profile, self.decoded)

    def _encode(self, samples: np.ndarray) -> list[np.ndarray]:
        """The window's cross-attention [K | V] per decoder layer; its encoder run is profiled."""
        kv, run = self.tr.cross_kv(samples)
        self.profile.add(run)
        return kv

    def _window_kv(self, samples: np.ndarray):
        """The window's cross-attention K/V for its ask: a function that the scheduler calls when it binds
        the window, so one encoder output is alive at a time and the next one reuses its memory (fresh pages
        cost several µs each on the VMs measured: 8 outputs held at once cost the 18 real clips in batches of
        8 5.09 s against 4.35 s, 2026-12-03). Encoded at once when the language is detected from this window."""
        if self.language is None and self.tr.tokenizer.multilingual:
            kv = self._encode(samples)
            self.language = self.tr.decoder.detect_language(self.tr.session.bind_cross(kv))[0]
            return kv
        if self.language is None:                   # an English-only model answers "en" without a window
            self.language = self.tr.decoder.detect_language(None)[0]
        return lambda: self._encode(samples)

    def _transcribed(self, result: DecodingResult, cross, samples: np.ndarray, seek: int, frames: int) -> int:
        """Add a window's decoding as segments (and words); returns the mel frames it consumed."""
        self.decoded[seek] = tuple(result.tokens)
        if is_silence(result, self.options):
            return frames
        offset = seek * HOP_LENGTH / SAMPLE_RATE
        pieces, consumed = _segments(result.tokens, self.tr.tokenizer.timestamp_begin, offset, frames)
        added = self._add(pieces, result, seek)
        if self.options.word_timestamps:
            self._add_words(cross, pieces, added, offset, frames, samples)
        return max(consumed, 1)

    def _add(self, pieces, result: DecodingResult, seek: int) -> list[Segment]:
        """Segments of this window's pieces that hold text, appended; returns them."""
        tok, added = self.tr.tokenizer, []
        for start, end, tokens in pieces:
            text = tok.decode(tokens)
            if not text.strip():
                continue
            added.append(Segment(len(self.segments) + len(added), seek, round(start, 3), round(end, 3), text, tokens,
                                 result.temperature, result.avg_logprob, result.compression_ratio,
                                 result.no_speech_prob))
        self.segments += added
        return added

    def _add_words(self, cross, pieces, added: list[Segment], offset: float, frames: int, samples) -> None:
        """Word timings for this window's segments; each segment then spans its words."""
        tok = self.tr.tokenizer
        text = [t for _, _, tokens in pieces for t in tokens]
        sot = tok.sot_sequence(self.language, self.options.decoding.task)
        words = word_timings(self.tr.decoder, cross, sot, text, frames)
        groups, queue = [], list(words)
        for seg in added:
            taken = []
            while queue and sum(len(w.tokens) for w in taken) < len(seg.tokens):
                taken.append(queue.pop(0))
            groups.append(taken)
        firsts = {sum(len(g) for g in groups[:i]) for i in range(len(groups))}
        clamp_long_words(words, firsts)
        for k in firsts & set(range(len(words))):       # a segment's first word cannot start in silence
            words[k].start = min(speech_onset(samples, words[k].start, words[k].end), words[k].end)
        for seg, taken in zip(added, groups):
            seg.words = [Word(w.word, round(offset + w.start, 3), round(offset + w.end, 3), round(w.probability, 4))
                         for w in taken]
            if seg.words:
                seg.start, seg.end = seg.words[0].start, seg.words[-1].end


def _silent(samples: np.ndarray) -> bool:
    return np.sqrt(np.mean(np.square(samples, dtype=np.float64))) < SILENCE_RMS


class _SeekLoop(_Loop):
    """Whisper's loop: each window starts where the last one's last complete segment ended, prompted
    with the text so far."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.window = self.reader()
        self.all_tokens: list[int] = []
        self.prompt_reset = 0
        if self.options.initial_prompt:
            self.all_tokens = self.tr.tokenizer.encode(" " + self.options.initial_prompt.strip())

    def steps(self) -> Generator[DecodeAsk, Reply, Transcription]:
        """The loop, asking for each window's decoding (see encoder.batching)."""
        seek = 0
        while True:
            samples = self.window(seek * HOP_LENGTH, N_SAMPLES)
            if len(samples) < MIN_SECONDS * SAMPLE_RATE:
                if seek == 0:
                    raise self._too_short(len(samples))
                break
            frames = min(N_FRAMES, -(-len(samples) // HOP_LENGTH))
            self.duration = max(self.duration, (seek * HOP_LENGTH + len(samples)) / SAMPLE_RATE)
            if _silent(samples):
                seek += frames
            else:
                ask = DecodeAsk([self._window_kv(samples)], self._decoding(first=seek == 0), self.options)
                ((result, cross),) = yield ask      # the scheduler frees the window's K/V once bound
                seek += self._transcribed(result, cross, samples, seek, frames)
            self.progress.update(seek * HOP_LENGTH / SAMPLE_RATE)
            self._publish()
        return self._result()

    def _decoding(self, first: bool) -> DecodingOptions:
        o = self.options
        prompt = tuple(self.all_tokens[self.prompt_reset:]) if o.condition_on_previous_text or \
            (o.initial_prompt and self.prompt_reset == 0) else ()
        return replace(o.decoding, language=self.language, prompt=prompt, draft=o.decoding.draft if first else ())

    def _add(self, pieces, result: DecodingResult, seek: int) -> list[Segment]:
        added = super()._add(pieces, result, seek)
        self.all_tokens.extend(result.tokens)
        if not self.options.condition_on_previous_text or result.temperature > 0.5:
            self.prompt_reset = len(self.all_tokens)
        return added


class _Piece(NamedTuple):
    """Audio of a VAD chunk still to decode: the chunk, or the rest of it after a decoding that stopped early."""
    start: int                          # first sample, in the file
    samples: np.ndarray
    prompt: tuple[int, ...]             # the initial prompt; for a rest, its chunk's text so far too


class _VadLoop(_Loop):
    """The speech that voice activity detection finds, in chunks of at most 30 s, decoded in batches.

    Chunks are independent: no chunk is prompted with another's text (the initial prompt, if any,
    prompts every chunk). A chunk whose decoding stops before its end, or ends while the VAD hears
    more speech (see _heard), has the rest transcribed as a window of its own, prompted with the
    chunk's text so far, as the seek loop would."""

    def steps(self) -> Generator[DecodeAsk, Reply, Transcription]:
        """The loop, asking for each batch of chunks' decoding (see encoder.batching)."""
        scores = self.tr.vad.scores(self.reader())
        self.duration = scores.n_samples / SAMPLE_RATE
        if scores.n_samples < MIN_SECONDS * SAMPLE_RATE:
            raise self._too_short(scores.n_samples)
        vad = VadOptions()
        chunks = speech_chunks(speech_regions(scores.probs, scores.n_samples, vad), scores.probs, vad)
        window, size, rest, done = self.reader(), self.options.batch_size, [], 0
        initial = self._prompt()                                            # every chunk's, encoded once
        while done < len(chunks) or rest:
            take = chunks[done:done + max(size - len(rest), 0)]              # rests go first, with new chunks
            pieces = rest + [_Piece(a, window(a, b - a), initial) for a, b in take]
            rest = yield from self._round(pieces, scores.probs, vad)
            done += len(take)
            self.progress.update(chunks[done - 1][1] / SAMPLE_RATE if done else 0.0)
            self._publish(min([p.start for p in rest] + [a for a, _ in chunks[done:done + 1]], default=math.inf)
                          / SAMPLE_RATE)
        self.segments.sort(key=lambda seg: seg.start)
        for i, seg in enumerate(self.segments):
            seg.id = i
        return self._result()

    def _round(self, pending: list[_Piece], probs: np.ndarray,
               vad: VadOptions) -> Generator[DecodeAsk, Reply, list[_Piece]]:
        """Decode the pieces as one ask; returns the rests still to do. (probs: the VAD's, of the file)"""
        pending = [p for p in pending if len(p.samples) >= MIN_SECONDS * SAMPLE_RATE and not _silent(p.samples)]
        if not pending:
            return []
        kv = [self._window_kv(p.samples) for p in pending]
        decoding = replace(self.options.decoding, language=self.language, prompt=(), draft=())
        reply = yield DecodeAsk(kv, decoding, self.options, [p.prompt for p in pending])  # kv emptied as bound
        rest = []
        for piece, (result, row) in zip(pending, reply):
            seek, frames = piece.start // HOP_LENGTH, -(-len(piece.samples) // HOP_LENGTH)
            consumed = self._transcribed(result, row, piece.samples, seek, frames)
            if consumed == frames and not is_silence(result, self.options):
                consumed = self._heard(piece, result, frames, probs, vad)
            if consumed < frames:
                rest.append(_Piece(piece.start + consumed * HOP_LENGTH, piece.samples[consumed * HOP_LENGTH:],
                                   self._rest_prompt(piece, result)))
        return rest

    def _heard(self, piece: _Piece, result: DecodingResult, frames: int, probs: np.ndarray,
               vad: VadOptions) -> int:
        """The mel frames of the piece that its decoding covers: all of them, unless the decoding's last
        timestamp is at least vad.left_out seconds from both of the piece's ends and the VAD hears as
        much speech after it. Whisper sometimes ends a window early and calls the rest done (whole clips
        of the real ones joined went missing); that rest is decoded as a window of its own, as the rest
        of a decoding that stops short is. (A timestamp in the first second is not taken: the rest would
        be nearly the same window again.)"""
        begin, left_out = self.tr.tokenizer.timestamp_begin, round(vad.left_out * SAMPLE_RATE)
        stamps = [t - begin for t in result.tokens if t >= begin]
        last = stamps[-1] * INPUT_STRIDE if stamps else frames                   # mel frames
        if not left_out <= last * HOP_LENGTH <= len(piece.samples) - left_out:
            return frames
        after = probs[(piece.start + last * HOP_LENGTH) // FRAME:(piece.start + len(piece.samples)) // FRAME]
        return last if np.count_nonzero(after >= vad.threshold) * FRAME >= left_out else frames

    def _rest_prompt(self, piece: _Piece, result: DecodingResult) -> tuple[int, ...]:
        """A rest's prompt, by the seek loop's rule: the chunk's prompt and all its tokens so far, unless
        conditioning is off or the decoding needed a high temperature (then the initial prompt alone,
        which prompts every chunk). All the tokens, the unfinished last segment's too, as the seek loop
        prompts: leaving that segment out, as openai-whisper does, measured worse in both loops
        (2026-12-04, the bench's variants: --vad 11.9% -> 12.2% and 4.7% -> 5.2%; sequential
        12.7% -> 14.3% and 5.4% -> 9.6%)."""
        if not self.options.condition_on_previous_text or result.temperature > 0.5:
            return self._prompt()
        return piece.prompt + tuple(result.tokens)

    def _prompt(self) -> tuple[int, ...]:
        text = self.options.initial_prompt
        return tuple(self.tr.tokenizer.encode(" " + text.strip())) if text else ()
