"""An archive job under Ray: the model in long-lived actors (one per worker), each taking a group of
inputs at a time, the next group queued, its audio read by the worker's reader (an actor too, on no
core of its own) while the group before it runs. The driver keeps the ledger. Without an address Ray starts
inside this process and stops with it.

A worker that dies (killed, out of memory, its node lost) is replaced. The group it was running runs
again, one input at a time, and the group queued behind it runs again as it was: an input on which
workers die RETRIES times fails alone, with that reason. Every worker, a replacement too, takes
groups once it has loaded the model, so where the cluster has no room left for one (a node lost),
the other workers finish the job; a worker that fails to start RETRIES times is given up."""
from __future__ import annotations

import logging
import re
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
ROOM_WAIT_S = 30.0   # with no worker started for this long, the job says it is waiting
LOST_WAIT_S = 60.0   # for the other calls of a worker that died to come back (they are lost at once)


@dataclass
class _Group:
    items: tuple[Item, ...]
    deaths: int = 0                     # runs of it lost (its worker died, or its data)


def run_job(job: Job, items: list[Item], workers: int, address: str | None, group_size: int,
            on_entry: Callable[[Entry], None], say: Callable[[str], None]) -> None:
    """Run `items` on `workers` actors, `group_size` inputs to a call; on_entry(each input's entry) as
    each ends, say(what the user must know: each worker's place and backends as it starts, a worker
    that died, one the cluster has no room for)."""
    ray = _ray()
    _start(ray, address, workers * job.threads)
    try:
        actor = ray.remote(num_cpus=job.threads)(Worker)
        # reading is light (no core of its own) and can be redone: a reader that dies is restarted
        reader = ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)(Reader)
        readers = [reader.remote(READER_NICENESS) for _ in range(workers)]
        _Scheduler(ray, lambda: actor.remote(job), readers, on_entry, say, job.threads).run(
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
            # Ray's notice that the cluster it starts here uses token authentication is not the user's concern
            logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
            ray.init(num_cpus=cpus, **options)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise AmanuensisError(f"cannot start Ray{f' at {address}' if address else ''}: {e}") from None


class _Scheduler:
    """Keeps DEPTH groups queued on every started worker until no group is left. Each worker takes
    calls once it has loaded the model, so a job starts on the workers the cluster has room for."""

    def __init__(self, ray, new_actor, readers: list, on_entry, say, cpus: int):
        self.ray, self.new_actor, self.readers = ray, new_actor, readers
        self.on_entry, self.say, self.cpus = on_entry, say, cpus
        self.running: dict = {}                 # call -> (worker's index, the actor it went to, group, order sent)
        self.sent = 0
        self.starting: dict = {}                # a worker's describe call -> (worker's index, its starts failed)
        self.given_up: set[int] = set()         # workers none of whose starts succeeded
        self.replaced: set[int] = set()         # workers whose first actor died
        self.any_started = False                # the model has loaded on some worker
        self.actors: list = [None] * len(readers)
        for k in range(len(readers)):
            self._replace(k, 0)

    def run(self, todo: deque[_Group]) -> None:
        free = [k for _ in range(DEPTH) for k in range(len(self.actors))]     # a worker's index per free place
        told = False                            # that no worker has started for ROOM_WAIT_S
        while todo or self.running:
            while todo and (k := self._next_free(free)) is not None:
                self._submit(k, todo.popleft())
            if not self.running and not self.starting:
                left = sum(len(group.items) for group in todo)
                raise AmanuensisError(f"no worker is left to run the last {_count(left, 'input')}: none could "
                                      "start in place of those that died or did not start")
            ready, _ = self.ray.wait([*self.running, *self.starting], num_returns=1,
                                     timeout=None if self.running or told else ROOM_WAIT_S)
            if not ready:
                told = True
                self.say(f"no worker has started in {ROOM_WAIT_S:.0f} s: each is still loading the model, or the "
                         f"cluster has no node with {_count(self.cpus, 'CPU')} free for one; waiting")
            elif ready[0] in self.starting:
                if self._started(ready[0]):
                    told = False
            else:
                todo.extendleft(reversed(self._ended(ready[0], free)))
        for k, _ in self.starting.values():
            self.say(f"worker {k} had not started when the work ran out")

    def _ended(self, call, free: list[int]) -> list[_Group]:
        """A call came back: its entries recorded, or, where it was lost, the groups to run again."""
        k, actor, group, _ = self.running[call]
        try:
            entries = self._entries(call, group)
        except self.ray.exceptions.RayActorError as e:  # the worker died (or its node)
            return self._lost(k, actor, _reason(e), free)
        except self.ray.exceptions.RayError as e:       # the call's data was lost: the worker lives
            del self.running[call]
            free.append(k)
            return self._after_death(group, _reason(e))
        del self.running[call]
        free.append(k)
        for entry in entries:
            self.on_entry(entry)
        return []

    def _entries(self, call, group: _Group) -> list[Entry]:
        """The entries of a call that came back; a fault of ours (not of one input) fails each input."""
        try:
            return self.ray.get(call)
        except self.ray.exceptions.RayTaskError as e:
            return [item.failed(f"worker error: {_reason(e)}") for item in group.items]

    def _next_free(self, free: list[int]) -> int | None:
        """A free place on a worker that takes calls (not one still starting or given up), taken."""
        starting = {k for k, _ in self.starting.values()}
        for i, k in enumerate(free):
            if k not in starting and k not in self.given_up:
                return free.pop(i)
        return None

    def _replace(self, k: int, failed: int) -> None:
        """A new actor for worker k, taking calls once its model is loaded (_started)."""
        self.actors[k] = self.new_actor()
        self.starting[self.actors[k].describe.remote()] = (k, failed)

    def _started(self, call) -> bool:
        """A worker's describe call came back: whether it started (it takes calls from now on). A
        model that cannot load ends the job, unless it has loaded on another worker."""
        k, failed = self.starting.pop(call)
        name = f"worker {k}{' (a replacement)' if k in self.replaced else ''}"
        try:
            self.say(f"{name}: {self.ray.get(call)}")
            self.any_started = True
            return True
        except self.ray.exceptions.RayError as e:
            if getattr(e, "actor_init_failed", False) and not self.any_started:
                raise AmanuensisError(f"a worker cannot load the model: {_reason(e)}") from None
            why = _reason(e)
        if failed + 1 < RETRIES:
            self.say(f"{name} did not start ({why}); another one is started")
            self._replace(k, failed + 1)
        else:
            self.given_up.add(k)
            self.say(f"{name} did not start {RETRIES} times ({why}); the job goes on without it")
        return False

    def _submit(self, k: int, group: _Group) -> None:
        """Queue `group` on worker k, its audio read by the worker's reader meanwhile."""
        audio = self.readers[k].read.remote([str(item.path) for item in group.items])
        self.sent += 1
        self.running[self.actors[k].run.remote(list(group.items), audio)] = (k, self.actors[k], group, self.sent)

    def _lost(self, k: int, actor, why: str, free: list[int]) -> list[_Group]:
        """Worker k's actor died: it is replaced, killed for good (one only out of reach would keep its
        CPUs), and every call sent to it is collected, oldest first. Those that finished are recorded;
        the oldest lost one was running when it died and is charged with the death; the lost ones
        queued behind it run again as they were. Returns the groups to run again."""
        self.say(f"worker {k} died ({why}); a new one takes its place once it has started, and the inputs it "
                 "was running run again one by one")
        self.replaced.add(k)
        self._replace(k, 0)
        self.ray.kill(actor, no_restart=True)
        mine = sorted((order, call) for call, (_, a, _, order) in self.running.items() if a is actor)
        back = set(self.ray.wait([call for _, call in mine], num_returns=len(mine), timeout=LOST_WAIT_S)[0])
        again, charged = [], False
        for _, call in mine:
            group = self.running.pop(call)[2]
            free.append(k)
            try:
                if call not in back:
                    raise self.ray.exceptions.RayError("no answer")     # out of reach: as lost
                entries = self._entries(call, group)
            except self.ray.exceptions.RayError:
                again.extend(self._after_death(group, why) if not charged else [group])
                charged = True
                continue
            for entry in entries:
                self.on_entry(entry)
        return again

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


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_OURS = f"{AmanuensisError.__module__}.{AmanuensisError.__qualname__}: "


def _reason(error: Exception) -> str:
    """What went wrong, in one line: for an actor whose start failed, the error it raised (the last
    line of Ray's report, ours without its class name); else the report's first line."""
    lines = [line for line in _ANSI.sub("", str(error)).strip().splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    if getattr(error, "actor_init_failed", False):
        return lines[-1].removeprefix(_OURS)
    return lines[0]
