"""Run a layer graph on a backend, recording which backend ran each node and how long it took."""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from encoder.errors import AmanuensisError
from encoder.graph import INPUT, OUTPUT, Graph, Node


@dataclass(frozen=True)
class NodeRecord:
    node: str
    kernel: str
    backend: str                 # what actually ran the node ("npu", "cpu", "emu", "host")
    ms: float
    flops: int
    fallback: str | None = None  # why it did not run where asked, if it did not


@dataclass
class RunResult:
    output: np.ndarray                                     # (n_audio_ctx, d_model) encoder output
    tensors: dict[str, np.ndarray] = field(default_factory=dict)   # graph outputs and tensors asked for
    records: list[NodeRecord] = field(default_factory=list)

    def profile(self) -> list[dict]:
        """Per node: name, kernel, backend, time, FLOPs, achieved GFLOP/s."""
        return [{"node": r.node, "kernel": r.kernel, "backend": r.backend, "ms": round(r.ms, 3),
                 "gflops": round(r.flops / r.ms / 1e6, 1) if r.ms > 0 else None, "fallback": r.fallback}
                for r in self.records]


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

    def _call(self, node: Node, values: dict, backend=None):
        """(output, what ran it, fallback reason) of one node on `backend` (default: the runner's)."""
        args = tuple(values[t] for t in node.inputs) + tuple(self.weights[w] for w in node.weights)
        kwargs = dict(node.params)
        if node.residual:
            kwargs["residual"] = values[node.residual]
        return (backend or self.backend).run(node.kernel, args, kwargs)

    def run(self, mel: np.ndarray, keep=()) -> RunResult:
        """Run one window. mel: (n_mels, frames) as Whisper lays it out. keep: tensor names, or "all"."""
        expected = self.graph.shapes[INPUT][::-1]
        if mel.shape != expected:
            raise AmanuensisError(f"mel input has shape {mel.shape}, the model expects {expected}")
        keep_all = keep == "all"
        keep = set(self.graph.shapes) if keep_all else set(keep)
        unknown = keep - set(self.graph.shapes)
        if unknown:
            raise AmanuensisError(f"no tensor named {sorted(unknown)} in the graph")
        values = {INPUT: np.ascontiguousarray(mel.T, dtype=np.float32)}   # time-major (frames, n_mels)
        kept = {INPUT: values[INPUT]} if INPUT in keep else {}
        records = []
        with self.backend.session():
            for i, node in enumerate(self.graph.nodes):
                start = time.perf_counter()
                values[node.name], ran_on, fallback = self._call(node, values)
                ms = (time.perf_counter() - start) * 1e3
                if fallback and self.strict:
                    raise AmanuensisError(f"node {node.name}: {fallback}; ran on {ran_on} instead of "
                                          f"{self.backend.name}, which --strict forbids")
                records.append(NodeRecord(node.name, node.kernel, ran_on, ms, node.flops, fallback))
                if node.name in keep:
                    kept[node.name] = values[node.name]
                for t in set(node.activation_inputs):
                    if self._last_use[t] == i:
                        del values[t]
        kept.update({t: values[t] for t in self.graph.outputs})
        return RunResult(values[OUTPUT], kept, records)


def format_profile(profiles: list[list[dict]]) -> str:
    """Per-node table summed over windows: backend(s) that ran it, total ms, GFLOP/s."""
    total: dict[str, dict] = {}
    for window in profiles:
        for row in window:
            t = total.setdefault(row["node"], {"kernel": row["kernel"], "backends": set(), "ms": 0.0, "gflop": 0.0})
            t["backends"].add(row["backend"] + ("*" if row.get("fallback") else ""))
            t["ms"] += row["ms"]
            if row["gflops"]:
                t["gflop"] += row["gflops"] * row["ms"] / 1e3
    lines = [f"{'node':32} {'kernel':10} {'backend':8} {'ms':>9} {'GFLOP/s':>8}   ({len(profiles)} window(s); "
             f"* = fell back)"]
    for name, t in total.items():
        rate = t["gflop"] / t["ms"] * 1e3 if t["ms"] else 0.0
        lines.append(f"{name:32} {t['kernel']:10} {','.join(sorted(t['backends'])):8} {t['ms']:9.2f} {rate:8.1f}")
    lines.append(f"{'total':32} {'':10} {'':8} {sum(t['ms'] for t in total.values()):9.2f}")
    return "\n".join(lines)
