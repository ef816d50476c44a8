"""Run a layer graph on a backend, recording which backend ran each node and how long it took."""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from kernels.errors import AmanuensisError
from kernels.graph import Graph, Node


@dataclass(frozen=True)
class NodeRecord:
    """One node of one run: what ran it, how long it took."""

    node: str
    kernel: str
    backend: str                 # what actually ran the node ("npu", "cpu", "emu")
    ms: float
    flops: int
    fallback: str | None = None  # why it did not run where asked, if it did not
    grouped: bool = False        # computed by an earlier node's call (one NPU dispatch for a chain): ms 0

    @property
    def gflops(self) -> float | None:
        """Achieved GFLOP/s."""
        return self.flops / self.ms / 1e6 if self.ms > 0 else None

    def to_dict(self) -> dict:
        """As the JSON outputs carry it: name, kernel, backend, ms, achieved GFLOP/s, fallback."""
        gflops = self.gflops
        return {"node": self.node, "kernel": self.kernel, "backend": self.backend, "ms": round(self.ms, 3),
                "gflops": None if gflops is None else round(gflops, 1), "fallback": self.fallback,
                "grouped": self.grouped}


@dataclass
class RunResult:
    output: np.ndarray                                     # the graph's first output
    tensors: dict[str, np.ndarray] = field(default_factory=dict)   # graph outputs and tensors asked for
    records: list[NodeRecord] = field(default_factory=list)


@dataclass(frozen=True)
class NodeSummary:
    """One node over every run of a profile."""

    node: str
    kernel: str
    backends: tuple[str, ...]    # what ran it, sorted
    fallbacks: tuple[str, ...]   # why it fell back, sorted (empty when it never did)
    ms: float                    # total over the runs
    gflop: float                 # total over the runs

    @property
    def gflops(self) -> float:
        return self.gflop / self.ms * 1e3 if self.ms else 0.0


@dataclass
class Profile:
    """Per-node timing of graph runs: one list of NodeRecord per run (a 30 s window, for Whisper)."""

    runs: list[list[NodeRecord]] = field(default_factory=list)

    def add(self, result: RunResult) -> None:
        self.runs.append(result.records)

    def nodes(self) -> dict[str, NodeSummary]:
        """Each node summed over the runs, in graph order."""
        rows: dict[str, list[NodeRecord]] = {}
        for run in self.runs:
            for r in run:
                rows.setdefault(r.node, []).append(r)
        return {name: NodeSummary(name, rs[0].kernel, tuple(sorted({r.backend for r in rs})),
                                  tuple(sorted({r.fallback for r in rs if r.fallback})),
                                  sum(r.ms for r in rs), sum(r.flops for r in rs) / 1e9)
                for name, rs in rows.items()}

    def to_json(self) -> list[list[dict]]:
        return [[r.to_dict() for r in run] for run in self.runs]

    def format(self) -> str:
        """Per-node table summed over the runs: backend(s) that ran it (* = fell back), ms, GFLOP/s."""
        nodes = self.nodes()
        lines = [f"{'node':32} {'kernel':10} {'backend':8} {'ms':>9} {'GFLOP/s':>8}   ({len(self.runs)} window(s); "
                 f"* = fell back)"]
        for s in nodes.values():
            backends = ",".join(s.backends) + ("*" if s.fallbacks else "")
            lines.append(f"{s.node:32} {s.kernel:10} {backends:8} {s.ms:9.2f} {s.gflops:8.1f}")
        lines.append(f"{'total':32} {'':10} {'':8} {sum(s.ms for s in nodes.values()):9.2f}")
        if any(r.grouped for run in self.runs for r in run):
            lines.append("nodes at 0 ms ran in the dispatch of the node above them (an NPU chain)")
        per_window = self.nodes_per_window()
        if per_window:
            parts = [f"{n:g} {'npu dispatches' if b == 'npu' else f'on {b}'}" for b, n in per_window.items()]
            lines.append("per window: " + ", ".join(parts))
        return "\n".join(lines)

    def nodes_per_window(self) -> dict[str, float]:
        """Calls per window on each backend, most first (on the npu, each is one dispatch: the nodes of a
        chain count once)."""
        counts: dict[str, int] = {}
        for run in self.runs:
            for r in run:
                if not r.grouped:
                    counts[r.backend] = counts.get(r.backend, 0) + 1
        return {b: n / len(self.runs) for b, n in sorted(counts.items(), key=lambda kv: -kv[1])}


