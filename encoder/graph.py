"""python -m encoder.graph: print the encoder's layer graph, and a projection of it on the NPU.

Every node with its kernel, input and output shapes, FLOPs and bytes moved, the totals per 30 s
window and the activation buffer plan; with --plan npu, two PROJECTIONS for Phoenix and Strix
(kernels/cost.py; nothing here ran on an NPU): per node from its FLOPs and bytes, and per dispatch
from the whole-array designs' own schedule (kernel calls per core at their cycle estimates, the
DDR traffic of their runtime sequences, the dispatch overhead).
"""
from __future__ import annotations

import argparse

from encoder.cli import add_model, run
from encoder.network import build_encoder_graph
from kernels.aie.cycles import ATTN_RESCALE_SHARE
from kernels.cost import PRESETS, format_projection, format_schedule, preset
from kernels.errors import BadOption
from kernels.graph import format_graph
from weights_tools.model_dir import ConvertedModel
from weights_tools.resolve import resolve_model


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m encoder.graph", description=__doc__.split("\n\n")[0])
    add_model(parser)
    parser.add_argument("--encoder-only", action="store_true",
                        help="leave out the decoder's cross-attention K/V projections (what embed runs)")
    parser.add_argument("--plan", choices=("npu",), help="add a PROJECTION of every node on Phoenix and Strix")
    parser.add_argument("--cores", type=int,
                        help="projection: compute tiles, a multiple of 4 (default 16 Phoenix, 32 Strix)")
    parser.add_argument("--clock-ghz", type=float, help="projection: AIE clock (default 1.0, not confirmed by AMD)")
    parser.add_argument("--ddr-gbs", type=float, help="projection: DDR bandwidth for the NPU (default 60 / 90)")
    parser.add_argument("--efficiency", type=float,
                        help="per-node projection: share of peak compute reached (default 0.35; the schedule "
                             "projection uses the kernels' cycle estimates instead)")
    parser.add_argument("--dispatch-us", type=float, help="schedule projection: host cost of a dispatch (default 120)")
    parser.add_argument("--attention-rescale", type=float,
                        help="schedule projection: share of attention's 4-row bands whose running maxima change "
                             f"at a key tile, 0 to 1 (default {ATTN_RESCALE_SHARE}, measured on speech; 1: the "
                             "worst case)")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.dispatch_us is not None and args.dispatch_us < 0:
        raise BadOption("dispatch-us", f"--dispatch-us must not be negative, got {args.dispatch_us}")
    plans = [preset(name, cores=args.cores, clock_ghz=args.clock_ghz, ddr_gbs=args.ddr_gbs, efficiency=args.efficiency,
                    dispatch_ms=None if args.dispatch_us is None else args.dispatch_us / 1e3,
                    attention_rescale=args.attention_rescale)
             for name in PRESETS] if args.plan == "npu" else []
    model = ConvertedModel.open(resolve_model(args.model))
    print(f"model {args.model}: {model.dims}\n")
    graph = build_encoder_graph(model.dims, cross_kv=not args.encoder_only)
    print(format_graph(graph, per="30 s window"))
    for params in plans:
        print("\n" + format_projection(graph, params))
        print("\n" + format_schedule(graph, params))
    return 0


if __name__ == "__main__":
    run(main)
