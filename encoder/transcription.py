"""Transcribing audio of any length: Whisper's seek loop over 30 s windows.

Each window: log-mel → encoder graph (which also computes the decoder's cross-attention K/V on
the encoder's backend) → decoding with temperature fallback → segments cut at timestamp tokens.
The next window starts where the last complete segment ended, so no speech is cut in half.
Audio is read window by window, so memory does not grow with the file's length.
"""
from __future__ import annotations

import sys
import time
from dataclasses import replace

import numpy as np

from decoder.decoding import DecodingResult, WindowDecoder, is_silence
from decoder.options import TranscribeOptions
from decoder.session import DecoderSession
from decoder.timing import clamp_long_words, speech_onset, word_timings
from decoder.tokenizer import WhisperTokenizer
from encoder.audio import AudioStream, as_samples
from encoder.network import cross_kv_output
from encoder.results import Provenance, Segment, Transcription, Word
from kernels.errors import BadAudio, BadOption
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


class Transcriber:
    """Binds a model's encoder (graph + backend) to the ONNX decoder and the tokenizer."""

    def __init__(self, model):
        self.model = model
        conv = model.converted
        self.tokenizer = WhisperTokenizer(conv.path / "tokenizer.json", model.dims.is_multilingual)
        self.session = DecoderSession(model.decoder_path, model.dims)
        suppress = conv.config.get("suppress_tokens") or conv.generation_config.get("suppress_tokens") or []
        self.decoder = WindowDecoder(self.session, self.tokenizer, [t for t in suppress if t >= 0])

    def check_options(self, options: TranscribeOptions) -> TranscribeOptions:
        """`options` as this model takes them (the language as its code); BadOption for one it cannot
        honour, before any work."""
        d = options.decoding
        if d.task == "translate" and not self.tokenizer.multilingual:
            raise BadOption("task", "--task translate needs a multilingual model")
        if d.language is None:
            return options
        return replace(options, decoding=replace(d, language=self.tokenizer.check_language(d.language)))

    def encode_window(self, samples: np.ndarray) -> tuple[list, RunResult]:
        """(cross-attention inputs bound for the decoder, encoder run) of one window."""
        result = self.model.encode_with_cross(samples)
        kv = [result.tensors[cross_kv_output(i)] for i in range(self.model.dims.n_text_layer)]
        return self.session.bind_cross(kv), result

    def transcribe(self, audio, options: TranscribeOptions | None = None, progress: bool = False) -> Transcription:
        """Transcribe a path (streamed) or 16 kHz samples."""
        options = self.check_options(options or TranscribeOptions())
        if isinstance(audio, (str, bytes)) or hasattr(audio, "__fspath__"):
            stream = AudioStream(audio)
            duration, window, name = stream.duration, stream.window, str(audio)
        else:
            samples = as_samples(audio)
            duration, window, name = len(samples) / SAMPLE_RATE, lambda a, n: samples[a:a + n], "audio"
        # The whole loop inside one backend session: a BLAS call of the decoding between windows
        # would otherwise wake BLAS's own threads, which then spin on the cores the next window's
        # encoder needs (measured: +46 ms on each 30 s window's encoder, 180 -> 226 ms).
        with self.model.backend.session():
            return _SeekLoop(self, options, window, duration, progress, name).run()


class _SeekLoop:
    """State of one transcription: position, segments, prompt, profile."""

    def __init__(self, tr: Transcriber, options: TranscribeOptions, window, duration: float, progress: bool,
                 name: str = "audio"):
        self.tr, self.options, self.window, self.name = tr, options, window, name
        self.progress = Progress(duration, progress)
        self.segments: list[Segment] = []
        self.all_tokens: list[int] = []
        self.prompt_reset = 0
        self.duration = 0.0                     # seconds of audio seen, measured while reading
        self.profile, self.language = Profile(), options.decoding.language
        if options.initial_prompt:
            self.all_tokens = tr.tokenizer.encode(" " + options.initial_prompt.strip())

    def run(self) -> Transcription:
        seek, started = 0, time.perf_counter()
        while True:
            samples = self.window(seek * HOP_LENGTH, N_SAMPLES)
            if len(samples) < MIN_SECONDS * SAMPLE_RATE:
                if seek == 0:
                    raise BadAudio(f"{self.name}: {len(samples) / SAMPLE_RATE:.3f} s long, too short to "
                                   f"hold speech (at least {MIN_SECONDS} s is needed)")
                break
            frames = min(N_FRAMES, -(-len(samples) // HOP_LENGTH))
            self.duration = max(self.duration, (seek * HOP_LENGTH + len(samples)) / SAMPLE_RATE)
            seek += self._window(samples, seek, frames)
            self.progress.update(seek * HOP_LENGTH / SAMPLE_RATE)
        self.progress.close()
        model = self.tr.model
        return Transcription("".join(s.text for s in self.segments), self.segments, self.language,
                             round(self.duration, 3), round(time.perf_counter() - started, 3),
                             Provenance.of(model, self.profile), self.profile)

    def _window(self, samples: np.ndarray, seek: int, frames: int) -> int:
        """Transcribe the window at mel frame `seek`; returns how many mel frames it consumed."""
        if np.sqrt(np.mean(np.square(samples, dtype=np.float64))) < SILENCE_RMS:
            return frames
        cross, run = self.tr.encode_window(samples)
        self.profile.add(run)
        if self.language is None:
            self.language = self.tr.decoder.detect_language(cross)[0]
        result = self._decode(cross)
        if is_silence(result, self.options):
            return frames
        offset = seek * HOP_LENGTH / SAMPLE_RATE
        pieces, consumed = _segments(result.tokens, self.tr.tokenizer.timestamp_begin, offset, frames)
        added = self._add(pieces, result, seek)
        if self.options.word_timestamps:
            self._add_words(cross, pieces, added, offset, frames, samples)
        return max(consumed, 1)

    def _decode(self, cross) -> DecodingResult:
        o = self.options
        prompt = tuple(self.all_tokens[self.prompt_reset:]) if o.condition_on_previous_text or \
            (o.initial_prompt and self.prompt_reset == 0) else ()
        decoding = replace(o.decoding, language=self.language, prompt=prompt)
        return self.tr.decoder.decode_with_fallback(cross, decoding, o)

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
        self.all_tokens.extend(result.tokens)
        if not self.options.condition_on_previous_text or result.temperature > 0.5:
            self.prompt_reset = len(self.all_tokens)
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
