"""The work of an archive job's workers: reading audio (a task of its own), and a worker that loads
the model once and transcribes or embeds groups of inputs, writing each output itself. Plain Python:
encoder.archive.pipeline runs these under Ray."""
from __future__ import annotations

import os
import socket
import sys

import numpy as np

from encoder.archive.job import Item, Job
from encoder.archive.ledger import DONE, Entry
from encoder.archive.outputs import embedding_meta, write_shard, write_transcript
from encoder.audio import load_audio
from encoder.memory import tune_allocator
from encoder.model import load_model
from kernels.errors import AmanuensisError

READER_NICENESS = 10   # a reader reads the next call's audio while the worker computes on every core:
                       # at this niceness it takes ~5% of a busy core (a call's files need ~2%), so the
                       # worker's threads, which wait for each other at every operation, are not held up


def _place() -> str:
    """This host, and the Ray node where run under Ray (one host may hold several nodes)."""
    ray = sys.modules.get("ray")                   # imported by Ray in its actors; not imported here
    node = ray.get_runtime_context().get_node_id() if ray is not None and ray.is_initialized() else None
    return socket.gethostname() + (f", Ray node {node[:8]}" if node else "")


class Reader:
    """Reads audio for a worker. A long-lived process of its own: a Ray task of its own per group
    started a new process each time (Ray ends idle task processes after a second), whose imports cost
    more CPU than reading the clips (measured: 72 clips, 33 s against 23 s for the plain command)."""

    def __init__(self, niceness: int = 0):
        os.nice(niceness)                   # READER_NICENESS in a job's own reader process

    def read(self, paths: list[str]) -> list[np.ndarray | str]:
        """16 kHz mono samples of each of `paths`, or why it cannot be read."""
        out: list[np.ndarray | str] = []
        for path in paths:
            try:
                out.append(load_audio(path))
            except AmanuensisError as e:
                out.append(str(e))
        return out


class Worker:
    """One model, loaded once; each call takes a group of inputs (their windows batched together)."""

    def __init__(self, job: Job):
        os.environ["AMANUENSIS_THREADS"] = str(job.threads)     # before the model sizes its thread pools
        tune_allocator()                # as the commands do (encoder.memory): a worker is a process of its own
        self.job = job
        self.model = load_model(job.model, job.device, job.strict, job.decoder_precision)

    def describe(self) -> str:
        """Where this worker runs, which backend runs the encoder here, and the decoder."""
        return f"on {_place()}: {self.model.backend.describe()}; decoder {self.model.describe_decoder()}"

    def run(self, items: list[Item], audio: list[np.ndarray | str]) -> list[Entry]:
        """The entries of `items`, each done with its outputs written, or failed with the reason.
        audio: each item's samples, or why it could not be read (Reader.read)."""
        entries = {i: item.failed(a) for i, (item, a) in enumerate(zip(items, audio)) if isinstance(a, str)}
        readable = [i for i in range(len(items)) if i not in entries]
        work = self._transcribe if self.job.task == "transcribe" else self._embed
        entries.update(work([items[i] for i in readable], [audio[i] for i in readable], readable))
        return [entries[i] for i in range(len(items))]

    def _transcribe(self, items: list[Item], audio: list[np.ndarray], slots: list[int]) -> dict[int, Entry]:
        out = {}
        for k, result in self.model.transcribe_many(audio, self.job.options):
            item = items[k]
            if isinstance(result, AmanuensisError):
                out[slots[k]] = item.failed(str(result))
            else:
                out[slots[k]] = item.done(write_transcript(self.job, item, result), seconds=result.duration)
        return out

    def _embed(self, items: list[Item], audio: list[np.ndarray], slots: list[int]) -> dict[int, Entry]:
        out, states = {}, {}
        for item, samples, slot in zip(items, audio, slots):
            try:
                result = self.model.embed(samples, self.job.layer, self.job.pool)
            except AmanuensisError as e:
                out[slot] = item.failed(str(e))
                continue
            states[item.key] = result.states
            out[slot] = item.done([], seconds=result.seconds, tensor=item.key, frames=result.frames)
        if states:
            meta = {**embedding_meta(self.job, self.model.dims.as_dict()), "device": self.model.backend.name}
            shard = write_shard(self.job, states, meta)
            for entry in out.values():
                if entry.status == DONE:
                    entry.outputs = [shard]
        return out
