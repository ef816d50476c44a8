"""Graph nodes through the whole-array IRON designs, on the host executor (kernels/aie/iron_host.py).

This is the schedule an NPU runs: one design run (one dispatch) per layernorm, linear and attention
node, the activations kept between nodes as the device keeps them (bf16, rows padded to whole
256-row bands, row-major), the weights packed once (kernels.aie.tiles.pack_linear; the query
columns of a projection that feeds attention scaled by 1/8 there, which is exact, so that the
attention design takes Q as it stands). The tests run an encoder block through it against `emu`.
"""
from __future__ import annotations

import math

import numpy as np

from kernels.aie import iron_host, tiles
from kernels.graph import Node

BAND = 256                       # rows: every design works on whole 256-row bands (4 rows of cores x 64)


def padded(rows: int) -> int:
    return -(-rows // BAND) * BAND


class DesignRunner:
    """Runs nodes through the designs for one array width (cols: 4 on Phoenix/Hawk Point, 8 on
    Strix), each design resolved once per shape."""

    def __init__(self, lib, cols: int = 4):
        self.lib, self.cols = lib, cols
        self._programs: dict[tuple, iron_host.HostProgram] = {}
        self._packed: dict[tuple, np.ndarray] = {}
        self.dispatches = 0

    def _program(self, kernel: str, *args) -> iron_host.HostProgram:
        key = (kernel, *args)
        if key not in self._programs:
            fn = getattr(iron_host.design(kernel), f"amanuensis_{kernel}")
            self._programs[key] = iron_host.resolve(fn, *args)
        return self._programs[key]

    def _run(self, kernel: str, shape: tuple, *arrays) -> None:
        import ml_dtypes

        self.dispatches += 1
        self._program(kernel, *shape).run(*(a.view(ml_dtypes.bfloat16) for a in arrays), lib=self.lib)

    def layernorm(self, x: np.ndarray, gamma, beta) -> np.ndarray:
        rows, d = x.shape
        y = np.zeros_like(x)
        self._run("layernorm", (rows, d, 1e-5, self.cols), x, tiles.bits(np.concatenate([gamma, beta])), y)
        return y

    def linear(self, x: np.ndarray, w, b, gelu=False, residual=None, head_dim: int | None = None) -> np.ndarray:
        """x (bf16 bits, padded rows) · w + b; head_dim: this projection feeds attention (Q scaled)."""
        rows, k = x.shape
        n = w.shape[1]
        key = (id(w), head_dim)
        if key not in self._packed:
            if head_dim:
                scale = np.ones(n, np.float32)
                scale[:n // 3] = 1.0 / math.sqrt(head_dim)          # 1/8 for every Whisper size: exact
                w, b = w * scale, b * scale
            self._packed[key] = tiles.pack_linear(w, b)
        cols = self.cols if n % (tiles.PACK_COLUMNS * self.cols) == 0 else 4
        out = np.zeros((rows, n), np.uint16)
        res = residual if residual is not None else np.zeros((rows, n), np.uint16)
        self._run("matmul", (rows, k, n, gelu, residual is not None, cols), x, self._packed[key], res, out)
        return out

    def attention(self, qkv: np.ndarray, n_head: int, seq: int) -> np.ndarray:
        out = np.zeros((qkv.shape[0], qkv.shape[1] // 3), np.uint16)
        self._run("attention", (seq, n_head, self.cols), qkv, out)
        return out

    def run_nodes(self, nodes: list[Node], x: np.ndarray, seq: int, weights: dict) -> dict[str, np.ndarray]:
        """Every node's output (fp32 values of the bf16 results, the real rows) for input x (seq, d)."""
        values = {nodes[0].inputs[0]: _device(x)}
        for i, node in enumerate(nodes):
            args = [weights[w] for w in node.weights]
            params = dict(node.params)
            if node.kernel == "layernorm":
                values[node.name] = self.layernorm(values[node.inputs[0]], *args)
            elif node.kernel == "linear":
                feeds_attention = i + 1 < len(nodes) and nodes[i + 1].kernel == "attention"
                head_dim = node.shape[1] // 3 // dict(nodes[i + 1].params)["n_head"] if feeds_attention else None
                residual = values[node.residual] if node.residual else None
                values[node.name] = self.linear(values[node.inputs[0]], *args, params.get("gelu", False), residual,
                                                head_dim)
            elif node.kernel == "attention":
                values[node.name] = self.attention(values[node.inputs[0]], params["n_head"], seq)
            else:
                raise ValueError(f"{node.name}: no whole-array design runs kernel {node.kernel!r}")
        return {name: tiles.from_bits(v)[:seq] for name, v in values.items()}


def _device(x: np.ndarray) -> np.ndarray:
    """An activation as the device holds it: bf16 bits, rows padded to whole bands with zeros."""
    return tiles.bits(tiles.pad(np.asarray(x, np.float32), padded(x.shape[0]), x.shape[1]))
