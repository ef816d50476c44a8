"""The ledger of an archive job: one JSON line per input that ended, done or failed (with the reason),
appended and synced as each ends. A rerun skips the inputs whose last line says done with the same
key (the file's content and the job's options) and whose outputs are all present."""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from kernels.errors import AmanuensisError

LEDGER = "ledger.jsonl"
DONE, FAILED = "done", "failed"


@dataclass
class Entry:
    name: str                           # the input's name (encoder.archive.inputs.Input)
    input: str                          # its path
    key: str                            # input_key(its content, the job's options)
    status: str                         # DONE or FAILED
    outputs: list[str] = field(default_factory=list)   # relative to the job's directory
    reason: str = ""                    # why it failed
    seconds: float = 0.0                # audio duration
    tensor: str = ""                    # embed: the input's tensor in its shard
    frames: int = 0                     # embed: frames before pooling
    content: str = ""                   # content_digest of the file
    stamp: list[int] = field(default_factory=list)   # file_stamp when it was digested


def options_key(options: dict) -> str:
    """A digest of what decides the outputs (task, model, device, decoding options, ...)."""
    return hashlib.sha256(json.dumps(options, sort_keys=True, default=str).encode()).hexdigest()


def content_digest(path: Path) -> str:
    """A digest of the file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_stamp(path: Path) -> list[int]:
    """[size, modification time in ns]: what tells, without reading it, that a file is as it was."""
    st = Path(path).stat()
    return [st.st_size, st.st_mtime_ns]


def input_key(content: str, options: str) -> str:
    """An input's key: its content digest and the job's options_key. It is done again when either changes."""
    return hashlib.sha256(f"{options}:{content}".encode()).hexdigest()[:32]


class Ledger:
    """The ledger file of the job directory `out`; its last line for each name is what holds."""

    def __init__(self, out: Path):
        self.path = Path(out) / LEDGER
        self.latest: dict[str, Entry] = {}
        # a character torn by a crash decodes as a replacement and fails to parse: that line is skipped
        text = self.path.read_bytes().decode("utf-8", errors="replace") if self.path.exists() else ""
        self._torn = bool(text) and not text.endswith("\n")    # the next line must not join the torn one
        if text:
            for line in text.splitlines():
                entry = _parse(line)
                if entry is not None:             # a line torn by a crash is skipped: that input is redone
                    self.latest[entry.name] = entry

    def content(self, name: str, path: Path) -> tuple[str, list[int]]:
        """(content digest, stamp) of `path`. The digest is the ledger's when its last line for `name`
        digested the same path at the same size and modification time, so a rerun over an archive
        does not read every file again; else the file is read (OSError if it cannot be)."""
        stamp, entry = file_stamp(path), self.latest.get(name)
        if entry is not None and entry.content and entry.input == str(path) and entry.stamp == stamp:
            return entry.content, stamp
        return content_digest(path), stamp

    def is_done(self, name: str, key: str, out: Path) -> bool:
        entry = self.latest.get(name)
        return entry is not None and entry.status == DONE and entry.key == key and \
            all((Path(out) / o).is_file() for o in entry.outputs)

    def record(self, entry: Entry) -> None:
        """Append `entry` and sync it to disk before the next input counts as ended."""
        # ASCII escapes: a file name that is not valid UTF-8 (kept by Python as surrogates) writes too
        line = ("\n" if self._torn else "") + json.dumps(asdict(entry)) + "\n"
        try:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(line)
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            raise AmanuensisError(f"{self.path}: cannot write the ledger ({e.strerror})") from None
        self.latest[entry.name], self._torn = entry, False


def _parse(line: str) -> Entry | None:
    try:
        return Entry(**json.loads(line))
    except (ValueError, TypeError):
        return None
