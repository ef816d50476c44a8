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
    key: str                            # input_key(path, options)
    status: str                         # DONE or FAILED
    outputs: list[str] = field(default_factory=list)   # relative to the job's directory
    reason: str = ""                    # why it failed
    seconds: float = 0.0                # audio duration
    tensor: str = ""                    # embed: the input's tensor in its shard
    frames: int = 0                     # embed: frames before pooling


def options_key(options: dict) -> str:
    """A digest of what decides the outputs (task, model, device, decoding options, ...)."""
    return hashlib.sha256(json.dumps(options, sort_keys=True, default=str).encode()).hexdigest()


def input_key(path: Path, options: str) -> str:
    """A digest of the file's bytes and `options` (options_key): an input is done again when either changes."""
    digest = hashlib.sha256(options.encode())
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:32]


class Ledger:
    """The ledger file of the job directory `out`; its last line for each name is what holds."""

    def __init__(self, out: Path):
        self.path = Path(out) / LEDGER
        self.latest: dict[str, Entry] = {}
        text = self.path.read_text(encoding="utf-8") if self.path.exists() else ""
        self._torn = bool(text) and not text.endswith("\n")    # the next line must not join the torn one
        if text:
            for line in text.splitlines():
                entry = _parse(line)
                if entry is not None:             # a line torn by a crash is skipped: that input is redone
                    self.latest[entry.name] = entry

    def is_done(self, name: str, key: str, out: Path) -> bool:
        entry = self.latest.get(name)
        return entry is not None and entry.status == DONE and entry.key == key and \
            all((Path(out) / o).is_file() for o in entry.outputs)

    def record(self, entry: Entry) -> None:
        """Append `entry` and sync it to disk before the next input counts as ended."""
        line = ("\n" if self._torn else "") + json.dumps(asdict(entry), ensure_ascii=False) + "\n"
        try:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(line)
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            raise AmanuensisError(f"{self.path}: cannot write the ledger ({e.strerror})") from None
        self.latest[entry.name], self._torn = entry, False
        self._torn = False


def _parse(line: str) -> Entry | None:
    try:
        return Entry(**json.loads(line))
    except (ValueError, TypeError):
        return None