class Runner:
    """Executes `graph` with `weights` on `backend`; frees each activation after its last use.

    With strict=True any op that falls back from the requested backend is an error. The runner
    takes `weights` over: each node's matrix in it is replaced, in place, by the form the backend's
    kernel takes (Backend.prepare_weight), so the plain copy is freed matrix by matrix (loading
    large-v3 would otherwise hold its encoder weights twice). Pass a copy of a dict you reuse.
    """

    def __init__(self, graph: Graph, weights: dict[str, np.ndarray], backend, strict: bool = False):
        self.graph, self.backend, self.strict = graph, backend, strict
        self._last_use = graph.last_use()
        self.weights = weights
        for node in graph.nodes:
            if not backend.supports(node.kernel):
                raise AmanuensisError(f"backend {backend.name!r} has no kernel {node.kernel!r} (node {node.name})")
            if node.weights:
                self.weights[node.weights[0]] = backend.prepare_weight(node.kernel, self.weights[node.weights[0]])
        backend.prepare_graph(graph, self.weights)
        self._groups = {names[0]: names for names in backend.dispatch_groups(graph)}
        self._index = {node.name: i for i, node in enumerate(graph.nodes)}

    def _run_group(self, names: tuple[str, ...], values: dict, records: list, failed: dict) -> bool:
        """Run a group of nodes as one backend call; False (with the reason in `failed`, for each node's
        record) when it cannot: the caller then runs them one by one."""
        made = set(names)
        outside = {t for name in names for t in self.graph.node(name).activation_inputs} - made
        if any(name in values for name in names) or any(t not in values for t in outside):
            return False                            # part of it given, or an input upstream of what is given
        calls = []
        for name in names:
            node = self.graph.node(name)
            args = tuple(None if t in made else values[t] for t in node.inputs) + \
                tuple(self.weights[w] for w in node.weights)
            kwargs = dict(node.params)
            if node.residual:
                kwargs["residual"] = None if node.residual in made else values[node.residual]
            calls.append((node, args, kwargs))
        start = time.perf_counter()
        outs, ran_on, fallback = self.backend.run_group(calls)
        if outs is None:
            failed.update(dict.fromkeys(names, fallback))
            return False
        ms = (time.perf_counter() - start) * 1e3
        for n, (node, _, _) in enumerate(calls):
            values[node.name] = outs[node.name]
            records.append(NodeRecord(node.name, node.kernel, ran_on, ms if n == 0 else 0.0, node.flops, None,
                                      grouped=n > 0))
        return True

    def _run_node(self, node: Node, values: dict, records: list, why: str | None = None) -> None:
        """Run one node; why: the reason its group could not run as one call (reported where the node then
        ran off the backend)."""
        start = time.perf_counter()
        values[node.name], ran_on, fallback = self.call(node, values)
        ms = (time.perf_counter() - start) * 1e3
        if why and ran_on != self.backend.name:
            fallback = f"{why}; {fallback}" if fallback else why
        if fallback and self.strict:
            raise AmanuensisError(f"node {node.name}: {fallback}; ran on {ran_on} instead of "
                                  f"{self.backend.name}, which --strict forbids")
        records.append(NodeRecord(node.name, node.kernel, ran_on, ms, node.flops, fallback))

    def _free(self, node: Node, values: dict) -> None:
        """Drop the tensors whose last use is `node`."""
        i = self._index[node.name]
        for t in set(node.activation_inputs):
            if self._last_use[t] == i:
                values.pop(t, None)

    def call(self, node: Node, values: dict, backend=None):
        """(output, what ran it, fallback reason) of one node on `backend` (default: the runner's),
        its activations taken from `values`."""
        args = tuple(values[t] for t in node.inputs) + tuple(self.weights[w] for w in node.weights)
        kwargs = dict(node.params)
        if node.residual:
            kwargs["residual"] = values[node.residual]
        return (backend or self.backend).run(node.kernel, args, kwargs)

    def _given(self, inputs) -> dict[str, np.ndarray]:
        """The tensors a run starts from, checked: the graph's input, or tensors further down."""
        given = {self.graph.input: inputs} if isinstance(inputs, np.ndarray) else dict(inputs)
        for name, x in given.items():
            expected = self.graph.shapes.get(name)
            if expected is None:
                raise AmanuensisError(f"no tensor named {name!r} in the graph")
            if x.shape != expected:
                raise AmanuensisError(f"graph input {name!r} has shape {x.shape}, the graph expects {expected}")
            given[name] = np.ascontiguousarray(x, dtype=np.float32)
        return given

    def run(self, inputs, keep=()) -> RunResult:
        """Run the graph. inputs: the graph's input (fp32, in the graph's layout), or {tensor: array}
        to start further down: the nodes that make a given tensor, and those before them, are
        skipped. keep: tensor names, or "all"."""
        values = self._given(inputs)
        given = sorted(values)
        keep = set(self.graph.shapes) if keep == "all" else set(keep)
        unknown = keep - set(self.graph.shapes)
        if unknown:
            raise AmanuensisError(f"no tensor named {sorted(unknown)} in the graph")
        kept = {t: values[t] for t in keep & set(values)}
        records: list[NodeRecord] = []
        failed: dict[str, str] = {}                 # node -> why its group could not run as one call
        ran: set[str] = set()                       # nodes run with a group (their outputs may be freed since)
        with self.backend.session():
            for node in self.graph.nodes:
                if node.name in values or node.name in ran or any(t not in values for t in node.activation_inputs):
                    continue                                        # given, or upstream of what is given
                group = self._groups.get(node.name)
                done = self._run_group(group, values, records, failed) if group else False
                ran.update(group if done else ())
                for n in [self.graph.node(name) for name in group] if done else [node]:
                    if not done:
                        self._run_node(n, values, records, failed.pop(n.name, None))
                    if n.name in keep:
                        kept[n.name] = np.asarray(values[n.name])    # read back, if the device holds it
                    self._free(n, values)
        missing = [t for t in self.graph.outputs if t not in values]
        if missing:
            raise AmanuensisError(f"graph outputs {missing} cannot be computed from {given}")
        kept.update({t: np.asarray(values[t]) for t in self.graph.outputs})
        return RunResult(kept[self.graph.outputs[0]], kept, records)
