"""A host executor for the project's IRON designs (kernels/aie/*/design.py).

The designs import mlir-aie's IRON API (`aie.iron`, `aie.helpers.taplib.tap`), which does not run
here. `run_design` installs, for the duration of one call, a module `aie` implementing the subset
the designs use, with the meaning IRON gives it, then runs the design's runtime sequence with the
host build of the kernels (kernels/aie/host.py):

- ObjectFifo(obj_type, depth=2, name=..., dims_to_stream=...): `depth` buffers of obj_type at the
  producer and at each consumer; every cons() call adds a consumer, and each object goes to all of
  them (a broadcast). prod().acquire(1) waits for a free buffer, prod().release(1) hands it to the
  DMA, which copies it to every consumer in the order dims_to_stream gives ((size, stride) pairs,
  outer first); cons().acquire(1) waits for the oldest filled one, cons().release(1) frees it.
- cons().forward(...), cons().split(offsets, ...) and prod().join(offsets, ...): objects copied
  through a memory tile whole, in parts to several fifos, or from several fifos into one.
- TensorAccessPattern(tensor_dims, offset, sizes, strides): the element order a DMA walks, outer
  dimension first: element offset + sum(i_d * strides[d]) for every index vector i < sizes.
- Runtime.sequence(types...) binds the host arrays; start(workers) runs each worker's function on
  its own thread; fill(prod, tensor, tap) and drain(cons, tensor, tap) are DMA tasks moving one
  fifo object at a time, each endpoint's tasks in the order issued; the sequence waits for them at
  finish_task_group(group) and at its end (as IRON awaits `wait=True` tasks). The drains' cons()
  handles of one fifo are one consumer, as IRON merges them.
- Worker(fn, args, while_true=True): fn(*args) once, or (while_true, IRON's default) again and
  again until the sequence ends.
- Kernel(name, object_file, arg_types): the host build's function of that name.

It checks what the hardware limits (the constants below): a worker's fifo buffers (depth x object
size, each endpoint it holds), its Buffers and the stack must fit a core's data memory, the linked
fifos placed on a memory tile its size; a DMA access pattern (and dims_to_stream) may have at most
DMA_DIMS dimensions; every consumer must have a reader (a worker, a drain or a link). A design
that waits forever (a fifo nobody fills, a drain that never completes) is reported after TIMEOUT
seconds with every fifo's state.
It also checks the DMA as the designs use it (DmaLimits, check_dma): channels per core, memory
tile and shim tile (each fifo endpoint a core holds is one channel; placed links and transfers are
counted per tile), buffer descriptors in flight per shim tile within a task group, and each access
pattern's dimensions, sizes, strides and 4-byte granularity on the tile that walks it.
What it does not model: timing, routing, padding, shared-memory fifos between neighbouring cores
(every fifo is taken to use DMA channels), and the IRON constructs our designs do not use.
"""
from __future__ import annotations

import collections
import contextlib
import ctypes
import functools
import importlib.util
import itertools
import queue
import sys
import threading
import types
import typing
from dataclasses import dataclass, field

import numpy as np

from kernels.aie import host
from kernels.errors import AmanuensisError

CORE_MEMORY = 64 * 1024        # bytes of data memory per AIE-ML core (Phoenix, Hawk Point, Strix)
STACK = 1024                   # bytes of it the core's stack takes (mlir-aie's default stack size)
MEMORY_TILE = 512 * 1024       # bytes of a memory tile (AIE-ML)
DMA_DIMS = 4                   # dimensions of one DMA buffer descriptor's access pattern
TIMEOUT = 60.0                 # seconds without progress before a run counts as deadlocked


@dataclass(frozen=True)
class DmaLimits:
    """What one tile's DMA can do (AIE2, mlir-aie's target model and buffer descriptor verifiers; the
    same on AIE2P). Sizes of the two inner dimensions and strides are in 32-bit words; a fourth
    dimension is the BD's iteration count."""

    tile: str
    channels: int              # MM2S channels, and as many S2MM
    dims: int                  # dimensions of an access pattern, iteration included
    wrap: int                  # largest size of dimensions 0 and 1 (words for dimension 0)
    stride: int                # largest stride (words)
    bds: int                   # buffer descriptors


