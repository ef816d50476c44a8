"""The inputs of an archive job: audio files, directories (searched recursively), glob patterns and
JSON Lines manifests (one object per line naming its audio as "file" or "path", relative to the
manifest). Each input gets a name, unique in the job, that its outputs are written under."""
from __future__ import annotations

import glob
import json
from dataclasses import dataclass
from pathlib import Path

from encoder.audio import SOUNDFILE_SUFFIXES
from kernels.errors import AmanuensisError

# What a directory is searched for (PyAV reads more; name such files, or list them in a manifest).
AUDIO_SUFFIXES = frozenset(SOUNDFILE_SUFFIXES | {".mp3", ".m4a", ".aac", ".opus", ".webm", ".mp4", ".wma", ".mka"})
MANIFEST_SUFFIXES = (".jsonl", ".ndjson")


@dataclass(frozen=True)
class Input:
    path: Path          # the audio file
    name: str           # its outputs' name without suffix: its path under the directory it was found in,
                        # its manifest id, or its file name's stem


def find_inputs(specs: list[str]) -> list[Input]:
    """Every input the specs name, in order, each once; AmanuensisError for a spec that names nothing
    and for two inputs whose outputs would share a name."""
    found: list[Input] = []
    for spec in specs:
        path = Path(spec)
        if path.is_dir():
            more = [Input(p, p.relative_to(path).with_suffix("").as_posix()) for p in sorted(path.rglob("*"))
                    if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file()]
        elif path.suffix.lower() in MANIFEST_SUFFIXES and path.is_file():
            more = _manifest(path)
        elif path.is_file():
            more = [Input(path, path.stem)]
        else:
            more = [Input(Path(p), Path(p).stem) for p in sorted(glob.glob(spec, recursive=True)) if Path(p).is_file()]
        if not more:
            raise AmanuensisError(f"{spec}: no audio files here (not a file, a directory with audio files, "
                                  "a manifest or a glob that matches files)")
        found += more
    return _distinct(found)


def _manifest(path: Path) -> list[Input]:
    out = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise AmanuensisError(f"{path}: cannot read this manifest ({getattr(e, 'strerror', None) or e})") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            audio = row.get("file") or row.get("path")
        except (ValueError, AttributeError):
            row, audio = None, None
        if not isinstance(audio, str):
            raise AmanuensisError(f"{path}:{number}: each line must be a JSON object naming its audio as \"file\" "
                                  "or \"path\"")
        file = path.parent / audio
        name = str(row.get("id") or (Path(audio).stem if Path(audio).is_absolute() else
                                     Path(audio).with_suffix("").as_posix()))
        out.append(Input(file, _checked_name(name, f"{path}:{number}")))
    return out


def _checked_name(name: str, where: str) -> str:
    """`name` if it stays inside the job directory (relative, no '..'), else an error naming `where`."""
    parts = Path(name).parts
    if not parts or Path(name).is_absolute() or ".." in parts:
        raise AmanuensisError(f"{where}: the name {name!r} would put outputs outside the output directory: "
                              "give a relative id without '..'")
    return name


def _distinct(inputs: list[Input]) -> list[Input]:
    """Each file once (the first name it was given); names unique, else an error naming both."""
    seen: dict[Path, Input] = {}
    by_name: dict[str, Input] = {}
    for item in inputs:
        real = item.path.resolve()
        if real in seen:
            continue
        other = by_name.get(item.name)
        if other is not None:
            raise AmanuensisError(f"{other.path} and {item.path} would both be written as {item.name}: give them "
                                  "as directories (outputs keep the paths under them) or in a manifest with ids")
        seen[real] = by_name[item.name] = item
    return list(seen.values())
