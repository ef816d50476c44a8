"""python -m encoder.npu_build: build the NPU kernels a model needs and write the npu backend's manifest.

Every design and shape of the model's encoder (whole-array designs, kernels/aie/*/design.py) is built
with the mlir-aie toolchain, which must be installed (kernels/aie/run_on_npu.sh does it), and
appended as a kernel to one xclbin (aiecc.py --xclbin-input), so that the npu backend runs the
encoder in one hardware context; each has its own instruction stream. encoder_<device>.xclbin, the
instruction streams, manifest.json and build.json (each build's outcome and the end of its log) go
to --out. A design that fails to build is left out of the manifest: its ops run on
the CPU, reported as fallbacks. --dry-run prints the builds without running them.
"""
from __future__ import annotations

import argparse
import json
import shlex
from pathlib import Path

from encoder.cli import add_model, run
from encoder.network import build_encoder_graph
from kernels import settings
from kernels.aie.build import DEVICES, build, plan
from kernels.aie.design_runner import build_entries
from weights_tools.model_dir import ConvertedModel
from weights_tools.resolve import resolve_model


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m encoder.npu_build", description=__doc__.split("\n\n")[0])
    add_model(parser)
    parser.add_argument("--device", choices=tuple(DEVICES), default="npu",
                        help="npu: Phoenix/Hawk Point (4 columns); npu2: Strix (8 columns) (default npu)")
    parser.add_argument("--out", type=Path, help="where the kernels and manifest.json go "
                                                 "(default $AMANUENSIS_NPU_KERNELS, else <cache>/npu-kernels)")
    parser.add_argument("--dry-run", action="store_true", help="print each build's make command, build nothing")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    model = ConvertedModel.open(resolve_model(args.model))
    graphs = [build_encoder_graph(model.dims, cross_kv=True), build_encoder_graph(model.dims)]   # transcribe, embed
    entries = build_entries(graphs, DEVICES[args.device])
    if args.dry_run:
        for command in plan(entries, args.device):
            print(shlex.join(command))
        return 0
    out = args.out or settings.npu_kernels_dir()
    results = build(entries, args.device, out)
    (out / "build.json").write_text(json.dumps([{"op": r.entry.op, "shape": r.entry.shape, "ok": r.ok, "log": r.log}
                                                for r in results], indent=1), encoding="utf-8")
    for r in results:
        print(f"{'built ' if r.ok else 'FAILED'} {r.entry.artifact}")
    print(f"{sum(r.ok for r in results)} of {len(results)} built; manifest: {out / 'manifest.json'}")
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    run(main)