SHIM = DmaLimits("shim tile", channels=2, dims=4, wrap=1023, stride=1 << 20, bds=16)
MEM_TILE = DmaLimits("memory tile", channels=6, dims=4, wrap=1023, stride=1 << 17, bds=48)
CORE = DmaLimits("core", channels=2, dims=3, wrap=255, stride=1 << 13, bds=16)
ITERATIONS = 64                # largest iteration count (a pattern's fourth dimension)


class DesignError(AmanuensisError):
    """A design that cannot run as written: memory over a core's, a pattern the DMA cannot walk, a
    deadlock."""


class _Stop(Exception):
    """Raised in a worker blocked on a fifo when the sequence has ended."""


def _shape_dtype(obj_type) -> tuple[tuple[int, ...], np.dtype]:
    """(shape, dtype) of np.ndarray[(shape), np.dtype[T]]."""
    shape, dtype = typing.get_args(obj_type)
    return tuple(shape), np.dtype(typing.get_args(dtype)[0])


def _nbytes(obj_type) -> int:
    shape, dtype = _shape_dtype(obj_type)
    return int(np.prod(shape)) * dtype.itemsize


# ---- IRON's objects ------------------------------------------------------------------------------

_CREATED: list | None = None          # the fifos and links a design makes (set while it is built)


def _register(thing) -> None:
    if _CREATED is not None:
        _CREATED.append(thing)


class ObjectFifo:
    """`depth` objects of obj_type at its producer and at each consumer (every cons() is one more
    consumer: more than one is a broadcast); a DMA moves each released object from the producer to
    every consumer, reading it in the order dims_to_stream gives ((size, stride) pairs, outer
    first), or as laid out."""

    def __init__(self, obj_type, depth: int = 2, name: str | None = None, default_depth: int | None = None,
                 dims_to_stream=None, **_ignored):
        self.obj_type, self.name = obj_type, name or f"fifo{id(self)}"
        self.depth = default_depth or depth
        self.shape, self.dtype = _shape_dtype(obj_type)
        self.nbytes = _nbytes(obj_type)
        self.dims_to_stream = dims_to_stream
        self._prod = _Endpoint(self, "prod", self.depth)
        self.consumers: list[_Endpoint] = []
        self.stop, self.moved = threading.Event(), 0
        _register(self)

    def prod(self) -> _Endpoint:
        return self._prod

    def cons(self, depth: int | None = None, **_ignored) -> _Endpoint:
        endpoint = _Endpoint(self, "cons", depth or self.depth)
        self.consumers.append(endpoint)
        return endpoint

    def reset(self, stop: threading.Event) -> None:
        self.stop, self.moved = stop, 0
        for e in [self._prod, *self.consumers]:
            e.reset()

    def stream_order(self) -> np.ndarray:
        """Flat indices of an object in the order its producer's DMA sends them."""
        size = int(np.prod(self.shape))
        if not self.dims_to_stream:
            return np.arange(size)
        dims = [list(d) for d in self.dims_to_stream]
        if len(dims) > DMA_DIMS:
            raise DesignError(f"{self.name}: dims_to_stream of {len(dims)} dimensions: a DMA walks at most {DMA_DIMS}")
        inner = int(np.prod([d[0] for d in dims[1:]]))
        if inner and size % inner == 0:
            dims[0][0] = size // inner          # the transfer is the whole object: the outermost size repeats
        order = TensorAccessPattern(self.shape, 0, [d[0] for d in dims], [d[1] for d in dims]).indices()
        if len(order) != size or order.max() >= size:
            raise DesignError(f"{self.name}: dims_to_stream {dims} does not walk one {size}-element object")
        return order

    def move(self) -> None:
        """The DMA from the producer to every consumer, object by object, until the run stops."""
        order = self.stream_order()
        while True:
            source = self._prod.take_full()
            for c in self.consumers:
                c.put_full(source.reshape(-1)[order])
            self._prod.give_free(source)
            self.moved += 1

    def state(self) -> str:
        ends = [self._prod, *self.consumers]
        return f"{self.name}: " + ", ".join(f"{e.side} {e.full.qsize()} full, {e.free.qsize()} free of {e.depth}"
                                           for e in ends) + f", {self.moved} moved"

    # ---- links through a memory tile -------------------------------------------------------------
    def _link(self, kind, sources, targets, offsets, placement) -> None:
        _register(_Link(kind, sources, targets, offsets, placement))


