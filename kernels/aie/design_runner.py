"""Graph nodes through the whole-array IRON designs, on the host executor (kernels/aie/iron_host.py).

This is the schedule an NPU runs (plan_dispatches): every run of consecutive convolution, layernorm
and linear nodes is one dispatch of the matmul design's chain, and each attention node one dispatch
of the attention design, so an encoder layer is 2 dispatches (its attention, and the chain from its
out-projection through the next layer's QKV projection), and the stem (both convolutions, conv2
adding the positions) opens the first chain. The activations stay as the device keeps
them (bf16, rows padded to whole 256-row bands, row-major), a chain's intermediates in its scratch
buffer, the weights packed once (kernels.aie.tiles.pack_projection: the query columns of a
projection that feeds attention scaled by 1/8, exactly, so that the attention design takes Q as it
stands; kernels.aie.tiles.pack_norm for a layernorm). The tests run the stem and encoder blocks
through it against `emu`.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

from kernels.aie import iron_host, tiles
from kernels.graph import Node


@dataclass(frozen=True)
class DesignCall:
    """One dispatch: the design that runs a graph node, with its shape arguments (after the device)."""

    node: str
    kernel: str                      # the design: "matmul", "attention", "layernorm" or "mel"
    shape: tuple
    head_dim: int | None = None      # a projection feeding attention: its Q columns scaled by 1/sqrt(head_dim)
    window: tuple | None = None      # a convolution: (its input's row width, its stride)


def design_call(node: Node, after: Node | None, k: int, seq: int, cols: int) -> DesignCall | None:
    """The design run for `node` (input width k, `after` the next node) on an array of `cols` columns,
    or None for a node no design runs. A convolution maps to the matmul over its input's rows 3 at a
    time (3 k wide, rounded up to 64)."""
    if node.kernel == "log_mel":
        return DesignCall(node.name, "mel", (dict(node.params)["n_mels"], cols))
    rows = tiles.band_rows(node.shape[0])
    if node.kernel == "layernorm":
        return DesignCall(node.name, "layernorm", (rows, node.shape[1], 1e-5, cols))
    if node.kernel == "attention":
        return DesignCall(node.name, "attention", (seq, dict(node.params)["n_head"], cols))
    if node.kernel in ("linear", "conv1d_k3"):          # a convolution as a matmul over its im2col patches
        n = node.shape[1]
        head_dim = n // 3 // dict(after.params)["n_head"] if after is not None and after.kernel == "attention" else None
        gelu = dict(node.params).get("gelu", False)
        window = (k, dict(node.params)["stride"]) if node.kernel == "conv1d_k3" else None
        k = 3 * k if window else k
        return DesignCall(node.name, "matmul", (rows, tiles.up(k), n, gelu, residual_of(node) is not None, cols),
                          head_dim, window)
    return None


def residual_of(node: Node) -> str | None:
    """The tensor a node's epilogue adds: an activation, or a convolution's third weight (the positions)."""
    if node.residual:
        return node.residual
    return node.weights[2] if node.kernel == "conv1d_k3" and len(node.weights) > 2 else None


@dataclass(frozen=True)
class Dispatch:
    """One design run: the graph nodes it computes, in order, and the design with its arguments after the
    device. A chain (kernel "chain", shape (rows, phases, cols)) reads `side` for a residual from
    outside it (an activation, or a weight); head_dims: per node, the head size of the attention its
    output feeds (Q scaled)."""

    nodes: tuple[Node, ...]
    kernel: str
    shape: tuple
    side: str | None = None
    head_dims: tuple = field(default=())

    @property
    def name(self) -> str:
        return self.nodes[0].name if len(self.nodes) == 1 else f"{self.nodes[0].name} .. {self.nodes[-1].name}"


def plan_dispatches(nodes: list[Node], shapes: dict, seq: int, cols: int) -> list[Dispatch | Node]:
    """The dispatches that run `nodes` on an array of `cols` columns (shapes: the graph's activation
    shapes), in order; a node no design runs stands for itself."""
    plan: list[Dispatch | Node] = []
    chain: list[tuple[Node, DesignCall]] = []
    for node, after in zip(nodes, [*nodes[1:], None]):
        call = design_call(node, after, shapes[node.inputs[0]][-1], seq, cols)
        chainable = call is not None and node.kernel in ("layernorm", "linear", "conv1d_k3")
        if chain and not (chainable and _joins(chain, node)):
            plan.append(_chain(chain, cols))
            chain = []
        if chainable:
            chain.append((node, call))
        elif call is not None:
            plan.append(Dispatch((node,), call.kernel, call.shape))
        else:
            plan.append(node)
    if chain:
        plan.append(_chain(chain, cols))
    return plan


def _joins(chain: list[tuple[Node, DesignCall]], node: Node) -> bool:
    """Whether node can be the chain's next phase: its input the chain's input or made in it, at most
    one residual from outside, and the rows of the node before it, but for a convolution after
    matmuls only (conv1's 3000 rows, then conv2's 1500: a layernorm's rows are the chain's)."""
    first = chain[0][0]
    made = {n.name for n, _ in chain}
    inside = made | {first.inputs[0]}
    outside = {residual_of(n) for n, _ in [*chain, (node, None)]} - inside - {None}
    rows = node.shape[0] == chain[-1][0].shape[0] or \
        (node.kernel == "conv1d_k3" and all(n.kernel != "layernorm" for n, _ in chain))
    return rows and node.inputs[0] in inside and len(outside) <= 1


def _chain(chain: list[tuple[Node, DesignCall]], cols: int) -> Dispatch:
    """The chain design's dispatch for these nodes."""
    module = iron_host.design("matmul")
    rows = chain[-1][1].shape[0]                            # the chain's M; a convolution before may differ
    names = {chain[0][0].inputs[0]: "inp"}
    phases, side, head_dims = [], None, []
    for i, (node, call) in enumerate(chain):
        source = names[node.inputs[0]]                      # _joins: the chain's input or made in it
        source = None if (i == 0 or source == f"p{i - 1}") else source
        if node.kernel == "layernorm":
            phases.append(module.Norm(call.shape[1], call.shape[2], source))
        else:
            residual = residual_of(node)
            if residual:
                residual = names.get(residual)
                if residual is None:
                    side, residual = residual_of(node), "side"
            m, k, n, gelu, _, _ = call.shape
            phases.append(module.Linear(k, n, gelu, residual, source, call.window, m if m != rows else 0))
        head_dims.append(call.head_dim)
        names[node.name] = f"p{i}"
    return Dispatch(tuple(n for n, _ in chain), "chain", (rows, tuple(phases), cols), side, tuple(head_dims))


