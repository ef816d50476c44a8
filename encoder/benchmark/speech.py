"""Bench input: the synthesised sentences in data/ (see make_speech.sh), reordered and joined.

A long input is the sentences in a fresh seeded order per pass, each followed by a
short silence, so consecutive windows never repeat and the reference text is known.
Long inputs are written to a 16-bit WAV block by block, never held whole in memory.
"""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import numpy as np
import soundfile

from kernels.frontend import SAMPLE_RATE

DATA = Path(__file__).parent / "data"
GAP_SECONDS = (0.2, 0.8)


@lru_cache(maxsize=1)
def sentences() -> list[tuple[np.ndarray, str]]:
    """(samples, text) of each synthesised sentence, 16 kHz float32."""
    meta = json.loads((DATA / "speech.json").read_text())
    audio, rate = soundfile.read(DATA / "speech.ogg", dtype="float32")
    assert rate == meta["sample_rate"] == SAMPLE_RATE, "bench speech must be 16 kHz"
    return [(audio[s["start"]:s["end"]], s["text"]) for s in meta["sentences"]]


def pieces(seconds: float, seed: int = 0):
    """Yield (samples, text) pieces, sentences and silences, until `seconds` of audio."""
    rng = np.random.default_rng(seed)
    left = int(seconds * SAMPLE_RATE)
    items = sentences()
    while left > 0:
        for i in rng.permutation(len(items)):
            samples, text = items[i]
            gap = np.zeros(int(rng.uniform(*GAP_SECONDS) * SAMPLE_RATE), np.float32)
            for part, words in ((samples, text), (gap, "")):
                part = part[:left]
                if len(part):
                    yield part, words if len(part) == len(samples) else ""
                left -= len(part)
                if left <= 0:
                    return


def build(seconds: float, seed: int = 0) -> tuple[np.ndarray, str]:
    """`seconds` of speech in memory and its reference text (sentences cut short are left out)."""
    parts = list(pieces(seconds, seed))
    return np.concatenate([p for p, _ in parts]), " ".join(t for _, t in parts if t)


def write(path: Path, seconds: float, seed: int = 0) -> str:
    """Write `seconds` of speech to a 16-bit WAV at `path`, piece by piece; returns the reference text."""
    texts = []
    with soundfile.SoundFile(path, "w", SAMPLE_RATE, 1, "PCM_16") as out:
        for part, text in pieces(seconds, seed):
            out.write(part)
            texts.append(text)
    return " ".join(t for t in texts if t)
