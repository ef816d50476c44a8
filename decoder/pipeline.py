"""Transcribing audio of any length: Whisper's seek loop over 30 s windows.

Each window: log-mel → encoder graph (which also computes the decoder's cross-
attention K/V on the encoder's backend) → decoding with temperature fallback →
segments cut at timestamp tokens. The next window starts where the last complete
segment ended, so no speech is cut in half. Audio is read window by window.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, replace

import numpy as np

from decoder.decoding import DecodingOptions, DecodingResult, WindowDecoder
from decoder.tokenizer import TIME_PRECISION
from encoder.dims import HOP_LENGTH, N_FRAMES, N_SAMPLES, SAMPLE_RATE
from encoder.errors import AmanuensisError

INPUT_STRIDE = 2       # mel frames per timestamp step (0.02 s)
# A window is silence when Whisper's rule says so (no-speech probability above the threshold
# and average log-probability below its threshold), or when the no-speech probability alone is
# this high: an all-zero window scores 0.95 with a confident " you", while on the 18 real speech
# clips of ../shared/speech the highest is 0.044 (measured 2026-11-24, tiny.en).
NO_SPEECH_CERTAIN = 0.9
# Windows quieter than this RMS (-80 dBFS) are skipped without running the model at all.
SILENCE_RMS = 1e-4
# No word fits in less than this; shorter inputs are refused, shorter trailing fragments skipped.
MIN_SECONDS = 0.1


@dataclass(frozen=True)
class TranscribeOptions:
    decoding: DecodingOptions = DecodingOptions()
    condition_on_previous_text: bool = True
    initial_prompt: str | None = None
    temperatures: tuple = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
    compression_ratio_threshold: float | None = 2.4
    logprob_threshold: float | None = -1.0
    no_speech_threshold: float | None = 0.6
    word_timestamps: bool = False


def cross_attention_inputs(tensors: dict, n_layers: int, n_head: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Split each cross_kv.i (T, 2D) into K and V shaped (1, H, T, d_head) for the decoder."""
    out = []
    for i in range(n_layers):
        kv = tensors[f"cross_kv.{i}"]
        t, two_d = kv.shape
        heads = kv.reshape(t, 2, n_head, two_d // 2 // n_head).transpose(1, 2, 0, 3)   # (2, H, T, d_head)
        out.append((np.ascontiguousarray(heads[0])[None], np.ascontiguousarray(heads[1])[None]))
    return out


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
    """Binds an encoder model (graph + backend) to the ONNX decoder and tokenizer."""

    def __init__(self, model):
        from decoder.session import DecoderSession
        from decoder.tokenizer import WhisperTokenizer

        self.model = model
        conv = model.converted
        self.tokenizer = WhisperTokenizer(conv.path / "tokenizer.json", model.dims.is_multilingual)
        self.session = DecoderSession(model.decoder_path, model.dims)
        suppress = conv.config.get("suppress_tokens") or conv.generation_config.get("suppress_tokens") or []
        self.decoder = WindowDecoder(self.session, self.tokenizer, [t for t in suppress if t >= 0])
        self.alignment_heads = [tuple(h) for h in conv.generation_config.get("alignment_heads") or []]

    def check_options(self, options: TranscribeOptions) -> None:
        """Fail before any work on options this model cannot honour."""
        d = options.decoding
        if d.task not in ("transcribe", "translate"):
            raise AmanuensisError(f"unknown task {d.task!r} (transcribe or translate)")
        if d.beam_size is not None and d.beam_size < 1:
            raise AmanuensisError(f"--beam-size must be at least 1, got {d.beam_size}")
        if d.language is not None:
            if not self.tokenizer.multilingual and d.language != "en":
                raise AmanuensisError(f"language {d.language!r}: this model is English-only")
            if self.tokenizer.multilingual:
                self.tokenizer.language_token(d.language)
        if d.task == "translate" and not self.tokenizer.multilingual:
            raise AmanuensisError("--task translate needs a multilingual model")

    def encode_window(self, samples: np.ndarray):
        """(cross-attention inputs bound for the decoder, encoder run result) of one window."""
        result = self.model.encode_with_cross(self.model.mel(samples))
        dims = self.model.dims
        cross = cross_attention_inputs(result.tensors, dims.n_text_layer, dims.n_text_head)
        return self.session.bind_cross(cross), result

    def transcribe(self, audio, options: TranscribeOptions = TranscribeOptions(), progress: bool = False) -> dict:
        """Transcribe a path (streamed) or 16 kHz samples; returns text, segments, language, provenance."""
        from encoder.audio import AudioStream, as_samples

        self.check_options(options)
        if isinstance(audio, (str, bytes)) or hasattr(audio, "__fspath__"):
            stream = AudioStream(audio)
            duration, window, name = stream.duration, stream.window, str(audio)
        else:
            samples = as_samples(audio)
            duration, window, name = len(samples) / SAMPLE_RATE, lambda a, n: samples[a:a + n], "audio"
        # The whole loop inside one backend session: a BLAS call of the mel or the decoding between
        # windows would otherwise wake BLAS's own threads, which then spin on the cores the next
        # window's encoder needs (measured: +46 ms on each 30 s window's encoder, 180 -> 226 ms).
        with self.model.backend.session():
            return _SeekLoop(self, options, window, duration, progress, name).run()


class _SeekLoop:
    """State of one transcription: position, segments, prompt, provenance."""

    def __init__(self, tr: Transcriber, options: TranscribeOptions, window, duration: float, progress: bool,
                 name: str = "audio"):
        self.tr, self.options, self.window, self.name = tr, options, window, name
        self.progress = Progress(duration, progress)
        self.segments, self.all_tokens, self.prompt_reset = [], [], 0
        self.duration = 0.0                     # seconds of audio seen, measured while reading
        self.profiles, self.language = [], options.decoding.language
        if options.initial_prompt:
            self.all_tokens = tr.tokenizer.encode(" " + options.initial_prompt.strip())

    def run(self) -> dict:
        tok = self.tr.tokenizer
        seek, started = 0, time.perf_counter()
        while True:
            samples = self.window(seek * HOP_LENGTH, N_SAMPLES)
            if len(samples) < MIN_SECONDS * SAMPLE_RATE:
                if seek == 0:
                    raise AmanuensisError(f"{self.name}: {len(samples) / SAMPLE_RATE:.3f} s long, too short to "
                                          f"hold speech (at least {MIN_SECONDS} s is needed)")
                break
            frames = min(N_FRAMES, -(-len(samples) // HOP_LENGTH))
            self.duration = max(self.duration, (seek * HOP_LENGTH + len(samples)) / SAMPLE_RATE)
            if np.sqrt(np.mean(np.square(samples, dtype=np.float64))) < SILENCE_RMS:
                seek += frames
                self.progress.update(seek * HOP_LENGTH / SAMPLE_RATE)
                continue
            cross, run = self.tr.encode_window(samples)
            self.profiles.append(run.profile())
            if self.language is None:
                self.language = self.tr.decoder.detect_language(cross)[0]
            result = self._decode(cross)
            offset = seek * HOP_LENGTH / SAMPLE_RATE
            if self._is_silence(result):
                seek += frames
            else:
                pieces, consumed = _segments(result.tokens, tok.timestamp_begin, offset, frames)
                self._add(pieces, result, seek)
                if self.options.word_timestamps:
                    self._add_words(cross, pieces, offset, frames, samples)
                seek += max(consumed, 1)
            self.progress.update(seek * HOP_LENGTH / SAMPLE_RATE)
        self.progress.close()
        return {"text": "".join(s["text"] for s in self.segments), "segments": self.segments,
                "language": self.language, "duration": round(self.duration, 3),
                "processing_seconds": round(time.perf_counter() - started, 3), "encoder_profile": self.profiles}

    def _add_words(self, cross, pieces, offset: float, frames: int, samples) -> None:
        """Word timings for this window's segments (those just added); segments then span their words."""
        from decoder.timing import clamp_long_words, speech_onset, word_timings

        tok = self.tr.tokenizer
        text = [t for _, _, tokens in pieces for t in tokens]
        sot = tok.sot_sequence(self.language, self.options.decoding.task)
        words = word_timings(self.tr.decoder, cross, sot, text, frames)
        added = [s for s in self.segments if s["seek"] == self.segments[-1]["seek"]] if self.segments else []
        groups, queue = [], list(words)
        for seg in added:
            taken = []
            while queue and sum(len(w.tokens) for w in taken) < len(seg["tokens"]):
                taken.append(queue.pop(0))
            groups.append(taken)
        firsts = {sum(len(g) for g in groups[:i]) for i in range(len(groups))}
        clamp_long_words(words, firsts)
        for k in firsts & set(range(len(words))):       # a segment's first word cannot start in silence
            words[k].start = min(speech_onset(samples, words[k].start, words[k].end), words[k].end)
        for seg, taken in zip(added, groups):
            seg["words"] = [{"word": w.word, "start": round(offset + w.start, 3), "end": round(offset + w.end, 3),
                             "probability": round(w.probability, 4)} for w in taken]
            if seg["words"]:
                seg["start"], seg["end"] = seg["words"][0]["start"], seg["words"][-1]["end"]

    def _decode(self, cross) -> DecodingResult:
        o = self.options
        prompt = tuple(self.all_tokens[self.prompt_reset:]) if o.condition_on_previous_text or \
            (o.initial_prompt and self.prompt_reset == 0) else ()
        decoding = replace(o.decoding, language=self.language, prompt=prompt)
        return self.tr.decoder.decode_with_fallback(cross, decoding, o.temperatures, o.compression_ratio_threshold,
                                                    o.logprob_threshold, o.no_speech_threshold)

    def _is_silence(self, r: DecodingResult) -> bool:
        o = self.options
        if o.no_speech_threshold is None or r.no_speech_prob <= o.no_speech_threshold:
            return False
        return r.no_speech_prob > NO_SPEECH_CERTAIN or o.logprob_threshold is None or \
            r.avg_logprob < o.logprob_threshold

    def _add(self, pieces, result: DecodingResult, seek: int) -> None:
        tok = self.tr.tokenizer
        for start, end, tokens in pieces:
            text = tok.decode(tokens)
            if not text.strip():
                continue
            self.segments.append({
                "id": len(self.segments), "seek": seek, "start": round(start, 3), "end": round(end, 3),
                "text": text, "tokens": tokens, "temperature": result.temperature,
                "avg_logprob": result.avg_logprob, "compression_ratio": result.compression_ratio,
                "no_speech_prob": result.no_speech_prob})
        self.all_tokens.extend(result.tokens)
        if not self.options.condition_on_previous_text or result.temperature > 0.5:
            self.prompt_reset = len(self.all_tokens)
