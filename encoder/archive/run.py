"""An archive job from start to end on the driver: the inputs found and keyed, those done by an
earlier run skipped, the rest run (encoder.archive.pipeline), the ledger kept, progress shown, and
for embeddings the index written."""
from __future__ import annotations

import fcntl
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from encoder.archive.inputs import Input, find_inputs
from encoder.archive.job import Item, Job
from encoder.archive.ledger import DONE, FAILED, Entry, Ledger, input_key, options_key
from encoder.archive.outputs import embedding_meta, finish_embeddings, sweep_partials
from encoder.archive.pipeline import run_job
from encoder.audio import probe_duration
from kernels.errors import AmanuensisError
from weights_tools.model_dir import ConvertedModel
from weights_tools.resolve import resolve_model

LOCK = ".lock"


@dataclass
class Summary:
    inputs: int = 0
    done: int = 0
    failed: list[Entry] = field(default_factory=list)
    skipped: int = 0                    # done by an earlier run
    audio_seconds: float = 0.0          # of the inputs done in this run
    wall_seconds: float = 0.0

    def format(self) -> str:
        rate = self.audio_seconds / self.wall_seconds if self.wall_seconds else 0.0
        return (f"{self.inputs} inputs: {self.done} done, {len(self.failed)} failed, {self.skipped} done before; "
                f"{self.audio_seconds / 3600:.2f} h of audio in {self.wall_seconds:.1f} s "
                f"({rate:.1f} audio hours per hour)")


def run_archive(job: Job, specs: list[str], workers: int, address: str | None, progress: bool) -> Summary:
    """Run the job on the inputs `specs` name (encoder.archive.inputs) with `workers` workers."""
    started = time.perf_counter()
    inputs = find_inputs(specs)
    dims = ConvertedModel.open(resolve_model(job.model)).dims     # a bad model fails here, converted once
    _make_dir(job)
    with _only_job(job.out):
        return _run(job, inputs, dims, workers, address, progress, started)


def _run(job: Job, inputs: list[Input], dims, workers: int, address: str | None, progress: bool,
         started: float) -> Summary:
    sweep_partials(job.out)
    ledger, summary = Ledger(job.out), Summary(inputs=len(inputs))
    todo = _todo(job, inputs, ledger, summary)
    shown = _Progress(todo, progress)

    def ended(entry: Entry) -> None:
        ledger.record(entry)
        if entry.status == DONE:
            summary.done += 1
            summary.audio_seconds += entry.seconds
        else:
            summary.failed.append(entry)
            shown.say(f"failed {entry.name}: {entry.reason}")
        shown.update(entry)

    for entry in summary.failed:                    # inputs that could not even be read to key them
        ledger.record(entry)
        shown.say(f"failed {entry.name}: {entry.reason}")
    if todo:
        run_job(job, todo, workers, address, job.options.batch_size, ended, shown.say)
    shown.close()
    if job.task == "embed":
        finish_embeddings(job, ledger, embedding_meta(job, dims.as_dict()), options_key(job.fingerprint()))
    summary.wall_seconds = time.perf_counter() - started
    return summary


@contextmanager
def _only_job(out: Path):
    """Hold the job directory's lock: two jobs at once would interleave the ledger, and one would
    sweep the other's files being written."""
    try:
        f = open(out / LOCK, "w")
    except OSError as e:
        raise AmanuensisError(f"{out}: cannot write in the output directory ({e.strerror})") from None
    with f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise AmanuensisError(f"{out}: another archive job is running in this directory") from None
        yield


def _make_dir(job: Job) -> None:
    try:
        job.out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise AmanuensisError(f"{job.out}: cannot create the output directory ({e.strerror})") from None


def _todo(job: Job, inputs: list[Input], ledger: Ledger, summary: Summary) -> list[Item]:
    """The inputs to run: each keyed; those done before counted as skipped, unreadable ones as failed."""
    options, todo = options_key(job.fingerprint()), []
    for item in inputs:
        try:
            content, stamp = ledger.content(item.name, item.path)
        except OSError as e:
            summary.failed.append(Entry(item.name, str(item.path), "", FAILED,
                                        reason=f"{item.path}: cannot read ({e.strerror})"))
            continue
        key = input_key(content, options)
        if ledger.is_done(item.name, key, job.out):
            summary.skipped += 1
            continue
        try:
            seconds = probe_duration(item.path)
        except AmanuensisError:
            seconds = 0.0                   # the worker reports why it cannot be read
        todo.append(Item(item.name, item.path, key, seconds, content, tuple(stamp)))
    return todo


class _Progress:
    """Inputs ended, audio hours per hour and an ETA, on one line of a terminal's stderr."""

    def __init__(self, todo: list[Item], enabled: bool):
        self.enabled = enabled and sys.stderr.isatty()
        self.total, self.left = len(todo), sum(item.seconds for item in todo)
        self.ended, self.audio, self.started = 0, 0.0, time.perf_counter()
        self.expected = {item.name: item.seconds for item in todo}

    def update(self, entry: Entry) -> None:
        self.ended += 1
        self.audio += entry.seconds
        self.left -= self.expected.get(entry.name, 0.0)
        if not self.enabled:
            return
        elapsed = time.perf_counter() - self.started
        rate = self.audio / elapsed if elapsed else 0.0
        eta = f"{self.left / rate / 60:.1f} min left" if rate else "..."
        print(f"\r{self.ended}/{self.total} inputs, {rate:.1f} audio hours per hour, {eta}   ",
              end="", file=sys.stderr, flush=True)

    def say(self, message: str) -> None:
        print(("\n" if self.enabled and self.ended else "") + f"amanuensis: {message}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.enabled and self.ended:
            print(file=sys.stderr, flush=True)