class _Endpoint:
    def __init__(self, fifo: ObjectFifo, side: str, depth: int):
        self.fifo, self.side, self.depth, self.held = fifo, side, depth, []
        self.reset()

    def reset(self) -> None:
        self.free: queue.Queue = queue.Queue()
        self.full: queue.Queue = queue.Queue()
        for _ in range(self.depth):
            self.free.put(np.zeros(self.fifo.shape, self.fifo.dtype))
        self.held = []

    def _get(self, source: queue.Queue):
        while True:
            try:
                return source.get(timeout=0.05)
            except queue.Empty:
                if self.fifo.stop.is_set():
                    raise _Stop from None

    def acquire(self, n: int):
        if n != 1:
            raise DesignError(f"{self.fifo.name}: acquire({n}): the executor takes one object at a time")
        buf = self._get(self.free if self.side == "prod" else self.full)
        self.held.append(buf)
        return buf

    def release(self, n: int) -> None:
        for _ in range(n):
            buf = self.held.pop(0)
            (self.full if self.side == "prod" else self.free).put(buf)

    # the DMA's side
    def take_full(self):
        return self._get(self.full)

    def give_free(self, buf) -> None:
        self.free.put(buf)

    def put_full(self, flat: np.ndarray) -> None:
        buf = self._get(self.free)
        buf.reshape(-1)[:] = flat
        self.full.put(buf)

    # IRON's links, on a consumer (forward, split) or the producer (join)
    def forward(self, placement=None, obj_type=None, depth: int | None = None, name: str | None = None,
                dims_to_stream=None, **_ignored) -> ObjectFifo:
        out = ObjectFifo(obj_type or self.fifo.obj_type, depth or self.depth, name or f"{self.fifo.name}_fwd",
                         dims_to_stream=dims_to_stream)
        self.fifo._link("forward", [self], [out.prod()], [0], placement)
        return out

    def split(self, offsets, placement=None, obj_types=None, names=None, depths=None, dims_to_stream=None,
              **_ignored) -> list[ObjectFifo]:
        outs = [ObjectFifo(t, (depths or [self.depth] * len(offsets))[i], (names or [None] * len(offsets))[i],
                           dims_to_stream=(dims_to_stream or [None] * len(offsets))[i])
                for i, t in enumerate(obj_types)]
        self.fifo._link("split", [self], [o.prod() for o in outs], list(offsets), placement)
        return outs

    def join(self, offsets, placement=None, obj_types=None, names=None, depths=None, **_ignored) -> list[ObjectFifo]:
        ins = [ObjectFifo(t, (depths or [self.depth] * len(offsets))[i], (names or [None] * len(offsets))[i])
               for i, t in enumerate(obj_types)]
        self.fifo._link("join", [i.cons() for i in ins], [self], list(offsets), placement)
        return ins


@dataclass
class _Link:
    """Objects copied through a memory tile: forward (one to one), split (parts of one object to
    several fifos) or join (several fifos' objects into parts of one)."""

    kind: str
    sources: list
    targets: list
    offsets: list
    placement: object

    def nbytes(self) -> int:
        """What the memory tile holds: the whole objects' buffers (consumed side of split and forward,
        produced side of join), shared by both sides of the link."""
        whole = self.targets[0] if self.kind == "join" else self.sources[0]
        return whole.depth * whole.fifo.nbytes

    def run(self) -> None:
        while True:
            if self.kind == "join":
                out = self.targets[0].acquire(1).reshape(-1)
                for src, offset in zip(self.sources, self.offsets):
                    part = src.acquire(1).reshape(-1)
                    out[offset:offset + part.size] = part
                    src.release(1)
                self.targets[0].release(1)
                continue
            whole = self.sources[0].acquire(1).reshape(-1)
            for dst, offset in zip(self.targets, self.offsets):
                part = dst.acquire(1).reshape(-1)
                part[:] = whole[offset:offset + part.size]
                dst.release(1)
            self.sources[0].release(1)


class Buffer:
    def __init__(self, obj_type, name: str | None = None, initial_value=None, **_ignored):
        self.type, self.name = obj_type, name
        shape, dtype = _shape_dtype(obj_type)
        self.array = np.zeros(shape, dtype) if initial_value is None else np.array(initial_value, dtype)
        self.nbytes = _nbytes(obj_type)


