"""Inputs for judging --vad's accuracy on more than one cut of the same speech.

Where VAD chunks begin and end moves a transcript's word errors by more than the gap between two
systems: on the five minutes of varied speech, shifting chunk edges by 0.1 s changed ours by up to a
dozen errors (2026-12-04). So the bench also scores each system over variants: the varied speech
with every pause lengthened by a random 0-0.5 s of silence (the words and their order unchanged),
and the real clips joined in random orders with 0.2-1.5 s of silence between them. Pauses are found
by the audio's energy, not by any system's VAD.
"""
from __future__ import annotations

import numpy as np
import soundfile

from encoder.audio import load_audio
from encoder.benchmark.speech import DATA
from kernels.frontend import SAMPLE_RATE

ENERGY_FRAME = 512              # samples per energy frame (32 ms)
QUIET_RMS = 1e-3                # a frame this quiet is silence
MIN_PAUSE = 0.2                 # seconds of silence that make a pause
ADDED_SILENCE = (0.0, 0.5)      # seconds added in each pause of a variant
CLIP_GAP = (0.2, 1.5)           # seconds of silence after each clip when clips are joined


def varied_variant(seed: int) -> tuple[np.ndarray, str]:
    """The varied speech (data/varied.ogg) with each pause lengthened in the middle: (samples, reference)."""
    audio, rate = soundfile.read(DATA / "varied.ogg", dtype="float32")
    assert rate == SAMPLE_RATE, "bench speech must be 16 kHz"
    rng = np.random.default_rng(seed)
    frames = audio[:len(audio) // ENERGY_FRAME * ENERGY_FRAME].reshape(-1, ENERGY_FRAME)      # (n, 512)
    quiet = np.sqrt(np.mean(np.square(frames), axis=1)) < QUIET_RMS
    edges = np.flatnonzero(np.diff(np.concatenate([[0], quiet.astype(np.int8), [0]])))
    parts, last = [], 0
    for start, end in zip(edges[0::2], edges[1::2]):
        if (end - start) * ENERGY_FRAME >= MIN_PAUSE * SAMPLE_RATE:
            middle = (start + end) // 2 * ENERGY_FRAME
            parts += [audio[last:middle], np.zeros(int(rng.uniform(*ADDED_SILENCE) * SAMPLE_RATE), np.float32)]
            last = middle
    parts.append(audio[last:])
    return np.concatenate(parts), (DATA / "varied.txt").read_text()


def joined_clips(clips: list[tuple[str, str]], seed: int) -> tuple[np.ndarray, str]:
    """The clips ((path, text) each) in a random order, silence after each: (samples, reference)."""
    rng = np.random.default_rng(seed)
    parts, texts = [], []
    for i in rng.permutation(len(clips)):
        path, text = clips[i]
        parts += [load_audio(path), np.zeros(int(rng.uniform(*CLIP_GAP) * SAMPLE_RATE), np.float32)]
        texts.append(text)
    return np.concatenate(parts), " ".join(texts)


def inputs(variants: int, clips: list[tuple[str, str]] | None) -> dict[str, list]:
    """{set name: [(samples, reference)]}: `variants` of the varied speech and, with clips, as many orders."""
    sets = {"varied speech, pauses changed": [varied_variant(k) for k in range(variants)]}
    if clips:
        sets["real clips joined, orders"] = [joined_clips(clips, k) for k in range(variants)]
    return sets
