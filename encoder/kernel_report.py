"""python -m encoder.kernel_report AUDIO: each emulated NPU kernel against its fp32 counterpart.

One real forward pass on the fp32 `cpu` backend (the first 30 s of AUDIO) captures every node's
inputs; each node's kernel then runs on the `emu` backend (the NPU kernels' bf16 numerics) with
exactly those inputs. Every node must reach correlation 0.9999 (kernels/report.py says how it is
measured); exit status 1 if one does not. `python -m kernels.report` runs this command.
"""
from __future__ import annotations

import argparse
import json

from encoder.audio import load_audio
from encoder.cli import add_model, run
from encoder.network import build_encoder_graph
from kernels.backends import get_backend
from kernels.frontend import N_SAMPLES
from kernels.report import MIN_CORRELATION, format_report, kernel_report
from weights_tools.model_dir import ConvertedModel
from weights_tools.resolve import resolve_model


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m encoder.kernel_report", description=__doc__.split("\n\n")[0])
    p.add_argument("audio", help="audio file (its first 30 s drive the forward pass)")
    add_model(p)
    p.add_argument("--json", action="store_true", help="print the rows as JSON")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    window = load_audio(args.audio)[:N_SAMPLES]
    model = ConvertedModel.open(resolve_model(args.model))
    graph = build_encoder_graph(model.dims, cross_kv=True)          # the cross-attention K/V nodes too
    weights = {**model.read_encoder_weights(), **model.cross_kv_weights()}
    rows = kernel_report(graph, weights, window, get_backend("cpu"), get_backend("emu"))
    if args.json:
        print(json.dumps({"min_correlation": MIN_CORRELATION, "nodes": [r.to_dict() for r in rows]}, indent=2))
    else:
        print(format_report(rows))
    return 0 if all(r.ok for r in rows) else 1


if __name__ == "__main__":
    run(main)