class Kernel:
    def __init__(self, name: str, object_file: str, arg_types: list):
        self.name, self.object_file, self.arg_types = name, object_file, arg_types

    def bind(self, lib) -> typing.Callable:
        """The kernel's function: from `lib`, the host build (ctypes), or a dict of Python functions
        taking the arrays themselves."""
        if isinstance(lib, dict):
            if self.name not in lib:
                raise DesignError(f"kernel {self.name} ({self.object_file}): not among the functions given")
            return lib[self.name]
        try:
            function = getattr(lib, self.name)
        except AttributeError:
            raise DesignError(f"kernel {self.name} ({self.object_file}): not in the host build") from None

        def call(*args):
            return function(*(_c_arg(a) for a in args))
        return call


def _c_arg(value):
    if isinstance(value, Buffer):
        value = value.array
    if isinstance(value, np.ndarray):
        if not value.flags.c_contiguous:
            raise DesignError("a kernel argument is not contiguous")
        return value.ctypes.data_as(ctypes.POINTER(ctypes.c_float if value.dtype == np.float32 else ctypes.c_uint16))
    if isinstance(value, (bool, int, np.integer)):
        return int(value)
    return float(value)


class Worker:
    def __init__(self, core_fn, fn_args=(), placement=None, while_true: bool = True, stack_size: int = STACK,
                 **_ignored):
        self.core_fn, self.fn_args, self.while_true, self.stack_size = core_fn, list(fn_args), while_true, stack_size

    def memory(self) -> list[tuple[str, int]]:
        """(what, bytes) of the data memory this worker's core holds."""
        out = [("stack", self.stack_size)]
        for a in self.fn_args:
            if isinstance(a, _Endpoint):
                out.append((f"fifo {a.fifo.name} ({a.side}, {a.depth} x {a.fifo.nbytes})", a.depth * a.fifo.nbytes))
            elif isinstance(a, Buffer):
                out.append((f"buffer {a.name}", a.nbytes))
        return out


@dataclass
class TensorAccessPattern:
    tensor_dims: tuple
    offset: int
    sizes: list
    strides: list

    def indices(self) -> np.ndarray:
        """Flat element indices in the order the DMA walks them."""
        if len(self.sizes) > DMA_DIMS:
            raise DesignError(f"an access pattern of {len(self.sizes)} dimensions: a DMA walks at most {DMA_DIMS}")
        grids = np.meshgrid(*[np.arange(s) * st for s, st in zip(self.sizes, self.strides)], indexing="ij")
        return (self.offset + sum(grids)).reshape(-1) if grids else np.array([self.offset])


@dataclass
class _Task:
    kind: str                  # "start", "fill", "drain", "finish" (a task group)
    args: tuple
    wait: bool = False
    group: object = None
    placement: object = None   # the shim tile of a fill or drain


@dataclass
class Runtime:
    tasks: list = field(default_factory=list)
    arg_types: tuple = ()

    @contextlib.contextmanager
    def sequence(self, *arg_types):
        self.arg_types = arg_types
        yield tuple(_Arg(i) for i in range(len(arg_types)))

    def start(self, *workers):
        self.tasks.append(_Task("start", workers))

    def fill(self, endpoint, source, tap=None, task_group=None, wait=False, placement=None):
        self.tasks.append(_Task("fill", (endpoint, source, tap), wait, task_group, placement))

    def drain(self, endpoint, dest, tap=None, task_group=None, wait=False, placement=None):
        self.tasks.append(_Task("drain", (endpoint, dest, tap), wait, task_group, placement))

    def task_group(self):
        return object()

    def finish_task_group(self, group) -> None:
        """Wait for every transfer of `group`."""
        self.tasks.append(_Task("finish", (group,)))


@dataclass(frozen=True)
class _Arg:
    index: int


class Program:
    def __init__(self, device, runtime: Runtime):
        self.device, self.runtime = device, runtime

    def resolve_program(self, placer=None) -> HostProgram:
        """The program of the fifos and links made since the last one was resolved."""
        made = list(_CREATED or ())
        if _CREATED is not None:
            _CREATED.clear()
        return HostProgram(self.runtime, made)


class SequentialPlacer:
    pass


@dataclass(frozen=True)
class Tile:
    """A placement: column and row of the array (row 0 shim, 1 memory tiles, 2 and up cores)."""

    col: int | None
    row: int | None


class _Device:
    def __init__(self, columns: int):
        self.columns = columns


def _devices() -> dict:
    return {"NPU1": lambda: _Device(4), "NPU2": lambda: _Device(8), "NPU1Col1": lambda: _Device(1),
            "NPU1Col2": lambda: _Device(2), "NPU1Col4": lambda: _Device(4), "NPU2Col1": lambda: _Device(1)}


