"""Each emulated NPU kernel against its fp32 counterpart, on the inputs of a real forward pass.

One forward pass on the fp32 `cpu` backend captures every node's inputs; each node's kernel then
runs on the `emu` backend (the NPU kernels' bf16 numerics) with exactly those inputs and is
compared with the fp32 output of the same node: max abs error, relative error
||emu − fp32|| / ||fp32||, and Pearson correlation (the front end's node compares the emulated
mel kernel with the float64 log-mel). Earlier NPU Whisper kernels reported 0.91 (mel) and 0.95
(attention) correlation; ours must reach 0.9999 on every node.

The command is `python -m encoder.kernel_report AUDIO` (it loads a model and audio, which this
package does not); `python -m kernels.report` starts it in its place.
"""
from __future__ import annotations

import os
import sys
from dataclasses import asdict, dataclass

import numpy as np

from kernels.frontend import pad_window
from kernels.graph import Graph
from kernels.runner import Runner

MIN_CORRELATION = 0.9999


@dataclass(frozen=True)
class KernelAccuracy:
    node: str
    kernel: str
    max_abs: float
    rel_err: float               # ||emu − fp32|| / ||fp32||
    correlation: float

    @property
    def ok(self) -> bool:
        return self.correlation >= MIN_CORRELATION

    def to_dict(self) -> dict:
        return {**asdict(self), "ok": self.ok}


def accuracy(node: str, kernel: str, ours: np.ndarray, ref: np.ndarray) -> KernelAccuracy:
    a, b = ours.astype(np.float64).ravel(), ref.astype(np.float64).ravel()
    correlation = float(np.corrcoef(a, b)[0, 1]) if a.std() and b.std() else float(np.array_equal(a, b))
    return KernelAccuracy(node, kernel, float(np.abs(a - b).max()),
                          float(np.linalg.norm(a - b) / (np.linalg.norm(b) or 1)), correlation)


def kernel_report(graph: Graph, weights: dict, window: np.ndarray, cpu, emu) -> list[KernelAccuracy]:
    """Every node of `graph` (whose input is one window of 16 kHz samples, at most 30 s), `emu`
    against `cpu` on the inputs of `cpu`'s pass."""
    fp32 = Runner(graph, dict(weights), cpu).run(pad_window(window), keep="all").tensors   # cpu's layout
    on_emu = Runner(graph, weights, emu)
    rows = []
    for node in graph.nodes:
        out = on_emu.call(node, fp32)[0]           # the emulated kernel on the fp32 pass's own inputs
        rows.append(accuracy(node.name, node.kernel, out, fp32[node.name]))
    return rows


def format_report(rows: list[KernelAccuracy]) -> str:
    lines = [f"{'node':32} {'kernel':10} {'max abs':>10} {'rel err':>10} {'correlation':>12}  "
             f"ok (>= {MIN_CORRELATION})"]
    for r in rows:
        lines.append(f"{r.node:32} {r.kernel:10} {r.max_abs:10.2e} {r.rel_err:10.2e} {r.correlation:12.7f}  "
                     f"{'yes' if r.ok else 'NO'}")
    worst: dict[str, float] = {}
    for r in rows:
        worst[r.kernel] = min(worst.get(r.kernel, 1.0), r.correlation)
    lines.append("\nworst correlation per kernel: " + ", ".join(f"{k} {v:.7f}" for k, v in worst.items()))
    return "\n".join(lines)


if __name__ == "__main__":
    os.execv(sys.executable, [sys.executable, "-m", "encoder.kernel_report", *sys.argv[1:]])
