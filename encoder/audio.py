"""Audio in: checking the path, decoding, mono mix, 16 kHz resampling, 30 s windows.

Decoding uses soundfile for wav, flac, ogg and aiff (and files without a known
extension, falling back to PyAV), and PyAV for everything else (mp3, m4a, opus,
video containers, ...). Resampling uses soxr. The log-mel is kernels.frontend's.
"""
from __future__ import annotations

import logging
import stat
from pathlib import Path

import numpy as np
import soundfile
import soxr

from kernels.errors import AmanuensisError, BadAudio, UndecodableAudio
from kernels.frontend import N_SAMPLES, SAMPLE_RATE

SOUNDFILE_SUFFIXES = {".wav", ".wave", ".flac", ".ogg", ".oga", ".aiff", ".aif", ".aifc", ".w64", ".rf64", ".caf"}


def _soundfile_first(path: Path) -> bool:
    """soundfile for its own formats and unknown extensions; PyAV alone for the rest (mp3, m4a, ...)."""
    suffix = path.suffix.lower()
    return suffix in SOUNDFILE_SUFFIXES or not suffix


def _read_soundfile(path: Path):
    try:
        data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)   # (samples, channels)
    except (RuntimeError, soundfile.LibsndfileError, TypeError, ValueError):
        return None
    return data.mean(axis=1), rate


def _quiet_av():
    """Import PyAV with libav's own log output limited to errors (we report problems ourselves)."""
    import av  # loads libav (0.13 s): only for the formats soundfile cannot read

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


_KINDS = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def check_audio_path(path: str | Path) -> Path:
    """`path` as a Path if it names a non-empty regular file (or a link to one); BadAudio saying what
    it is otherwise: missing, a broken symbolic link, a directory, a device, a FIFO, empty."""
    path = Path(path)
    try:
        info = path.stat()
    except FileNotFoundError:
        if path.is_symlink():
            raise BadAudio(f"{path}: broken symbolic link (its target {path.readlink()} does not exist)") from None
        raise BadAudio(f"{path}: file not found") from None
    except OSError as e:
        raise BadAudio(f"{path}: cannot read ({e.strerror})") from None
    if stat.S_ISDIR(info.st_mode):
        raise BadAudio(f"{path}: is a directory, not an audio file")
    if not stat.S_ISREG(info.st_mode):
        kind = next((name for test, name in _KINDS if test(info.st_mode)), "not a regular file")
        raise BadAudio(f"{path}: not a regular file ({kind})")
    if info.st_size == 0:
        raise BadAudio(f"{path}: empty file (0 bytes)")
    return path


MIN_SAMPLE_RATE = 4000   # below: not speech-bearing audio, and upsampling would multiply the samples


def check_rate(path: Path, rate: int) -> None:
    """Refuse a sample rate no speech recording has (a corrupt header can claim 1 Hz: resampling that
    to 16 kHz would turn a tiny file into gigabytes)."""
    if rate < MIN_SAMPLE_RATE:
        raise UndecodableAudio(f"{path}: sample rate {rate} Hz is too low for speech (at least {MIN_SAMPLE_RATE} Hz)")


def load_audio(path: str | Path, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Decode `path` to mono float32 samples at `sample_rate` Hz."""
    path = check_audio_path(path)
    decoded = (_read_soundfile(path) if _soundfile_first(path) else None) or _read_av(path)
    samples, rate = decoded
    check_rate(path, rate)
    if samples.size == 0:
        raise BadAudio(f"{path}: contains no audio samples")
    if not np.all(np.isfinite(samples)):
        raise BadAudio(f"{path}: audio contains NaN or infinite samples")
    return resample(samples, rate, sample_rate)


def resample(samples: np.ndarray, rate: int, target: int = SAMPLE_RATE) -> np.ndarray:
    """soxr high-quality resampling to `target` Hz (a no-op when the rates match)."""
    samples = np.asarray(samples, np.float32)
    if rate == target:
        return samples
    return soxr.resample(samples, rate, target).astype(np.float32)


def as_samples(audio) -> np.ndarray:
    """Accept a path or an array of 16 kHz mono samples."""
    if isinstance(audio, (str, Path)):
        return load_audio(audio)
    samples = np.asarray(audio, np.float32)
    if samples.ndim != 1:
        raise BadAudio(f"audio array must be 1-D mono samples at {SAMPLE_RATE} Hz, got shape {samples.shape}")
    if samples.size == 0:
        raise BadAudio("audio array is empty")
    if not np.all(np.isfinite(samples)):
        raise BadAudio("audio array contains NaN or infinite samples")
    return samples


def windows(samples: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """Consecutive 30 s windows: (start sample, samples) pairs; the last may be shorter."""
    return [(start, samples[start:start + N_SAMPLES]) for start in range(0, len(samples), N_SAMPLES)]


class AudioStream:
    """A long file as 16 kHz mono samples, decoded and resampled chunk by chunk.

    `window(start, length)` returns samples [start, start + length); starts must not
    go backwards by more than what is still buffered, which holds for Whisper's
    seek loop (it only moves forward). Memory stays bounded by about one window.
    """

    CHUNK = 1 << 16   # samples per decoded block

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.duration = probe_duration(self.path)   # seconds, best estimate before decoding
        self._chunks = self._decode()
        self._buf = np.zeros(0, np.float32)
        self._buf_start = 0
        self._eof = False

    def _decode(self):
        source, rate = _open_chunks(self.path, self.CHUNK)
        check_rate(self.path, rate)
        resampler = None if rate == SAMPLE_RATE else soxr.ResampleStream(rate, SAMPLE_RATE, 1, dtype="float32")
        produced = False
        for block in source:
            if not np.all(np.isfinite(block)):
                raise BadAudio(f"{self.path}: audio contains NaN or infinite samples")
            out = block if resampler is None else resampler.resample_chunk(block)
            produced = produced or block.size > 0
            if out.size:
                yield out
        if resampler is not None:
            tail = resampler.resample_chunk(np.zeros(0, np.float32), last=True)
            if tail.size:
                yield tail
        if not produced:
            raise BadAudio(f"{self.path}: contains no audio samples")

    def window(self, start: int, length: int) -> np.ndarray:
        """Samples [start, start + length), shorter at the end of the file."""
        if start < self._buf_start:
            raise RuntimeError("audio stream asked to go backwards (the seek loop only moves forward)")
        drop = start - self._buf_start
        self._buf, self._buf_start = self._buf[drop:], start
        while len(self._buf) < length and not self._eof:
            try:
                self._buf = np.concatenate([self._buf, next(self._chunks)])
            except StopIteration:
                self._eof = True
        return self._buf[:length].copy()


def probe_duration(path: Path) -> float:
    """Duration in seconds (0 if unknown); BadAudio for a path that is not a usable file."""
    check_audio_path(path)
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
