"""A layer graph of kernel calls: nodes with their shapes, FLOPs and bytes, and a buffer plan.

Graphs are built by the model's code (encoder/network.py builds Whisper's encoder from its
dims) and run by kernels.runner on a backend; nothing here knows Whisper.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

FP32 = 4


@dataclass(frozen=True)
class Node:
    name: str                    # also the name of its output tensor
    kernel: str                  # a name from kernels.interface.KERNELS
    inputs: tuple[str, ...]      # activation tensors, passed first
    weights: tuple[str, ...]     # weight tensors, passed after the inputs
    shape: tuple[int, int]       # output shape (T, C)
    flops: int                   # matmul FLOPs + one per element per elementwise step
    params: tuple = ()           # keyword arguments for the kernel, as (key, value) pairs
    residual: str | None = None  # activation tensor added by the kernel's epilogue

    @property
    def activation_inputs(self) -> tuple[str, ...]:
        return self.inputs + ((self.residual,) if self.residual else ())


@dataclass(frozen=True)
class Buffer:
    """One reusable activation buffer of a plan, and the tensors it holds in turn."""

    index: int
    bytes: int
    tensors: tuple[str, ...]


@dataclass
class Graph:
    input: str                            # the one input tensor
    nodes: list[Node]
    shapes: dict[str, tuple]              # every activation tensor, the input included
    weight_shapes: dict[str, tuple] = field(default_factory=dict)
    outputs: tuple[str, ...] = ()         # tensors handed back by every run; the first is the output

    def node(self, name: str) -> Node:
        return next(n for n in self.nodes if n.name == name)

    @property
    def flops(self) -> int:
        return sum(n.flops for n in self.nodes)

    def node_bytes(self, node: Node) -> int:
        """fp32 bytes the node reads (activations, weights) and writes."""
        elements = sum(math.prod(self.shapes[t]) for t in node.activation_inputs)
        elements += sum(math.prod(self.weight_shapes[w]) for w in node.weights)
        return FP32 * (elements + math.prod(node.shape))

    def last_use(self) -> dict[str, int]:
        """Index of the last node reading each activation (the outputs live to the end)."""
        last = {}
        for i, node in enumerate(self.nodes):
            for t in node.activation_inputs:
                last[t] = i
        for t in self.outputs:
            last[t] = len(self.nodes)
        return last

    def buffer_plan(self) -> list[Buffer]:
        """Assign activations to reusable buffers by liveness (best fit, grow if needed).

        A node's output never shares a buffer with its own inputs.
        """
        last = self.last_use()
        sizes, held = [FP32 * math.prod(self.shapes[self.input])], [[self.input]]
        holder = {self.input: 0}
        free: list[int] = []
        for i, node in enumerate(self.nodes):
            need = FP32 * math.prod(node.shape)
            fits = [b for b in free if sizes[b] >= need]
            if fits:
                b = min(fits, key=lambda j: sizes[j])
            elif free:
                b = max(free, key=lambda j: sizes[j])
                sizes[b] = need
            else:
                b = len(sizes)
                sizes.append(need)
                held.append([])
            if b in free:
                free.remove(b)
            held[b].append(node.name)
            holder[node.name] = b
            for t in set(node.activation_inputs):
                if last[t] == i:
                    free.append(holder[t])
        return [Buffer(i, size, tuple(tensors)) for i, (size, tensors) in enumerate(zip(sizes, held))]


def _fmt_bytes(n: int) -> str:
    return f"{n / 2**20:.2f} MiB" if n >= 2**20 else f"{n / 2**10:.1f} KiB"


def format_graph(graph: Graph, per: str = "run") -> str:
    """Nodes with kernel, shapes, FLOPs and bytes, then totals (per `per`) and the buffer plan."""
    rows = [f"{'node':32} {'kernel':10} {'inputs':44} {'output':12} {'GFLOP':>8} {'MiB':>8}"]
    for n in graph.nodes:
        ins = ", ".join(f"{t}{list(graph.shapes[t])}" if len(n.activation_inputs) == 1 else t
                        for t in n.activation_inputs)
        rows.append(f"{n.name:32} {n.kernel:10} {ins[:44]:44} {str(list(n.shape)):12} "
                    f"{n.flops / 1e9:8.3f} {graph.node_bytes(n) / 2**20:8.2f}")
    moved = sum(graph.node_bytes(n) for n in graph.nodes)
    weights = FP32 * sum(math.prod(s) for s in graph.weight_shapes.values())
    rows.append(f"\n{len(graph.nodes)} nodes, {graph.flops / 1e9:.2f} GFLOP per {per}, "
                f"{moved / 2**20:.1f} MiB moved (fp32), weights {_fmt_bytes(weights)}")
    plan = graph.buffer_plan()
    rows.append(f"\nbuffer plan: {len(plan)} activation buffers, {_fmt_bytes(sum(b.bytes for b in plan))} in all")
    for b in plan:
        rows.append(f"  buf{b.index:<3} {_fmt_bytes(b.bytes):>11}  {', '.join(b.tensors)}")
    return "\n".join(rows)