def _where(placement) -> str:
    return f"({placement.col}, {placement.row})" if isinstance(placement, Tile) else str(placement)


def _limit(used: int, limit: int, what: str, why: str) -> None:
    if used > limit:
        raise DesignError(f"{what}: {why}")


def _check_pattern(what: str, limits: DmaLimits, sizes: list, strides: list, itemsize: int) -> None:
    """One access pattern (outer dimension first) as the tile's buffer descriptor takes it."""
    _limit(len(sizes), limits.dims, f"{what} has {len(sizes)} dimensions",
           f"a {limits.tile} DMA walks at most {limits.dims}")
    inner_bytes = sizes[-1] * itemsize
    if itemsize < 4 and sizes[-1] > 1 and strides[-1] != 1:
        raise DesignError(f"{what}: its innermost stride is {strides[-1]}: below 32-bit data it must be 1")
    if inner_bytes % 4:
        raise DesignError(f"{what}: its innermost dimension moves {inner_bytes} bytes, not a multiple of 4")
    _limit(inner_bytes // 4, limits.wrap, f"{what}: its innermost dimension is {inner_bytes // 4} words",
           f"a {limits.tile} DMA takes at most {limits.wrap}")
    if len(sizes) >= 2:
        _limit(sizes[-2], limits.wrap, f"{what}: its second dimension has size {sizes[-2]}",
               f"a {limits.tile} DMA takes at most {limits.wrap}")
    if len(sizes) == 4:
        _limit(sizes[0], ITERATIONS, f"{what}: its fourth dimension (the iteration) has size {sizes[0]}",
               f"a DMA iterates at most {ITERATIONS} times")
    for size, stride in zip(sizes[:-1], strides[:-1]):
        if size > 1 and stride * itemsize % 4:
            raise DesignError(f"{what}: a stride of {stride * itemsize} bytes is not a multiple of 4")
        _limit(stride * itemsize // 4, limits.stride, f"{what}: a stride of {stride * itemsize // 4} words",
               f"a {limits.tile} DMA's largest is {limits.stride}")


# ---- running a program ---------------------------------------------------------------------------

@dataclass
class RunReport:
    workers: int
    memory: list[list[tuple[str, int]]]        # per worker: (what, bytes)
    moved: dict[str, int]                      # objects each fifo carried


@dataclass
class Trace:
    calls: list[collections.Counter]           # per worker: (kernel name, its integer arguments) -> calls
    streamed: list[dict[str, int]]             # per worker: bytes through each of its fifo endpoints (a DMA channel)
    ddr_bytes: int                             # moved by the runtime sequence's fills and drains


class _TraceKernel:
    def __init__(self, name: str, counts: collections.Counter):
        self.name, self.counts = name, counts

    def __call__(self, *args):
        self.counts[(self.name, tuple(int(a) for a in args if isinstance(a, (int, np.integer))))] += 1


class _TraceFifo:
    def __init__(self, endpoint: _Endpoint):
        self.endpoint, self.acquired = endpoint, 0

    def acquire(self, n: int):
        self.acquired += n

    def release(self, n: int) -> None:
        pass


