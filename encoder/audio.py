"""Audio in, log-mel out: decoding, mono mix, 16 kHz resampling, 30 s windows, Whisper's log-mel.

Decoding uses soundfile for wav, flac, ogg and aiff (and files without a known
extension, falling back to PyAV), and PyAV for everything else (mp3, m4a, opus,
video containers, ...). Resampling uses soxr.
"""
from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path

import numpy as np

from encoder.dims import HOP_LENGTH, N_FFT, N_FRAMES, N_SAMPLES, SAMPLE_RATE
from encoder.errors import AmanuensisError, UndecodableAudio


SOUNDFILE_SUFFIXES = {".wav", ".wave", ".flac", ".ogg", ".oga", ".aiff", ".aif", ".aifc", ".w64", ".rf64", ".caf"}


def _soundfile_first(path: Path) -> bool:
    """soundfile for its own formats and unknown extensions; PyAV alone for the rest (mp3, m4a, ...)."""
    suffix = path.suffix.lower()
    return suffix in SOUNDFILE_SUFFIXES or not suffix


def _read_soundfile(path: Path):
    import soundfile

    try:
        data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)   # (samples, channels)
    except (RuntimeError, soundfile.LibsndfileError, TypeError, ValueError):
        return None
    return data.mean(axis=1), rate


def _quiet_av():
    """Import PyAV with libav's own log output limited to errors (we report problems ourselves)."""
    import logging

    import av

    av.logging.set_level(av.logging.ERROR)
    # PyAV forwards libav's errors to Python logging, whose last-resort handler prints them on
    # stderr; our UndecodableAudio message already carries libav's last error, so keep them quiet.
    logging.getLogger("libav").setLevel(logging.CRITICAL)
    return av


def _read_av(path: Path):
    blocks, rate = _av_chunks(path)
    parts = list(blocks)
    if not parts:
        raise UndecodableAudio(f"{path}: cannot decode audio (no audio frames found: not an audio file, or truncated)")
    return np.concatenate(parts), rate


def check_audio_file(path: Path) -> None:
    """Fail with a message naming the file if it is missing, not a file, or empty."""
    if not path.exists():
        raise AmanuensisError(f"{path}: file not found")
    if not path.is_file():
        raise AmanuensisError(f"{path}: not a file")
    if path.stat().st_size == 0:
        raise AmanuensisError(f"{path}: empty file (0 bytes)")


MIN_SAMPLE_RATE = 4000   # below: not speech-bearing audio, and upsampling would multiply the samples


def check_rate(path: Path, rate: int) -> None:
    """Refuse a sample rate no speech recording has (a corrupt header can claim 1 Hz: resampling that
    to 16 kHz would turn a tiny file into gigabytes)."""
    if rate < MIN_SAMPLE_RATE:
        raise UndecodableAudio(f"{path}: sample rate {rate} Hz is too low for speech (at least {MIN_SAMPLE_RATE} Hz)")


