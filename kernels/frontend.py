"""Whisper's audio front end: its constants, the Hann window, the mel filters and the log-mel.

The host computes the log-mel below in float64 for every backend; the mel kernel of
kernels/aie and its emulation (kernels.emu.log_mel) are checked against it.
"""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

SAMPLE_RATE = 16000                     # Hz, what every Whisper model was trained on
N_FFT = 400                             # samples per STFT window (25 ms)
HOP_LENGTH = 160                        # samples between mel frames (10 ms)
CHUNK_SECONDS = 30                      # the encoder always sees one 30 s window
N_SAMPLES = CHUNK_SECONDS * SAMPLE_RATE  # 480000 samples per window
N_FRAMES = N_SAMPLES // HOP_LENGTH      # 3000 mel frames per window
INPUT_STRIDE = 2                        # mel frames per encoder position (conv2 has stride 2)
FRAMES_PER_SECOND = SAMPLE_RATE // HOP_LENGTH // INPUT_STRIDE   # 50 encoder positions per second
SAMPLES_PER_FRAME = SAMPLE_RATE // FRAMES_PER_SECOND            # 320 samples per encoder position
TIME_PRECISION = 1 / FRAMES_PER_SECOND  # 0.02 s: one timestamp token is one encoder position


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
def hann_window() -> np.ndarray:
    """The periodic Hann window of N_FFT samples, float64."""
    n = np.arange(N_FFT)
    return 0.5 - 0.5 * np.cos(2 * np.pi * n / N_FFT)


def frames(samples: np.ndarray, dtype=np.float64) -> np.ndarray:
    """One window's STFT frames (N_FRAMES, N_FFT): the samples zero-padded (or cut) to 30 s, then
    centred with N_FFT / 2 reflected samples each side, a frame every HOP_LENGTH samples."""
    x = np.zeros(N_SAMPLES, dtype)
    n = min(len(samples), N_SAMPLES)
    x[:n] = samples[:n]
    x = np.pad(x, N_FFT // 2, mode="reflect")
    return np.lib.stride_tricks.sliding_window_view(x, N_FFT)[::HOP_LENGTH][:N_FRAMES]   # (3000, 400)


def pad_window(samples: np.ndarray) -> np.ndarray:
    """One window's samples as the front end takes them: float32, zero-padded (or cut) to N_SAMPLES."""
    out = np.zeros(N_SAMPLES, np.float32)
    n = min(len(samples), N_SAMPLES)
    out[:n] = samples[:n]
    return out


def log_mel_spectrogram(samples: np.ndarray, n_mels: int) -> np.ndarray:
    """Whisper's log-mel of one window: (n_mels, 3000) float32.

    Periodic Hann window, |STFT|² (the last frame dropped), Slaney mel filters, log10 with a
    1e-10 floor, clamped to max − 8, then (x + 4) / 4; in float64.
    """
    # frames past the last non-zero sample (and its N_FFT / 2 reach) hold only zeros, as a window padded
    # to 30 s does: their power is 0, so they need no transform
    nonzero = np.asarray(samples[:N_SAMPLES]) != 0
    n = len(nonzero) - int(np.argmax(nonzero[::-1])) if nonzero.any() else 0
    heard = min(N_FRAMES, -(-(n + N_FFT // 2) // HOP_LENGTH))
    power = np.abs(np.fft.rfft(frames(samples)[:heard] * hann_window(), axis=-1)) ** 2   # (heard, 201)
    log_spec = np.full((n_mels, N_FRAMES), np.log10(1e-10))                              # (n_mels, 3000)
    log_spec[:, :heard] = np.log10(np.maximum(mel_filters(n_mels) @ power.T, 1e-10))
    log_spec = np.maximum(log_spec, log_spec.max() - 8.0)
    return ((log_spec + 4.0) / 4.0).astype(np.float32)