class HostProgram:
    """A resolved design: run(*arrays) runs its sequence on the host."""

    def __init__(self, runtime: Runtime, made: list):
        self.runtime = runtime
        self.workers = [w for t in runtime.tasks if t.kind == "start" for w in t.args]
        self.fifos = [f for f in made if isinstance(f, ObjectFifo)]
        self.links = [k for k in made if isinstance(k, _Link)]
        self._merge_runtime_consumers()

    def _merge_runtime_consumers(self) -> None:
        """The runtime sequence's consumers of one fifo are one consumer (IRON merges the cons() handles
        its drains take), so a drain may call cons() each time."""
        drains = [t for t in self.runtime.tasks if t.kind == "drain"]
        for f in self.fifos:
            mine = [t for t in drains if t.args[0].fifo is f]
            if len(mine) < 2:
                continue
            keep = mine[0].args[0]
            for t in mine[1:]:
                if t.args[0] is not keep:
                    if t.args[0] in f.consumers:
                        f.consumers.remove(t.args[0])
                    t.args = (keep, *t.args[1:])

    def check_consumers(self) -> None:
        """Every consumer is read by a worker, a drain or a link: each cons() call adds a consumer (the
        producer's objects go to all of them), and one nobody reads stalls the rest."""
        readers = {id(a) for w in self.workers for a in w.fn_args if isinstance(a, _Endpoint)}
        readers |= {id(t.args[0]) for t in self.runtime.tasks if t.kind == "drain"}
        readers |= {id(e) for link in self.links for e in link.sources}
        for f in self.fifos:
            idle = sum(id(c) not in readers for c in f.consumers)
            if idle:
                raise DesignError(f"fifo {f.name}: {idle} of its {len(f.consumers)} consumers are read by nothing "
                                  "(each cons() call adds a consumer: call it once per reader)")

    def check_memory(self) -> None:
        for i, w in enumerate(self.workers):
            parts = w.memory()
            total = sum(b for _, b in parts)
            if total > CORE_MEMORY:
                listed = ", ".join(f"{what} {b}" for what, b in parts)
                raise DesignError(f"worker {i} needs {total} bytes of data memory, a core has {CORE_MEMORY}: {listed}")
        tiles: dict[str, int] = {}
        for link in self.links:
            where = str(getattr(link.placement, "__dict__", link.placement))
            tiles[where] = tiles.get(where, 0) + link.nbytes()
        for where, total in tiles.items():
            if total > MEMORY_TILE:
                raise DesignError(f"the memory tile {where} holds {total} bytes of linked fifos, it has {MEMORY_TILE}")

    def check_dma(self) -> None:
        """Channels, buffer descriptors and access patterns within what each tile's DMA has."""
        for i, w in enumerate(self.workers):
            ends = [a for a in w.fn_args if isinstance(a, _Endpoint)]
            for side, direction in (("cons", "input"), ("prod", "output")):
                names = [e.fifo.name for e in ends if e.side == side]
                _limit(len(names), CORE.channels, f"worker {i} has {len(names)} {direction} fifos ({', '.join(names)})",
                       f"a core has {CORE.channels} DMA channels each way")
        per_tile: dict[str, list[int]] = {}
        for link in self.links:
            if link.placement is not None:
                inputs = len(link.sources) if link.kind == "join" else 1
                outputs = 1 if link.kind == "join" else len(link.targets)
                used = per_tile.setdefault(_where(link.placement), [0, 0])
                used[0], used[1] = used[0] + inputs, used[1] + outputs
        for where, (inputs, outputs) in per_tile.items():
            _limit(max(inputs, outputs), MEM_TILE.channels,
                   f"the memory tile {where} links {inputs} input and {outputs} output streams",
                   f"it has {MEM_TILE.channels} DMA channels each way")
        for kind in ("fill", "drain"):
            ends: dict[str, set] = {}
            for t in self.runtime.tasks:
                if t.kind == kind and t.placement is not None:
                    ends.setdefault(_where(t.placement), set()).add(t.args[0].fifo.name)
            for where, names in ends.items():
                listed = ", ".join(sorted(names))
                _limit(len(names), SHIM.channels, f"the shim tile {where} {kind}s {len(names)} fifos ({listed})",
                       f"it has {SHIM.channels} DMA channels each way")
        self._check_bds()
        self._check_patterns()

    def _check_bds(self) -> None:
        """Transfers awaited together (a task group, or the sequence's ungrouped ones) hold one buffer
        descriptor each on their shim tile until the group is finished."""
        in_flight: dict[tuple, int] = {}
        for t in self.runtime.tasks:
            if t.kind in ("fill", "drain") and t.placement is not None:
                key = (id(t.group), _where(t.placement))
                in_flight[key] = in_flight.get(key, 0) + 1
                _limit(in_flight[key], SHIM.bds, f"{in_flight[key]} transfers on the shim tile {key[1]} at once",
                       f"it has {SHIM.bds} buffer descriptors: finish a task group sooner")
            elif t.kind == "finish":
                in_flight = {k: v for k, v in in_flight.items() if k[0] != id(t.args[0])}

    def _check_patterns(self) -> None:
        for t in self.runtime.tasks:
            if t.kind in ("fill", "drain") and t.args[2] is not None:
                _, dtype = _shape_dtype(self.runtime.arg_types[t.args[1].index])
                tap = t.args[2]
                _check_pattern(f"{t.kind} of {t.args[0].fifo.name}", SHIM, list(tap.sizes), list(tap.strides),
                               dtype.itemsize)
        link_targets = {id(e.fifo) for link in self.links for e in link.targets}      # memory tiles produce these
        for f in self.fifos:
            if f.dims_to_stream:
                limits = MEM_TILE if id(f) in link_targets else CORE
                _check_pattern(f"dims_to_stream of {f.name}", limits, [d[0] for d in f.dims_to_stream],
                               [d[1] for d in f.dims_to_stream], f.dtype.itemsize)

    def trace(self) -> Trace:
        """What the design does, without data: each worker's core function run once (one pass of a
        while_true worker) with counting kernels and fifos that hand out placeholders, and the bytes
        its runtime sequence moves between DDR and the array."""
        calls, streamed = [], []
        for w in self.workers:
            counts: collections.Counter = collections.Counter()
            fifos = {id(a): _TraceFifo(a) for a in w.fn_args if isinstance(a, _Endpoint)}
            args = [_TraceKernel(a.name, counts) if isinstance(a, Kernel) else
                    fifos[id(a)] if isinstance(a, _Endpoint) else a for a in w.fn_args]
            w.core_fn(*args)
            calls.append(counts)
            streamed.append({f.endpoint.fifo.name: f.acquired * f.endpoint.fifo.nbytes for f in fifos.values()})
        moved = 0
        for t in self.runtime.tasks:
            if t.kind in ("fill", "drain"):
                shape, dtype = _shape_dtype(self.runtime.arg_types[t.args[1].index])
                elements = int(np.prod(t.args[2].sizes)) if t.args[2] is not None else int(np.prod(shape))
                moved += elements * dtype.itemsize
        return Trace(calls, streamed, moved)

    def run(self, *arrays: np.ndarray, lib=None, check_limits: bool = True) -> RunReport:
        """Run the sequence with `arrays` as its arguments (written in place by drains)."""
        self.check_consumers()
        if check_limits:
            self.check_memory()
            self.check_dma()
        lib = host.load() if lib is None else lib
        stop = threading.Event()
        for f in self.fifos:
            f.reset(stop)
        errors: list[BaseException] = []
        workers, transfers = [], []

        def spawn(target, *args, after: threading.Thread | None = None) -> threading.Thread:
            def guarded():
                try:
                    while after is not None and after.is_alive():     # a DMA channel runs its tasks in turn
                        after.join(0.05)
                        if stop.is_set():
                            return
                    target(*args)
                except _Stop:
                    pass
                except BaseException as e:      # reported by run(), with the others
                    errors.append(e)
                    stop.set()
            t = threading.Thread(target=guarded, daemon=True)
            t.start()
            return t

        try:
            workers += [spawn(f.move) for f in self.fifos] + [spawn(link.run) for link in self.links]
            groups: dict[int, list] = {}
            last: dict[int, threading.Thread] = {}          # per fifo endpoint, its latest transfer
            for task in self.runtime.tasks:
                if task.kind == "start":
                    workers.extend(spawn(self._work, w, lib) for w in task.args)
                    continue
                if task.kind == "finish":                   # the group's transfers end here
                    for t in groups.pop(id(task.args[0]), []):
                        self._join(t, errors)
                    continue
                endpoint, tensor, tap = task.args
                flat = arrays[tensor.index].reshape(-1)
                order = np.arange(flat.size) if tap is None else \
                    TensorAccessPattern(None, tap.offset, list(tap.sizes), list(tap.strides)).indices()
                t = spawn(self._fill if task.kind == "fill" else self._drain, endpoint, flat, order,
                          after=last.get(id(endpoint)))
                last[id(endpoint)] = t
                transfers.append(t)
                groups.setdefault(id(task.group), []).append(t)
            for t in transfers:                             # and every transfer by the end of the sequence
                self._join(t, errors)
        finally:
            stop.set()
            for t in workers + transfers:
                t.join(1.0)
        if errors:
            raise errors[0]
        return RunReport(len(self.workers), [w.memory() for w in self.workers], {f.name: f.moved for f in self.fifos})

    def _join(self, thread, errors) -> None:
        thread.join(TIMEOUT)
        if errors:
            raise errors[0]
        if thread.is_alive():
            states = "; ".join(f.state() for f in self.fifos)
            raise DesignError(f"the design made no progress for {TIMEOUT:g} s (deadlock?): {states}")

    @staticmethod
    def _work(worker: Worker, lib) -> None:
        args = [a.array if isinstance(a, Buffer) else a.bind(lib) if isinstance(a, Kernel) else a
                for a in worker.fn_args]
        for _ in itertools.count():
            worker.core_fn(*args)
            if not worker.while_true:
                return

    @staticmethod
    def _fill(endpoint: _Endpoint, flat: np.ndarray, order: np.ndarray) -> None:
        for buf, where in HostProgram._objects(endpoint, order, "fill"):
            buf.reshape(-1)[:] = flat[where]
            endpoint.release(1)

    @staticmethod
    def _drain(endpoint: _Endpoint, flat: np.ndarray, order: np.ndarray) -> None:
        for buf, where in HostProgram._objects(endpoint, order, "drain"):
            flat[where] = buf.reshape(-1)
            endpoint.release(1)

    @staticmethod
    def _objects(endpoint: _Endpoint, order: np.ndarray, what: str):
        """(acquired object, the tensor elements it carries) for each object the transfer moves."""
        size = int(np.prod(endpoint.fifo.shape))
        if len(order) % size:
            raise DesignError(f"{what} of {endpoint.fifo.name}: {len(order)} elements is not a whole number of "
                              f"{size}-element objects")
        for start in range(0, len(order), size):
            yield endpoint.acquire(1), order[start:start + size]


