"""Word error rate over a set of clips.

A manifest is JSON Lines with `file` (relative to the manifest) and `text` (the reference)
per clip, as in ../shared/speech/manifest.jsonl. Both sides are normalised
(decoder/normalize.py) and aligned with jiwer; the corpus WER is the total of substitutions,
deletions and insertions over the total reference words.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import jiwer

from decoder.normalize import normalize
from encoder.audio import check_audio_path
from kernels.errors import AmanuensisError


@dataclass(frozen=True)
class Clip:
    id: str
    file: str                   # as the manifest names it
    text: str                   # the reference
    path: Path                  # the file, resolved against the manifest's folder


@dataclass(frozen=True)
class WordErrors:
    """One hypothesis against its reference, after normalisation."""

    words: int                  # in the reference
    substitutions: int
    deletions: int
    insertions: int
    reference_norm: str
    hypothesis_norm: str

    @property
    def errors(self) -> int:
        return self.substitutions + self.deletions + self.insertions

    @property
    def wer(self) -> float | None:
        return self.errors / self.words if self.words else None

    def to_dict(self) -> dict:
        return {"words": self.words, "errors": self.errors, "wer": self.wer, **asdict(self)}


@dataclass(frozen=True)
class ClipResult:
    clip: Clip
    hypothesis: str
    score: WordErrors

    def to_dict(self) -> dict:
        return {"id": self.clip.id, "file": self.clip.file, "reference": self.clip.text,
                "hypothesis": self.hypothesis, **self.score.to_dict()}


@dataclass(frozen=True)
class Evaluation:
    clips: list[ClipResult]

    @property
    def words(self) -> int:
        return sum(c.score.words for c in self.clips)

    @property
    def errors(self) -> int:
        return sum(c.score.errors for c in self.clips)

    @property
    def wer(self) -> float | None:
        return self.errors / self.words if self.words else None

    def to_dict(self) -> dict:
        return {"wer": self.wer, "words": self.words, "errors": self.errors, "clips": [c.to_dict() for c in self.clips]}


def read_manifest(path: Path) -> list[Clip]:
    """Clips of a manifest, each with its resolved `path`; errors name the line."""
    if not path.is_file():
        raise AmanuensisError(f"{path}: manifest not found")
    clips = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            clips.append(Clip(str(item.get("id", item["file"])), item["file"], str(item["text"]),
                              path.parent / item["file"]))
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise AmanuensisError(f"{path}:{n}: not a manifest line with 'file' and 'text' ({e})") from None
    if not clips:
        raise AmanuensisError(f"{path}: no clips")
    return clips


def check_clips(clips: list[Clip], manifest: Path) -> None:
    """Fail before any work if a clip's file is not a usable audio file, naming the manifest."""
    for clip in clips:
        try:
            check_audio_path(clip.path)
        except AmanuensisError as e:
            raise AmanuensisError(f"{e} (listed in {manifest})") from None


def score(reference: str, hypothesis: str) -> WordErrors:
    """Word errors of one clip after normalisation."""
    ref, hyp = normalize(reference), normalize(hypothesis)
    if not ref:
        return WordErrors(0, 0, 0, len(hyp.split()), ref, hyp)
    out = jiwer.process_words(ref, hyp or "")
    return WordErrors(len(ref.split()), out.substitutions, out.deletions, out.insertions, ref, hyp)


def evaluate(model, clips: list[Clip], options=None, report=None) -> Evaluation:
    """Transcribe every clip and score it; `report(ClipResult)` is called after each."""
    results = []
    for clip in clips:
        hypothesis = model.transcribe(clip.path, options).text.strip()
        results.append(ClipResult(clip, hypothesis, score(clip.text, hypothesis)))
        if report:
            report(results[-1])
    return Evaluation(results)
