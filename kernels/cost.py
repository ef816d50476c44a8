"""Projections of the layer graph on the NPU: per node from FLOPs (project), and per dispatch from the
whole-array designs' real schedule (project_schedule).

PROJECTION, not a measurement: nothing here ran on an NPU. Per node, matmul FLOPs run
at cores x MACs/cycle x 2 x clock x efficiency, the rest (softmax, GELU, norms, adds) at
the vector rate x efficiency (default efficiency 0.35: tuned AIE micro-kernels reach
26-43% of peak in public reports; the kernels of kernels/aie are a scalar path today, far
below); DDR traffic counts bf16 activations in and out and bf16 weights once (attention
keys/values of one head fit a 512 KiB memory tile, so they cross DDR once). A node takes the
longer of the two: compute- or memory-bound.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

from kernels.aie import iron_host
from kernels.aie.cycles import ATTN_RESCALE_SHARE, kernel_cycles
from kernels.aie.design_runner import Dispatch, plan_dispatches
from kernels.contract import TILE
from kernels.errors import BadOption
from kernels.frontend import N_FFT

BF16 = 2
STREAM_BYTES_PER_CYCLE = 4      # a DMA channel's stream: 32 bits per cycle (AM020, AIE-ML)


@dataclass(frozen=True)
class NpuParams:
    name: str
    cores: int                  # compute tiles used
    macs_per_cycle: int         # bf16 MACs per cycle per core
    vector_flops_per_cycle: int  # fp32 vector ops per cycle per core (non-matmul work)
    clock_ghz: float
    ddr_gbs: float              # DDR bandwidth available to the NPU, GB/s
    efficiency: float = 0.35    # share of peak compute the kernels reach
    dispatch_ms: float = 0.12   # host cost of one dispatch (107-148 us per small kernel run, measured by others)
    attention_rescale: float = ATTN_RESCALE_SHARE   # share of attention's row bands that rescale a key tile


PRESETS = {
    # XDNA1: 4 columns x 4 compute rows; 4x8x4 bf16 mmul = 128 MAC/cycle/core (mlir-aie docs).
    "phoenix": NpuParams("phoenix (XDNA1, assumed 1.0 GHz, 60 GB/s)", 16, 128, 16, 1.0, 60.0),
    # XDNA2: 8 columns x 4 rows; per-core bf16 rate assumed double XDNA1's (not confirmed).
    "strix": NpuParams("strix (XDNA2, assumed 1.0 GHz, 256 MAC/cycle, 90 GB/s)", 32, 256, 32, 1.0, 90.0),
}


def _matmul_flops(graph, node) -> int:
    """The part of a node's FLOPs that runs on the matmul unit."""
    t, n = node.shape
    if node.kernel in ("linear", "conv1d_k3"):
        k = graph.weight_shapes[node.weights[0]][0]
        return 2 * t * k * n
    if node.kernel == "attention":
        return 4 * t * t * n
    if node.kernel == "log_mel":                     # the DFT and the mel filters
        bins = N_FFT // 2 + 1
        return 2 * t * N_FFT * 2 * bins + 2 * t * bins * n
    return 0


def _ddr_ms(nbytes: int, params: NpuParams) -> float:
    return nbytes / (params.ddr_gbs * 1e9) * 1e3


def _ddr_bytes(graph, node) -> int:
    acts = sum(math.prod(graph.shapes[a]) for a in node.activation_inputs) + math.prod(node.shape)
    weights = sum(math.prod(graph.weight_shapes[w]) for w in node.weights)
    return BF16 * (acts + weights)


def _tiles(node) -> int:
    t, n = node.shape
    return math.ceil(t / TILE) * math.ceil(n / TILE)


@dataclass(frozen=True)
class NodeProjection:
    node: str
    kernel: str
    gflop: float
    tiles: int                  # 64x64 output tiles
    ddr_mib: float
    compute_ms: float
    memory_ms: float

    @property
    def ms(self) -> float:
        return max(self.compute_ms, self.memory_ms)

    @property
    def bound(self) -> str:
        return "compute" if self.compute_ms >= self.memory_ms else "memory"


def project(graph, params: NpuParams) -> list[NodeProjection]:
    """One row per node: FLOPs, 64x64 output tiles, DDR bytes, compute and memory time."""
    rows = []
    rate = params.cores * params.clock_ghz * 1e9 * params.efficiency
    for node in graph.nodes:
        mm = _matmul_flops(graph, node)
        other = max(node.flops - mm, 0)
        compute_s = mm / (rate * params.macs_per_cycle * 2) + other / (rate * params.vector_flops_per_cycle)
        ddr = _ddr_bytes(graph, node)
        rows.append(NodeProjection(node.name, node.kernel, node.flops / 1e9, _tiles(node), ddr / 2**20,
                                   compute_s * 1e3, _ddr_ms(ddr, params)))
    return rows