# ---- the `aie` modules ---------------------------------------------------------------------------

def _modules() -> dict[str, types.ModuleType]:
    def module(name, **attrs):
        m = types.ModuleType(name)
        m.__dict__.update(attrs)
        return m

    iron = module("aie.iron", Buffer=Buffer, Kernel=Kernel, ObjectFifo=ObjectFifo, Program=Program,
                  Runtime=Runtime, Worker=Worker)
    device = dict(_devices(), Tile=Tile, AnyComputeTile=Tile(None, None), AnyMemTile=Tile(None, 1))
    return {
        "aie": module("aie", iron=iron), "aie.iron": iron,
        "aie.iron.controlflow": module("aie.iron.controlflow", range_=range),
        "aie.iron.placers": module("aie.iron.placers", SequentialPlacer=SequentialPlacer),
        "aie.iron.device": module("aie.iron.device", **device),
        "aie.iron.phys": module("aie.iron.phys"), "aie.iron.phys.device": module("aie.iron.phys.device", **device),
        "aie.iron.phys.tile": module("aie.iron.phys.tile", Tile=Tile),
        "aie.iron.dataflow": module("aie.iron.dataflow", ObjectFifo=ObjectFifo),
        "aie.iron.runtime": module("aie.iron.runtime", Runtime=Runtime),
        "aie.iron.program": module("aie.iron.program", Program=Program),
        "aie.iron.worker": module("aie.iron.worker", Worker=Worker),
        "aie.iron.kernels": module("aie.iron.kernels", BinKernel=Kernel, Kernel=Kernel),
        "aie.helpers": module("aie.helpers"), "aie.helpers.taplib": module("aie.helpers.taplib",
                                                                        TensorAccessPattern=TensorAccessPattern),
        "aie.helpers.taplib.tap": module("aie.helpers.taplib.tap", TensorAccessPattern=TensorAccessPattern),
    }


