"""Graph nodes through the whole-array IRON designs, on the host executor (kernels/aie/iron_host.py).

This is the schedule an NPU runs: one design run (one dispatch) per layernorm, linear and attention
node, the activations kept between nodes as the device keeps them (bf16, rows padded to whole
256-row bands, row-major), the weights packed once (kernels.aie.tiles.pack_projection: the query
columns of a projection that feeds attention scaled by 1/8, exactly, so that the attention design
takes Q as it stands). The tests run an encoder block through it against `emu`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kernels.aie import iron_host, tiles
from kernels.graph import Node


@dataclass(frozen=True)
class DesignCall:
    """One dispatch: the design that runs a graph node, with its shape arguments (after the device)."""

    node: str
    kernel: str                      # the design: "matmul", "attention" or "layernorm"
    shape: tuple
    head_dim: int | None = None      # a projection feeding attention: its Q columns scaled by 1/sqrt(head_dim)


def design_call(node: Node, after: Node | None, k: int, seq: int, cols: int) -> DesignCall | None:
    """The design run for `node` (input width k, `after` the next node) on an array of `cols` columns,
    or None for a node no design runs. A convolution maps to the matmul over its im2col patches (3 k
    wide); run_nodes does not run it yet (the patches' access pattern is not written)."""
    rows = tiles.band_rows(node.shape[0])
    if node.kernel == "layernorm":
        return DesignCall(node.name, "layernorm", (rows, node.shape[1], 1e-5, cols))
    if node.kernel == "attention":
        return DesignCall(node.name, "attention", (seq, dict(node.params)["n_head"], cols))
    if node.kernel in ("linear", "conv1d_k3"):          # a convolution as a matmul over its im2col patches
        n = node.shape[1]
        fits = cols if n % (tiles.PACK_COLUMNS * cols) == 0 else 4
        head_dim = n // 3 // dict(after.params)["n_head"] if after is not None and after.kernel == "attention" else None
        gelu = dict(node.params).get("gelu", False)
        k = 3 * k if node.kernel == "conv1d_k3" else k
        return DesignCall(node.name, "matmul", (rows, tiles.up(k), n, gelu, node.residual is not None, fits), head_dim)
    return None


class DesignRunner:
    """Runs nodes through the designs for one array width (cols: 4 on Phoenix/Hawk Point, 8 on
    Strix), each design resolved once per shape."""

    def __init__(self, lib, cols: int = 4):
        self.lib, self.cols = lib, cols
        self._programs: dict[tuple, iron_host.HostProgram] = {}
        self._packed: dict[tuple, np.ndarray] = {}
        self.dispatches = 0

    def program(self, call: DesignCall) -> iron_host.HostProgram:
        key = (call.kernel, *call.shape)
        if key not in self._programs:
            self._programs[key] = iron_host.resolve_design(call.kernel, *call.shape)
        return self._programs[key]

    def _run(self, call: DesignCall, *arrays) -> None:
        import ml_dtypes

        self.dispatches += 1
        self.program(call).run(*(a.view(ml_dtypes.bfloat16) for a in arrays), lib=self.lib)

    def _weights(self, call: DesignCall, w: np.ndarray, b: np.ndarray) -> np.ndarray:
        """W and bias packed once (the Q columns scaled for a projection feeding attention)."""
        key = (id(w), call.head_dim)
        if key not in self._packed:
            self._packed[key] = tiles.pack_projection(w, b, call.head_dim)
        return self._packed[key]

    def run_nodes(self, nodes: list[Node], x: np.ndarray, seq: int, weights: dict) -> dict[str, np.ndarray]:
        """Every node's output for input x (seq, d): fp32 values of the bf16 results as the device holds
        them (a projection feeding attention: Q scaled), the real rows."""
        values = {nodes[0].inputs[0]: _device(x)}
        for node, after in zip(nodes, [*nodes[1:], None]):
            source = values[node.inputs[0]]
            call = design_call(node, after, source.shape[1], seq, self.cols)
            if call is None or node.kernel == "conv1d_k3":
                raise ValueError(f"{node.name}: no whole-array design runs kernel {node.kernel!r} here")
            args = [weights[w] for w in node.weights]
            if call.kernel == "layernorm":
                out = np.zeros_like(source)
                operands = (source, tiles.bits(np.concatenate(args)), out)
            elif call.kernel == "attention":
                out = np.zeros((source.shape[0], source.shape[1] // 3), np.uint16)
                operands = (source, out)
            else:
                out = np.zeros((source.shape[0], node.shape[1]), np.uint16)
                res = values[node.residual] if node.residual else np.zeros_like(out)
                operands = (source, self._weights(call, *args), res, out)
            self._run(call, *operands)
            values[node.name] = out
        return {name: tiles.from_bits(v)[:seq] for name, v in values.items()}


def _device(x: np.ndarray) -> np.ndarray:
    """An activation as the device holds it: bf16 bits, rows padded to whole bands with zeros."""
    return tiles.bits(tiles.pad(np.asarray(x, np.float32), tiles.band_rows(x.shape[0]), x.shape[1]))


# ---- what to build for a model ------------------------------------------------------------------------

@dataclass(frozen=True)
class BuildEntry:
    """One xclbin to build: the npu manifest's op and shape, the design folder and its make variables."""

    op: str
    shape: dict
    folder: str
    variables: dict

    @property
    def artifact(self) -> str:
        return f"{self.op}_" + "_".join(f"{k}{int(v) if isinstance(v, bool) else v}" for k, v in self.shape.items())


def build_entries(nodes: list[Node], shapes: dict, cols: int) -> list[BuildEntry]:
    """The distinct design builds the npu backend needs for these graph nodes (shapes: the graph's
    activation shapes), in graph order; mel's design is included though it does not fit a core yet."""
    entries: dict[tuple, BuildEntry] = {}
    for node, after in zip(nodes, [*nodes[1:], None]):
        entry = _build_entry(node, after, shapes, cols)
        if entry is not None:
            entries.setdefault((entry.op, tuple(entry.shape.items())), entry)
    return list(entries.values())


def _build_entry(node: Node, after: Node | None, shapes: dict, cols: int) -> BuildEntry | None:
    if node.kernel == "log_mel":
        return BuildEntry("log_mel", {"M": dict(node.params)["n_mels"]}, "mel", {"MELS": dict(node.params)["n_mels"]})
    call = design_call(node, after, shapes[node.inputs[0]][-1], node.shape[0], cols)
    if call is None:
        return None
    if call.kernel == "matmul":
        m, k, n, gelu, residual, columns = call.shape
        return BuildEntry("linear", {"M": m, "K": k, "N": n, "gelu": gelu, "residual": residual}, "matmul",
                          {"M": m, "K": k, "N": n, "GELU": int(gelu), "RESIDUAL": int(residual), "COLS": columns})
    if call.kernel == "attention":
        seq, heads, _ = call.shape
        return BuildEntry("attention", {"T": seq, "H": heads}, "attention", {"SEQ": seq, "HEADS": heads})
    rows, d = call.shape[:2]
    return BuildEntry("layernorm", {"R": rows, "D": d}, "layernorm", {"ROWS": rows, "D": d})