class DesignRunner:
    """Runs nodes through the designs for one array width (cols: 4 on Phoenix/Hawk Point, 8 on
    Strix), each design resolved once per shape."""

    def __init__(self, lib, cols: int = 4):
        self.lib, self.cols = lib, cols
        self._programs: dict[tuple, iron_host.HostProgram] = {}
        self._packed: dict[tuple, np.ndarray] = {}
        self.dispatches = 0

    def program(self, kernel: str, shape: tuple) -> iron_host.HostProgram:
        key = (kernel, *shape)
        if key not in self._programs:
            self._programs[key] = iron_host.resolve_design(kernel, *shape)
        return self._programs[key]

    def _run(self, kernel: str, shape: tuple, *arrays) -> None:
        import ml_dtypes

        self.dispatches += 1
        self.program(kernel, shape).run(*(a.view(ml_dtypes.bfloat16) for a in arrays), lib=self.lib)

    def _packed_operands(self, node: Node, head_dim: int | None, weights: dict) -> np.ndarray:
        """A chain phase's operands, packed once: W and bias (the Q columns scaled for a projection
        feeding attention), or gamma and beta."""
        key = (node.name, head_dim)
        if key not in self._packed:
            args = [weights[w] for w in node.weights[:2]]                 # not a convolution's positions
            packed = tiles.pack_norm(*args) if node.kernel == "layernorm" else tiles.pack_projection(*args, head_dim)
            self._packed[key] = packed.reshape(-1)
        return self._packed[key]

    def run_nodes(self, nodes: list[Node], x: np.ndarray, seq: int, weights: dict) -> dict[str, np.ndarray]:
        """Every node's output for input x (its rows, d): fp32 values of the bf16 results as the device
        holds them (a projection feeding attention: Q scaled), the real rows; seq: attention's."""
        values = {nodes[0].inputs[0]: _device(x)}
        shapes = {nodes[0].inputs[0]: x.shape, **{n.name: n.shape for n in nodes}}
        for step in plan_dispatches(nodes, shapes, seq, self.cols):
            if isinstance(step, Node) or step.nodes[0].kernel == "log_mel":
                node = step if isinstance(step, Node) else step.nodes[0]
                raise ValueError(f"{node.name}: run_nodes does not run kernel {node.kernel!r} (activations only)")
            if step.kernel == "attention":
                source = values[step.nodes[0].inputs[0]]
                out = np.zeros((source.shape[0], source.shape[1] // 3), np.uint16)
                self._run("attention", step.shape, source, out)
                values[step.nodes[0].name] = out
            else:
                values.update(self._run_chain(step, values, weights))
        return {name: tiles.from_bits(v)[:shapes[name][0]] for name, v in values.items()}

    def _run_chain(self, step: Dispatch, values: dict, weights: dict) -> dict[str, np.ndarray]:
        rows, phases, _ = step.shape
        module = iron_host.design("matmul")
        _, scratch_at, _, scratch_size = module.chain_layout(rows, phases)
        params = np.concatenate([self._packed_operands(n, h, weights) for n, h in zip(step.nodes, step.head_dims)])
        scratch = np.zeros(max(scratch_size, 1), np.uint16)
        out = np.zeros((rows, phases[-1].width), np.uint16)
        side = (values[step.side] if step.side in values else _device(weights[step.side])) if step.side \
            else np.zeros(1, np.uint16)
        inp = chain_input(module.chain_io(rows, phases), values[step.nodes[0].inputs[0]])
        self._run("chain", step.shape, inp, side, params, scratch, out)
        made = {}
        for node, ph, at in zip(step.nodes, phases, scratch_at):
            m = ph.rows or rows
            made[node.name] = out if at is None else scratch[at:at + m * ph.width].reshape(m, ph.width)
        return made


def chain_input(io, x: np.ndarray) -> np.ndarray:
    """A chain's inp argument (io: the design's chain_io) holding x's bits (rows in whole bands) where the
    design reads them: after a row of zeros when a convolution reads it, zeros after."""
    x = np.ascontiguousarray(x).reshape(-1)
    if x.size == io.inp and not io.inp_at:
        return x
    if x.size > io.rows * io.width:
        raise ValueError(f"a chain's input of {x.size} values exceeds its {io.rows} rows of {io.width}")
    inp = np.zeros(io.inp, x.dtype)
    inp[io.inp_at:io.inp_at + x.size] = x
    return inp


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
        if self.op == "chain":                  # its phases as a digest: the text has spaces and semicolons
            digest = hashlib.sha1(self.shape["phases"].encode()).hexdigest()[:10]
            return f"chain_M{self.shape['M']}_c{self.shape['cols']}_{digest}"
        return f"{self.op}_" + "_".join(f"{k}{int(v) if isinstance(v, bool) else v}" for k, v in self.shape.items())


def chain_shape(step: Dispatch) -> dict:
    """A chain dispatch's shape as the npu manifest keys it: rows, columns and its phases as text."""
    rows, phases, cols = step.shape
    return {"M": rows, "cols": cols, "phases": iron_host.design("matmul").phases_spec(phases)}


def build_entries(graphs: list, cols: int) -> list[BuildEntry]:
    """The distinct design builds the npu backend needs for these graphs (the encoder with and without
    the decoder's cross K/V end in different chains): one per dispatch shape of plan_dispatches, in
    graph order."""
    entries: dict[tuple, BuildEntry] = {}
    for graph in graphs:
        seq = next((n.shape[0] for n in graph.nodes if n.kernel == "attention"), graph.nodes[0].shape[0])
        for step in plan_dispatches(graph.nodes, graph.shapes, seq, cols):
            entry = _build_entry(step)
            if entry is not None:
                entries.setdefault((entry.op, tuple(entry.shape.items())), entry)
    return list(entries.values())


def _build_entry(step: Dispatch | Node) -> BuildEntry | None:
    if isinstance(step, Node):
        return None
    if step.kernel == "mel":
        mels = step.shape[0]
        return BuildEntry("log_mel", {"M": mels}, "mel", {"MELS": mels})
    if step.kernel == "chain":
        shape = chain_shape(step)
        return BuildEntry("chain", shape, "matmul", {"M": shape["M"], "COLS": shape["cols"], "CHAIN": shape["phases"]})
    if step.kernel == "matmul":
        m, k, n, gelu, residual, columns = step.shape
        return BuildEntry("linear", {"M": m, "K": k, "N": n, "gelu": gelu, "residual": residual}, "matmul",
                          {"M": m, "K": k, "N": n, "GELU": int(gelu), "RESIDUAL": int(residual), "COLS": columns})
    seq, heads, _ = step.shape
    return BuildEntry("attention", {"T": seq, "H": heads}, "attention", {"SEQ": seq, "HEADS": heads})