@contextlib.contextmanager
def iron_modules():
    """The `aie` modules above in sys.modules (the real ones, if any, put back afterwards)."""
    global _CREATED
    fake = _modules()
    saved = {name: sys.modules.get(name) for name in fake}
    sys.modules.update(fake)
    outer, _CREATED = _CREATED, []
    try:
        yield
    finally:
        _CREATED = outer
        for name, previous in saved.items():
            if previous is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = previous


FOLDERS = {"chain": "matmul"}       # designs defined in another design's script


@functools.cache
def design(kernel: str) -> types.ModuleType:
    """The design script kernels/aie/<kernel>/design.py as a module (loaded once)."""
    path = host.HERE / kernel / "design.py"
    spec = importlib.util.spec_from_file_location(f"amanuensis_design_{kernel}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def resolve_design(kernel: str, *args) -> HostProgram:
    """kernels/aie/<kernel>/design.py's amanuensis_<kernel>(dev, *args) (the chain's in matmul/), resolved
    with resolve()."""
    return resolve(getattr(design(FOLDERS.get(kernel, kernel)), f"amanuensis_{kernel}"), *args)


def resolve(design_fn, *args, **kwargs) -> HostProgram:
    """Build a design (e.g. amanuensis_matmul) for a Phoenix-sized array with the host's IRON."""
    with iron_modules():
        return design_fn(_devices()["NPU1"](), *args, **kwargs)
