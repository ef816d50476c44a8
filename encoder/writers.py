"""Transcript files in openai-whisper's formats: txt, srt, vtt, tsv, json (written atomically)."""
from __future__ import annotations

import json
from pathlib import Path

from encoder.fileio import atomic_write

FORMATS = ("txt", "srt", "vtt", "tsv", "json")


def timestamp(seconds: float, always_hours: bool, marker: str) -> str:
    """HH:MM:SS.mmm (hours only when needed, unless always_hours)."""
    ms = round(max(seconds, 0.0) * 1000)
    hours, ms = divmod(ms, 3_600_000)
    minutes, ms = divmod(ms, 60_000)
    secs, ms = divmod(ms, 1000)
    head = f"{hours:02d}:" if always_hours or hours else ""
    return f"{head}{minutes:02d}:{secs:02d}{marker}{ms:03d}"


def _txt(result: dict) -> str:
    return "".join(s["text"].strip() + "\n" for s in result["segments"])


def _cues(result: dict, always_hours: bool, marker: str):
    for s in result["segments"]:
        yield (timestamp(s["start"], always_hours, marker), timestamp(s["end"], always_hours, marker),
               s["text"].strip().replace("-->", "->"))


def _srt(result: dict) -> str:
    return "".join(f"{i}\n{a} --> {b}\n{text}\n\n" for i, (a, b, text) in enumerate(_cues(result, True, ","), 1))


def _vtt(result: dict) -> str:
    return "WEBVTT\n\n" + "".join(f"{a} --> {b}\n{text}\n\n" for a, b, text in _cues(result, False, "."))


def _tsv(result: dict) -> str:
    rows = ["start\tend\ttext"]
    for s in result["segments"]:
        rows.append(f"{round(1000 * s['start'])}\t{round(1000 * s['end'])}\t{s['text'].strip().replace(chr(9), ' ')}")
    return "\n".join(rows) + "\n"


def _json(result: dict) -> str:
    return json.dumps(result, ensure_ascii=False)


RENDER = {"txt": _txt, "srt": _srt, "vtt": _vtt, "tsv": _tsv, "json": _json}


def output_paths(audio_path: str, output_dir: Path, fmt: str) -> list[Path]:
    """Where `fmt` ('all' or one of FORMATS) puts the transcript of `audio_path`."""
    formats = FORMATS if fmt == "all" else (fmt,)
    stem = Path(audio_path).stem
    return [output_dir / f"{stem}.{f}" for f in formats]


def write_result(result: dict, audio_path: str, output_dir: Path, fmt: str) -> list[Path]:
    """Write every requested format; each file appears whole or not at all."""
    written = []
    for path in output_paths(audio_path, output_dir, fmt):
        text = RENDER[path.suffix[1:]](result)
        atomic_write(path, lambda tmp, text=text: tmp.write_text(text, encoding="utf-8"))
        written.append(path)
    return written
