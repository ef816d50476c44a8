"""An archive job under Ray: the model in long-lived actors (one per worker), each taking a group of
inputs at a time, the next group queued, its audio read by the worker's reader (an actor too, on no
core of its own) while the group before it runs. The driver keeps the ledger. Without an address Ray starts
inside this process and stops with it.

A worker that dies (killed, out of memory, its node lost) is replaced. The group it was running runs
again, one input at a time, and the group queued behind it runs again as it was: an input on which
workers die RETRIES times fails alone, with that reason."""
from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from encoder.archive.job import Item, Job
from encoder.archive.ledger import Entry
from encoder.archive.worker import READER_NICENESS, Reader, Worker
from kernels.errors import AmanuensisError

RETRIES = 2     # runs of an input whose worker died, before it fails
# Calls queued on each worker: the next group waits in its queue (its audio read meanwhile), so a
# worker never idles while the driver records a result and sends the next.
DEPTH = 2


@dataclass
class _Group:
    items: tuple[Item, ...]
    deaths: int = 0                     # runs of it lost (its worker died, or its data)


def run_job(job: Job, items: list[Item], workers: int, address: str | None, group_size: int,
            on_entry: Callable[[Entry], None], on_start: Callable[[list[str]], None],
            say: Callable[[str], None]) -> None:
    """Run `items` on `workers` actors, `group_size` inputs to a call; on_entry(each input's entry) as
    each ends, on_start(each worker's backends) once the workers have loaded the model, say(what
    the user must know: a worker that died)."""
    ray = _ray()
    _start(ray, address, workers * job.threads)
    try:
        actor = ray.remote(num_cpus=job.threads)(Worker)
        actors = [actor.remote(job) for _ in range(workers)]
        # reading is light (no core of its own) and can be redone: a reader that dies is restarted
        reader = ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)(Reader)
        readers = [reader.remote(READER_NICENESS) for _ in range(workers)]
        on_start(_ready(ray, actors))
        _Scheduler(ray, actors, lambda: actor.remote(job), readers, on_entry, say).run(
            deque(_Group(tuple(items[i:i + group_size])) for i in range(0, len(items), group_size)))
    finally:
        ray.shutdown()


def _ray():
    try:
        import ray  # optional (the cluster extra): only archive jobs use it
    except ImportError:
        raise AmanuensisError("encoder.batch needs Ray: pip install -e '.[cluster]'") from None
    return ray


def _start(ray, address: str | None, cpus: int) -> None:
    options = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.WARNING}
    try:
        if address:
            ray.init(address=address, **options)
        else:
            ray.init(num_cpus=cpus, **options)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise AmanuensisError(f"cannot start Ray{f' at {address}' if address else ''}: {e}") from None


def _ready(ray, actors) -> list[str]:
    """Each worker's backends, once it has loaded the model; a worker that cannot load it ends the job."""
    try:
        return ray.get([a.describe.remote() for a in actors])
    except ray.exceptions.RayError as e:
        cause = getattr(e, "cause", None) or getattr(getattr(e, "error", None), "cause", None)
        if isinstance(cause, AmanuensisError):
            raise AmanuensisError(f"a worker cannot load the model: {cause}") from None
        raise AmanuensisError(f"a worker cannot start: {str(e).strip().splitlines()[0]}") from None


class _Scheduler:
    """Keeps DEPTH groups queued on every worker until no group is left."""

    def __init__(self, ray, actors: list, new_actor, readers: list, on_entry, say):
        self.ray, self.actors, self.new_actor, self.readers = ray, actors, new_actor, readers
        self.on_entry, self.say = on_entry, say
        self.running: dict = {}                 # call -> (worker's index, the actor it went to, group, order sent)
        self.sent = 0
        self.charged: list = []                 # dead actors whose running call has been charged

    def run(self, todo: deque[_Group]) -> None:
        free = [k for _ in range(DEPTH) for k in range(len(self.actors))]     # a worker's index per free place
        while todo or self.running:
            while free and todo:
                self._submit(free.pop(0), todo.popleft())
            (call,), _ = self.ray.wait(list(self.running), num_returns=1)
            k, actor, group, order = self.running.pop(call)
            free.append(k)
            try:
                entries = self.ray.get(call)
            except self.ray.exceptions.RayTaskError as e:   # a fault of ours, not of one input: reported per input
                entries = [item.failed(f"worker error: {_first_line(e)}") for item in group.items]
            except self.ray.exceptions.RayActorError as e:  # the worker died (or its node)
                todo.extendleft(reversed(self._lost(k, actor, group, order, _first_line(e))))
                continue
            except self.ray.exceptions.RayError as e:       # the call's data was lost: the worker lives
                todo.extendleft(reversed(self._after_death(group, _first_line(e))))
                continue
            for entry in entries:
                self.on_entry(entry)

    def _submit(self, k: int, group: _Group) -> None:
        """Queue `group` on worker k, its audio read by the worker's reader meanwhile."""
        audio = self.readers[k].read.remote([str(item.path) for item in group.items])
        self.sent += 1
        self.running[self.actors[k].run.remote(list(group.items), audio)] = (k, self.actors[k], group, self.sent)

    def _lost(self, k: int, actor, group: _Group, order: int, why: str) -> list[_Group]:
        """What runs again after a call to worker k was lost. Only the oldest of the calls sent to that
        actor was running: it is charged with the death; the calls queued behind it run again as they were."""
        if self.actors[k] is actor:             # the first of its lost calls to come back: one replacement
            self.say(f"worker {k} died ({why}); a new one takes its place, and the inputs it was running "
                     "run again one by one")
            self.actors[k] = self.new_actor()
        waiting = any(a is actor and sent < order for _, a, _, sent in self.running.values())
        if waiting or any(a is actor for a in self.charged):
            return [group]                      # it was queued behind the call that ran
        self.charged.append(actor)
        return self._after_death(group, why)

    def _after_death(self, group: _Group, why: str) -> list[_Group]:
        """What runs again after a run of `group` was lost (its worker died, or its data): each input
        alone, until it has seen RETRIES such losses."""
        again = []
        for item in group.items:
            if group.deaths + 1 >= RETRIES and len(group.items) == 1:
                self.on_entry(item.failed(f"the worker died {RETRIES} times on this input ({why})"))
            else:
                again.append(_Group((item,), group.deaths + 1))
        return again


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
