"""Transcript files in openai-whisper's formats: txt, srt, vtt, tsv, json (written atomically),
and the checks a command makes on its output directory before any work."""
from __future__ import annotations

import json
import os
from functools import partial
from pathlib import Path

from encoder.results import Transcription
from kernels.errors import AmanuensisError
from weights_tools.fileio import atomic_write

FORMATS = ("txt", "srt", "vtt", "tsv", "json")


def timestamp(seconds: float, always_hours: bool, marker: str) -> str:
    """HH:MM:SS.mmm (hours only when needed, unless always_hours)."""
    ms = round(max(seconds, 0.0) * 1000)
    hours, ms = divmod(ms, 3_600_000)
    minutes, ms = divmod(ms, 60_000)
    secs, ms = divmod(ms, 1000)
    head = f"{hours:02d}:" if always_hours or hours else ""
    return f"{head}{minutes:02d}:{secs:02d}{marker}{ms:03d}"


def txt(result: Transcription) -> str:
    return "".join(s.text.strip() + "\n" for s in result.segments)


def _cues(result: Transcription, always_hours: bool, marker: str):
    for s in result.segments:
        yield (timestamp(s.start, always_hours, marker), timestamp(s.end, always_hours, marker),
               s.text.strip().replace("-->", "->"))


def srt(result: Transcription) -> str:
    return "".join(f"{i}\n{a} --> {b}\n{text}\n\n" for i, (a, b, text) in enumerate(_cues(result, True, ","), 1))


def vtt(result: Transcription) -> str:
    return "WEBVTT\n\n" + "".join(f"{a} --> {b}\n{text}\n\n" for a, b, text in _cues(result, False, "."))


def tsv(result: Transcription) -> str:
    rows = ["start\tend\ttext"]
    for s in result.segments:
        rows.append(f"{round(1000 * s.start)}\t{round(1000 * s.end)}\t{s.text.strip().replace(chr(9), ' ')}")
    return "\n".join(rows) + "\n"


def json_text(result: Transcription, profile: bool = False) -> str:
    return json.dumps(result.to_dict(profile=profile), ensure_ascii=False)


RENDER = {"txt": txt, "srt": srt, "vtt": vtt, "tsv": tsv, "json": json_text}


def output_paths(audio_path: str | Path, output_dir: Path, fmt: str) -> list[Path]:
    """Where `fmt` ('all' or one of FORMATS) puts the transcript of `audio_path`."""
    formats = FORMATS if fmt == "all" else (fmt,)
    stem = Path(audio_path).stem
    return [output_dir / f"{stem}.{f}" for f in formats]


def check_distinct_outputs(audio_paths: list, output_dir: Path) -> None:
    """Refuse inputs whose transcripts would land on the same files (same file name in different
    folders, or one file given twice): one would silently replace the other."""
    by_stem: dict[str, list[str]] = {}
    for audio in audio_paths:
        by_stem.setdefault(Path(audio).stem, []).append(str(audio))
    clashes = [paths for paths in by_stem.values() if len(paths) > 1]
    if clashes:
        named = "; ".join(f"{' and '.join(paths)} would both be written as {Path(paths[0]).stem}.*"
                          for paths in clashes)
        raise AmanuensisError(f"{named} in {output_dir}: give each its own --output-dir, or rename one")


def write_result(result: Transcription, audio_path: str | Path, output_dir: Path, fmt: str,
                 profile: bool = False) -> list[Path]:
    """Write every requested format (json with the per-node profile if asked); each file appears
    whole or not at all."""
    written = []
    for path in output_paths(audio_path, output_dir, fmt):
        render = partial(json_text, profile=profile) if path.suffix == ".json" else RENDER[path.suffix[1:]]
        text = render(result)
        atomic_write(path, lambda tmp, text=text: tmp.write_text(text, encoding="utf-8"))
        written.append(path)
    return written


def check_output_dir(path: Path, create: bool = True) -> None:
    """Create the output directory, or fail if it cannot be written. With create=False only check
    (the nearest existing ancestor must be a writable directory), so a run can fail before any work
    and still leave nothing behind when a later check refuses it."""
    if create:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise AmanuensisError(f"{path}: cannot create the output directory ({e.strerror})") from None
        target = path
    else:
        target = next(p for p in (path, *path.parents) if p.exists() or p == p.parent)
    if not target.is_dir():
        raise AmanuensisError(f"{path}: not a directory" if create else
                              f"{path}: cannot create the output directory (Not a directory)")
    if not os.access(target, os.W_OK | os.X_OK):
        raise AmanuensisError(f"{path}: output directory is not writable")
