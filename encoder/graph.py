"""The encoder as a layer graph: built from the dims first, run by encoder.runner second.

Phases (names of boundary tensors in brackets):
  stem    conv1 + GELU [conv1], conv2 stride 2 + GELU [conv2], + positions [embed]
  block i norm [layers.i.self_attn_layer_norm] → QKV [.self_attn.qkv_proj] →
          attention [.self_attn] → out-projection + residual [.self_attn.out_proj] →
          norm [.final_layer_norm] → fc1 + GELU [.fc1] → fc2 + residual [.fc2]
  post    ln_post [layer_norm]
  cross   (for transcription) per decoder layer i, the cross-attention keys and values of
          the encoder output in one matmul [cross_kv.i]: matmul work for the encoder's kernels
Each node names its kernel (kernels/interface.py), its activation inputs, its
weights (encoder.safetensors names), FLOPs and bytes moved (fp32).

`python -m encoder.graph --model M` prints the nodes and the buffer plan.
"""
from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, field

from encoder.dims import ModelDimensions

INPUT = "mel"
OUTPUT = "layer_norm"
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


@dataclass
class Graph:
    dims: ModelDimensions
    nodes: list[Node]
    shapes: dict[str, tuple]              # every activation tensor, the input included
    weight_shapes: dict[str, tuple] = field(default_factory=dict)
    outputs: tuple[str, ...] = (OUTPUT,)  # tensors handed back by every run

    def node(self, name: str) -> Node:
        return next(n for n in self.nodes if n.name == name)

    def node_bytes(self, node: Node) -> int:
        """fp32 bytes the node reads (activations, weights) and writes."""
        elements = sum(math.prod(self.shapes[t]) for t in node.activation_inputs)
        elements += sum(math.prod(self.weight_shapes[w]) for w in node.weights)
        return FP32 * (elements + math.prod(node.shape))

    def last_use(self) -> dict[str, int]:
        """Index of the last node reading each activation (the output lives to the end)."""
        last = {}
        for i, node in enumerate(self.nodes):
            for t in node.activation_inputs:
                last[t] = i
        for t in self.outputs:
            last[t] = len(self.nodes)
        return last

    def buffer_plan(self) -> list[dict]:
        """Assign activations to reusable buffers by liveness (best fit, grow if needed).

        A node's output never shares a buffer with its own inputs. Returns one dict
        per buffer: index, bytes, and the tensors it holds in order.
        """
        last = self.last_use()
        buffers: list[dict] = [{"index": 0, "bytes": FP32 * math.prod(self.shapes[INPUT]), "tensors": [INPUT]}]
        holder = {INPUT: 0}
        free: list[int] = []
        for i, node in enumerate(self.nodes):
            need = FP32 * math.prod(node.shape)
            fits = [b for b in free if buffers[b]["bytes"] >= need]
            if fits:
                b = min(fits, key=lambda j: buffers[j]["bytes"])
            elif free:
                b = max(free, key=lambda j: buffers[j]["bytes"])
                buffers[b]["bytes"] = need
            else:
                b = len(buffers)
                buffers.append({"index": b, "bytes": need, "tensors": []})
            if b in free:
                free.remove(b)
            buffers[b]["tensors"].append(node.name)
            holder[node.name] = b
            for t in set(node.activation_inputs):
                if last[t] == i:
                    free.append(holder[t])
        return buffers


def _linear(name, x, w_prefix, t, k, n, gelu=False, residual=None) -> Node:
    flops = 2 * t * k * n + t * n * (1 + (8 if gelu else 0) + (1 if residual else 0))
    return Node(name, "linear", (x,), (f"{w_prefix}.weight", f"{w_prefix}.bias"), (t, n), flops,
                (("gelu", gelu),), residual)


def _layernorm(name, x, w_prefix, t, d) -> Node:
    return Node(name, "layernorm", (x,), (f"{w_prefix}.weight", f"{w_prefix}.bias"), (t, d), 8 * t * d)


def _block(i: int, x: str, dims: ModelDimensions) -> list[Node]:
    t, d, f, h = dims.n_audio_ctx, dims.n_audio_state, dims.n_audio_mlp, dims.n_audio_head
    p = f"layers.{i}"
    w = f"encoder.{p}"
    attn_flops = 4 * t * t * d + 4 * h * t * t          # QKᵀ and PV matmuls + softmax (4 per score)
    return [
        # norm
        _layernorm(f"{p}.self_attn_layer_norm", x, f"{w}.self_attn_layer_norm", t, d),
        # self-attention over all T positions
        _linear(f"{p}.self_attn.qkv_proj", f"{p}.self_attn_layer_norm", f"{w}.self_attn.qkv_proj", t, d, 3 * d),
        Node(f"{p}.self_attn", "attention", (f"{p}.self_attn.qkv_proj",), (), (t, d), attn_flops,
             (("n_head", h),)),
        _linear(f"{p}.self_attn.out_proj", f"{p}.self_attn", f"{w}.self_attn.out_proj", t, d, d, residual=x),
        # feed-forward
        _layernorm(f"{p}.final_layer_norm", f"{p}.self_attn.out_proj", f"{w}.final_layer_norm", t, d),
        _linear(f"{p}.fc1", f"{p}.final_layer_norm", f"{w}.fc1", t, d, f, gelu=True),
        _linear(f"{p}.fc2", f"{p}.fc1", f"{w}.fc2", t, f, d, residual=f"{p}.self_attn.out_proj"),
    ]


def block_output(i: int) -> str:
    """Name of block i's output tensor."""
    return f"layers.{i}.fc2"


