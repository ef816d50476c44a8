"""Where live audio comes from, as chunks of 16 kHz mono float32 samples: a file replayed at a
given speed, raw 16-bit PCM on a binary stream (stdin), or the microphone (sounddevice)."""
from __future__ import annotations

import importlib.util
import time
from collections.abc import Iterator
from typing import BinaryIO

import numpy as np

from encoder.audio import load_audio
from kernels.errors import AmanuensisError, BadAudio
from kernels.frontend import SAMPLE_RATE

CHUNK_SECONDS = 0.1          # what a source hands over at a time
PCM_BYTES = 2                # 16-bit samples


def replayed(path, speed: float = 1.0) -> Iterator[np.ndarray]:
    """The file's samples in chunks, `speed` times real time (0: as fast as they are taken)."""
    samples = load_audio(path)
    step, start = round(CHUNK_SECONDS * SAMPLE_RATE), time.monotonic()
    for i in range(0, len(samples), step):
        if speed > 0:                         # each chunk is handed over when it would have been heard
            time.sleep(max(0.0, start + (i + step) / SAMPLE_RATE / speed - time.monotonic()))
        yield samples[i:i + step]


def pcm_stream(stream: BinaryIO) -> Iterator[np.ndarray]:
    """Raw signed 16-bit little-endian mono PCM at 16 kHz from `stream`, until it ends."""
    size = round(CHUNK_SECONDS * SAMPLE_RATE) * PCM_BYTES
    carry = b""
    while True:
        data = stream.read(size)
        if not data:
            break
        data, carry = carry + data, b""
        if len(data) % PCM_BYTES:
            data, carry = data[:-1], data[-1:]
        yield np.frombuffer(data, "<i2").astype(np.float32) / 32768.0
    if carry:
        raise BadAudio("stdin: the PCM stream ended in the middle of a 16-bit sample (expected raw s16le mono "
                       "at 16 kHz)")


def microphone() -> Iterator[np.ndarray]:
    """The default input device, mono at 16 kHz (needs the sounddevice package and PortAudio);
    refused at once, before any model loads, when sounddevice is missing."""
    if importlib.util.find_spec("sounddevice") is None:
        raise AmanuensisError("--live without AUDIO reads the microphone, which needs the sounddevice package "
                              "(pip install sounddevice); or give a file, or - for raw 16 kHz s16le PCM on stdin")
    return _microphone_chunks()


def _microphone_chunks() -> Iterator[np.ndarray]:
    import sounddevice

    block = round(CHUNK_SECONDS * SAMPLE_RATE)
    try:
        with sounddevice.InputStream(samplerate=SAMPLE_RATE, channels=1, dtype="float32", blocksize=block) as mic:
            while True:
                samples, _overflowed = mic.read(block)
                yield samples[:, 0].copy()
    except sounddevice.PortAudioError as e:
        raise AmanuensisError(f"microphone: {e}") from None