def format_projection(graph, params: NpuParams) -> str:
    rows = project(graph, params)
    lines = [f"PROJECTION (not measured) for {params.name}, {params.cores} cores at "
             f"{100 * params.efficiency:.0f}% of peak compute:",
             f"{'node':32} {'kernel':10} {'GFLOP':>7} {'tiles':>6} {'DDR MiB':>8} {'compute':>8} {'memory':>8} "
             f"{'ms':>7}  bound"]
    for r in rows:
        lines.append(f"{r.node:32} {r.kernel:10} {r.gflop:7.3f} {r.tiles:6d} {r.ddr_mib:8.2f} "
                     f"{r.compute_ms:8.3f} {r.memory_ms:8.3f} {r.ms:7.3f}  {r.bound}")
    total = sum(r.ms for r in rows)
    lines.append(f"projected total per 30 s window: {total:.1f} ms (PROJECTION; no overlap between nodes, "
                 f"host and decoder not included)")
    return "\n".join(lines)


def preset(name: str, **changes) -> NpuParams:
    """PRESETS[name] with the parameters in `changes` that are given (not None): each positive, the
    dispatch cost not negative, the attention rescale share from 0 to 1."""
    given = {k: v for k, v in changes.items() if v is not None}
    for key, value in given.items():
        if key == "attention_rescale":
            if not 0 <= value <= 1:
                raise BadOption(key, f"--attention-rescale must be a share from 0 to 1, got {value}")
        elif not (value >= 0 if key == "dispatch_ms" else value > 0):
            raise BadOption(key, f"--{key.replace('_', '-')} must be positive, got {value}")
    if given.get("cores", 4) % 4:
        raise BadOption("cores", f"--cores must be a multiple of 4 (columns of 4 cores), got {given['cores']}")
    return replace(PRESETS[name], **given)


# ---- the schedule of the whole-array designs ------------------------------------------------------------

@dataclass(frozen=True)
class DispatchProjection:
    node: str
    design: str                 # the design and its shape, or why no design runs the node
    cores: int                  # workers of the design
    ddr_mib: float              # what its runtime sequence moves between DDR and the array
    compute_ms: float           # the busiest core's kernel cycles at the clock
    stream_ms: float            # the busiest DMA channel of any core: its bytes at 4 bytes a cycle
    memory_ms: float
    overhead_ms: float          # the dispatch
    kernel_ms: dict             # the busiest core's compute time per kernel
    parts: tuple = ()           # a chain: its phases, each bound by the longest of its own three terms

    @property
    def ms(self) -> float:
        work = sum(p.ms for p in self.parts) if self.parts else max(self.compute_ms, self.stream_ms, self.memory_ms)
        return work + self.overhead_ms

    @property
    def bound(self) -> str:
        terms = {"compute": self.compute_ms, "core streams": self.stream_ms, "DDR": self.memory_ms}
        return max(terms, key=terms.get)


def project_schedule(graph, params: NpuParams) -> list[DispatchProjection]:
    """One row per dispatch of the designs' schedule (kernels.aie.design_runner.plan_dispatches: a chain
    per run of convolutions, layernorms and linears, one per attention): its design traced on the host executor
    (kernel calls per core, DDR bytes, a chain's round trips through its scratch included), each
    kernel call at its cycle estimate (kernels/aie/cycles.py), DMA overlapped with compute (the designs
    double-buffer), plus the dispatch. A node without a design (Whisper's graph has none) is
    projected as one DDR pass."""
    cols = params.cores // 4
    seq = next(n.shape[0] for n in graph.nodes if n.kernel == "attention")
    traced: dict = {}
    rows: list[DispatchProjection] = []
    for step in plan_dispatches(graph.nodes, graph.shapes, seq, cols):
        if not isinstance(step, Dispatch):
            rows.append(_undesigned(graph, step, params))
            continue
        parts = [_project_design(kernel, shape, params, traced) for kernel, shape in _parts(step)]
        rows.append(DispatchProjection(
            step.name, _describe(step), parts[0].cores, sum(p.ddr_mib for p in parts),
            sum(p.compute_ms for p in parts), sum(p.stream_ms for p in parts), sum(p.memory_ms for p in parts),
            params.dispatch_ms, _add_up(p.kernel_ms for p in parts), parts=tuple(parts) if len(parts) > 1 else ()))
    return rows