def cross_kv_output(i: int) -> str:
    """Name of decoder layer i's cross-attention [K | V] tensor (n_audio_ctx, 2·d_model)."""
    return f"cross_kv.{i}"


def build_encoder_graph(dims: ModelDimensions, cross_kv: bool = False) -> Graph:
    """The encoder graph for one 30 s window of `dims` (with the decoder's cross K/V if asked)."""
    from weights_tools.layout import cross_kv_shapes, kernel_shapes

    t, d, c = dims.n_audio_ctx, dims.n_audio_state, dims.n_mels
    frames = 2 * t                                           # conv2 has stride 2
    nodes = [
        Node("conv1", "conv1d_k3", (INPUT,), ("encoder.conv1.weight", "encoder.conv1.bias"), (frames, d),
             2 * frames * 3 * c * d + 9 * frames * d, (("stride", 1), ("gelu", True))),
        Node("conv2", "conv1d_k3", ("conv1",), ("encoder.conv2.weight", "encoder.conv2.bias"), (t, d),
             2 * t * 3 * d * d + 9 * t * d, (("stride", 2), ("gelu", True))),
        Node("embed", "add", ("conv2",), ("encoder.embed_positions.weight",), (t, d), t * d),
    ]
    x = "embed"
    for i in range(dims.n_audio_layer):
        nodes += _block(i, x, dims)
        x = block_output(i)
    nodes.append(_layernorm(OUTPUT, x, "encoder.layer_norm", t, d))
    weights = kernel_shapes(dims)
    outputs = (OUTPUT,)
    if cross_kv:
        for i in range(dims.n_text_layer):
            nodes.append(_linear(cross_kv_output(i), OUTPUT, f"decoder.layers.{i}.encoder_attn.kv_proj", t, d, 2 * d))
        weights = {**weights, **cross_kv_shapes(dims)}
        outputs += tuple(cross_kv_output(i) for i in range(dims.n_text_layer))
    shapes = {INPUT: (frames, c), **{n.name: n.shape for n in nodes}}
    return Graph(dims, nodes, shapes, weights, outputs)


def _fmt_bytes(n: int) -> str:
    return f"{n / 2**20:.2f} MiB" if n >= 2**20 else f"{n / 2**10:.1f} KiB"


def format_graph(graph: Graph) -> str:
    """Nodes with kernel, shapes, FLOPs and bytes, then totals and the buffer plan."""
    rows = [f"{'node':32} {'kernel':10} {'inputs':44} {'output':12} {'GFLOP':>8} {'MiB':>8}"]
    for n in graph.nodes:
        ins = ", ".join(f"{t}{list(graph.shapes[t])}" if len(n.activation_inputs) == 1 else t
                        for t in n.activation_inputs)
        rows.append(f"{n.name:32} {n.kernel:10} {ins[:44]:44} {str(list(n.shape)):12} "
                    f"{n.flops / 1e9:8.3f} {graph.node_bytes(n) / 2**20:8.2f}")
    flops = sum(n.flops for n in graph.nodes)
    moved = sum(graph.node_bytes(n) for n in graph.nodes)
    weights = FP32 * sum(math.prod(s) for s in graph.weight_shapes.values())
    rows.append(f"\n{len(graph.nodes)} nodes, {flops / 1e9:.2f} GFLOP per 30 s window, "
                f"{moved / 2**20:.1f} MiB moved (fp32), weights {_fmt_bytes(weights)}")
    plan = graph.buffer_plan()
    rows.append(f"\nbuffer plan: {len(plan)} activation buffers, {_fmt_bytes(sum(b['bytes'] for b in plan))} in all")
    for b in plan:
        held = ", ".join(b["tensors"])
        rows.append(f"  buf{b['index']:<3} {_fmt_bytes(b['bytes']):>11}  {held}")
    return "\n".join(rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m encoder.graph",
                                     description="Print the encoder's layer graph: nodes, kernels, shapes, "
                                     "FLOPs, bytes and the activation buffer plan.")
    parser.add_argument("--model", default="tiny.en", help="default name, model directory or hub id (default tiny.en)")
    parser.add_argument("--encoder-only", action="store_true",
                        help="leave out the decoder's cross-attention K/V projections (what embed runs)")
    parser.add_argument("--plan", choices=("npu",), help="add a PROJECTION of every node on Phoenix and Strix")
    parser.add_argument("--cores", type=int, help="projection: compute tiles (default 16 Phoenix, 32 Strix)")
    parser.add_argument("--clock-ghz", type=float, help="projection: AIE clock (default 1.0, not confirmed by AMD)")
    parser.add_argument("--ddr-gbs", type=float, help="projection: DDR bandwidth for the NPU (default 60 / 90)")
    parser.add_argument("--efficiency", type=float, help="projection: share of peak compute reached (default 0.35)")
    args = parser.parse_args(argv)
    from weights_tools.model_dir import ConvertedModel
    from weights_tools.resolve import resolve_model

    model = ConvertedModel.open(resolve_model(args.model))
    print(f"model {args.model}: {model.dims}\n")
    graph = build_encoder_graph(model.dims, cross_kv=not args.encoder_only)
    print(format_graph(graph))
    if args.plan == "npu":
        from encoder.cost import PRESETS, format_projection, params_from_args

        for preset in PRESETS:
            print("\n" + format_projection(graph, params_from_args(preset, args.cores, args.clock_ghz, args.ddr_gbs,
                                                                          args.efficiency)))
    return 0


if __name__ == "__main__":
    from encoder.cli import run_main

    run_main(main)