def load_audio(path: str | Path, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Decode `path` to mono float32 samples at `sample_rate` Hz."""
    path = Path(path)
    check_audio_file(path)
    decoded = (_read_soundfile(path) if _soundfile_first(path) else None) or _read_av(path)
    samples, rate = decoded
    check_rate(path, rate)
    if samples.size == 0:
        raise AmanuensisError(f"{path}: contains no audio samples")
    if not np.all(np.isfinite(samples)):
        raise AmanuensisError(f"{path}: audio contains NaN or infinite samples")
    return resample(samples, rate, sample_rate)


def resample(samples: np.ndarray, rate: int, target: int = SAMPLE_RATE) -> np.ndarray:
    """soxr high-quality resampling to `target` Hz (a no-op when the rates match)."""
    samples = np.asarray(samples, np.float32)
    if rate == target:
        return samples
    import soxr

    return soxr.resample(samples, rate, target).astype(np.float32)


def as_samples(audio) -> np.ndarray:
    """Accept a path or an array of 16 kHz mono samples."""
    if isinstance(audio, (str, Path)):
        return load_audio(audio)
    samples = np.asarray(audio, np.float32)
    if samples.ndim != 1:
        raise AmanuensisError(f"audio array must be 1-D mono samples at {SAMPLE_RATE} Hz, got shape {samples.shape}")
    if samples.size == 0:
        raise AmanuensisError("audio array is empty")
    if not np.all(np.isfinite(samples)):
        raise AmanuensisError("audio array contains NaN or infinite samples")
    return samples


def windows(samples: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """Consecutive 30 s windows: (start sample, samples) pairs; the last may be shorter."""
    return [(start, samples[start:start + N_SAMPLES]) for start in range(0, len(samples), N_SAMPLES)]


def _hz_to_mel(f):
    """Slaney mel scale: linear below 1 kHz (3 mels per 200 Hz), logarithmic above."""
    f = np.asarray(f, np.float64)
    mel = f / (200.0 / 3)
    log_part = 15.0 + np.log(np.maximum(f, 1e-10) / 1000.0) / (math.log(6.4) / 27.0)
    return np.where(f >= 1000.0, log_part, mel)


def _mel_to_hz(m):
    m = np.asarray(m, np.float64)
    return np.where(m >= 15.0, 1000.0 * np.exp((math.log(6.4) / 27.0) * (m - 15.0)), m * (200.0 / 3))


@lru_cache(maxsize=4)
def mel_filters(n_mels: int) -> np.ndarray:
    """Slaney-normalised triangular mel filters, (n_mels, N_FFT // 2 + 1), 0 to 8 kHz."""
    fft_freqs = np.linspace(0, SAMPLE_RATE / 2, N_FFT // 2 + 1)
    hz = _mel_to_hz(np.linspace(_hz_to_mel(0.0), _hz_to_mel(SAMPLE_RATE / 2), n_mels + 2))
    lower = (fft_freqs[None, :] - hz[:-2, None]) / (hz[1:-1] - hz[:-2])[:, None]
    upper = (hz[2:, None] - fft_freqs[None, :]) / (hz[2:] - hz[1:-1])[:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    weights *= (2.0 / (hz[2:] - hz[:-2]))[:, None]       # Slaney: equal area per filter
    return weights


@lru_cache(maxsize=1)
def _hann() -> np.ndarray:
    n = np.arange(N_FFT)
    return 0.5 - 0.5 * np.cos(2 * np.pi * n / N_FFT)      # periodic Hann


def log_mel_spectrogram(samples: np.ndarray, n_mels: int) -> np.ndarray:
    """Whisper's log-mel of one window: (n_mels, 3000) float32.

    The samples are zero-padded (or cut) to 30 s, framed with a centred, reflect-
    padded 400-sample periodic Hann window every 160 samples, |STFT|² (last frame
    dropped), Slaney mel filters, log10 with a 1e-10 floor, clamped to max − 8,
    then (x + 4) / 4.
    """
    x = np.zeros(N_SAMPLES, np.float64)
    n = min(len(samples), N_SAMPLES)
    x[:n] = samples[:n]
    x = np.pad(x, N_FFT // 2, mode="reflect")
    frames = np.lib.stride_tricks.sliding_window_view(x, N_FFT)[::HOP_LENGTH][:N_FRAMES]  # (3000, 400)
    power = np.abs(np.fft.rfft(frames * _hann(), axis=-1)) ** 2                          # (3000, 201)
    mel = mel_filters(n_mels) @ power.T                                                  # (n_mels, 3000)
    log_spec = np.log10(np.maximum(mel, 1e-10))
    log_spec = np.maximum(log_spec, log_spec.max() - 8.0)
    return ((log_spec + 4.0) / 4.0).astype(np.float32)


class AudioStream:
    """A long file as 16 kHz mono samples, decoded and resampled chunk by chunk.

    `window(start, length)` returns samples [start, start + length); starts must not
    go backwards by more than what is still buffered, which holds for Whisper's
    seek loop (it only moves forward). Memory stays bounded by about one window.
    """

    CHUNK = 1 << 16   # samples per decoded block

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.duration = _read_probe(self.path)   # seconds, best estimate before decoding
        self._chunks = self._decode()
        self._buf = np.zeros(0, np.float32)
        self._buf_start = 0
        self._eof = False

    def _decode(self):
        import soxr

        source, rate = _open_chunks(self.path, self.CHUNK)
        check_rate(self.path, rate)
        resampler = None if rate == SAMPLE_RATE else soxr.ResampleStream(rate, SAMPLE_RATE, 1, dtype="float32")
        produced = False
        for block in source:
            if not np.all(np.isfinite(block)):
                raise AmanuensisError(f"{self.path}: audio contains NaN or infinite samples")
            out = block if resampler is None else resampler.resample_chunk(block)
            produced = produced or block.size > 0
            if out.size:
                yield out
        if resampler is not None:
            tail = resampler.resample_chunk(np.zeros(0, np.float32), last=True)
            if tail.size:
                yield tail
        if not produced:
            raise AmanuensisError(f"{self.path}: contains no audio samples")

    def window(self, start: int, length: int) -> np.ndarray:
        """Samples [start, start + length), shorter at the end of the file."""
        if start < self._buf_start:
            raise AmanuensisError("internal: audio stream asked to go backwards")
        drop = start - self._buf_start
        self._buf, self._buf_start = self._buf[drop:], start
        while len(self._buf) < length and not self._eof:
            try:
                self._buf = np.concatenate([self._buf, next(self._chunks)])
            except StopIteration:
                self._eof = True
        return self._buf[:length].copy()


def _read_probe(path: Path) -> float:
    """Duration in seconds (0 if unknown); raises AmanuensisError for missing files."""
    check_audio_file(path)
    import soundfile

    if _soundfile_first(path):
        try:
            info = soundfile.info(str(path))
            return info.frames / info.samplerate
        except (RuntimeError, soundfile.LibsndfileError, TypeError, ValueError):
            pass
    av = _quiet_av()

    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                raise UndecodableAudio(f"{path}: no audio stream in this file")
            return float(container.duration or 0) / 1e6
    except AmanuensisError:
        raise
    except (av.error.FFmpegError, ValueError, OSError, IndexError) as e:
        raise UndecodableAudio(f"{path}: cannot decode audio ({type(e).__name__}: {e})") from None


def _open_chunks(path: Path, chunk: int):
    """(iterator of mono float32 blocks, sample rate) from soundfile, else PyAV."""
    import soundfile

    if not _soundfile_first(path):
        return _av_chunks(path)
    try:
        f = soundfile.SoundFile(str(path))
    except (RuntimeError, soundfile.LibsndfileError, TypeError, ValueError):
        return _av_chunks(path)

    def blocks():
        with f:
            try:
                for block in f.blocks(blocksize=chunk, dtype="float32", always_2d=True):
                    yield block.mean(axis=1)
            except (RuntimeError, soundfile.LibsndfileError) as e:
                raise UndecodableAudio(f"{path}: cannot decode audio (truncated or corrupt: {e})") from None
    return blocks(), f.samplerate


def _av_chunks(path: Path):
    """(generator of mono float32 blocks, sample rate) of the first audio stream, via PyAV."""
    av = _quiet_av()
    errors = (av.error.FFmpegError, ValueError, OSError, IndexError, AttributeError)
    try:
        container = av.open(str(path))
    except errors as e:
        raise UndecodableAudio(f"{path}: cannot decode audio ({type(e).__name__}: {e})") from None
    try:
        if not container.streams.audio:
            raise UndecodableAudio(f"{path}: no audio stream in this file")
        stream = container.streams.audio[0]
        rate = stream.rate or stream.codec_context.sample_rate    # a corrupt header can leave neither
        if not (isinstance(rate, int) and rate > 0):
            raise UndecodableAudio(f"{path}: cannot decode audio (no valid sample rate in the header)")
    except errors as e:
        container.close()
        raise UndecodableAudio(f"{path}: cannot decode audio ({type(e).__name__}: {e})") from None
    except AmanuensisError:
        container.close()
        raise

    def blocks():
        to_float = av.AudioResampler(format="fltp")                 # planar float, same rate and layout
        try:
            with container:
                for frame in container.decode(stream):
                    for out in to_float.resample(frame):
                        yield out.to_ndarray().mean(axis=0).astype(np.float32)   # (channels, n) -> mono
        except errors as e:
            raise UndecodableAudio(f"{path}: cannot decode audio ({type(e).__name__}: {e})") from None
    return blocks(), rate