def _parts(step: Dispatch) -> list[tuple[str, tuple]]:
    """The designs whose traces add up to a dispatch: a chain's phases one by one (each as a chain of
    one, reading and writing DDR as it does in the chain), since the cores and streams overlap only
    within a phase; any other dispatch whole."""
    if step.kernel != "chain":
        return [(step.kernel, step.shape)]
    rows, phases, cols = step.shape
    alone = [ph._replace(source=None, **({"residual": "side"} if getattr(ph, "residual", None) else {}))
             for ph in phases]
    return [("chain", (rows, (ph,), cols)) for ph in alone]


def _project_design(kernel: str, shape: tuple, params: NpuParams, traced: dict) -> DispatchProjection:
    """One design run's projection without its dispatch cost: the busiest core's kernel cycles, the
    busiest core channel, the runtime sequence's DDR bytes."""
    if (kernel, shape) not in traced:
        traced[(kernel, shape)] = iron_host.resolve_design(kernel, *shape).trace()
    trace = traced[(kernel, shape)]
    busiest = max((_kernel_cycles(calls, params) for calls in trace.calls), key=lambda c: sum(c.values()))
    channel = max(max(s.values(), default=0) for s in trace.streamed)        # bytes, the busiest channel
    clock = params.clock_ghz * 1e6                                           # cycles per ms
    return DispatchProjection("", kernel, len(trace.calls), trace.ddr_bytes / 2**20, sum(busiest.values()) / clock,
                              channel / STREAM_BYTES_PER_CYCLE / clock, _ddr_ms(trace.ddr_bytes, params), 0.0,
                              {k: v / clock for k, v in busiest.items()})


def _add_up(dicts) -> dict:
    out: dict = {}
    for d in dicts:
        for k, v in d.items():
            out[k] = out.get(k, 0.0) + v
    return out


def _describe(step: Dispatch) -> str:
    if step.kernel == "chain":
        return f"chain of {len(step.nodes)}, {step.shape[2]} columns"
    return f"{step.kernel} {'x'.join(str(a) for a in step.shape if type(a) is int)}"


def _kernel_cycles(calls, params: NpuParams) -> dict[str, int]:
    out: dict[str, int] = {}
    for (name, args), count in calls.items():
        out[name] = out.get(name, 0) + count * kernel_cycles(name, args, params.attention_rescale)
    return out


def _undesigned(graph, node, params: NpuParams) -> DispatchProjection:
    ddr = _ddr_bytes(graph, node)
    return DispatchProjection(node.name, f"no design: one DDR pass ({node.kernel})", 0, ddr / 2**20, 0.0, 0.0,
                              _ddr_ms(ddr, params), params.dispatch_ms, {})


def format_schedule(graph, params: NpuParams) -> str:
    rows = project_schedule(graph, params)
    lines = [f"PROJECTION (not measured) of the whole-array designs' schedule on {params.name}: "
             f"{params.cores // 4} columns x 4 rows, kernels at their cycle estimates (kernels/aie/cycles.py), "
             f"attention rescaling {params.attention_rescale:.0%} of its row bands a key tile, "
             f"{STREAM_BYTES_PER_CYCLE} bytes a cycle per DMA channel, {params.dispatch_ms * 1e3:.0f} us per dispatch",
             f"{'dispatch (nodes)':62} {'design':28} {'cores':>5} {'DDR MiB':>8} {'compute':>8} {'streams':>8} "
             f"{'DDR':>8} {'ms':>7}  bound"]
    for r in rows:
        lines.append(f"{r.node:62} {r.design[:28]:28} {r.cores:5d} {r.ddr_mib:8.2f} {r.compute_ms:8.3f} "
                     f"{r.stream_ms:8.3f} {r.memory_ms:8.3f} {r.ms:7.3f}  {r.bound}")
    total = sum(r.ms for r in rows)
    dispatches = len(rows)
    terms: dict[str, float] = {"dispatch overhead": dispatches * params.dispatch_ms}
    for r in rows:                      # each dispatch's (or chain phase's) time goes to what bounds it
        for part in r.parts or [r]:
            if part.bound == "compute":
                for k, ms in part.kernel_ms.items():
                    terms[k] = terms.get(k, 0.0) + ms
            else:
                key = "core DMA streams" if part.bound == "core streams" else "DDR"
                terms[key] = terms.get(key, 0.0) + max(part.stream_ms, part.memory_ms)
    largest = sorted(terms.items(), key=lambda kv: -kv[1])
    lines.append(f"projected per 30 s window: {total:.1f} ms in {dispatches} dispatches "
                 f"(PROJECTION; every node of the encoder included; host and decoder not included)")
    lines.append("largest terms: " + ", ".join(f"{k} {ms:.1f} ms ({100 * ms / total:.0f}%)" for k, ms in largest[:4]))
    return "\n".join(lines)
