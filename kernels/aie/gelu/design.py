"""IRON design: elementwise GELU (exact erf form) over a bf16 vector, 4096 values per call.

Not compiled here (no MLIR-AIE toolchain). kernels/aie/iron_host.py runs it on the host.
"""
import argparse

import numpy as np
from ml_dtypes import bfloat16

CHUNK = 64 * 64


def amanuensis_gelu(dev, length: int):
    from aie.iron import Kernel, ObjectFifo, Program, Runtime, Worker
    from aie.iron.controlflow import range_
    from aie.iron.placers import SequentialPlacer

    assert length % CHUNK == 0
    chunk = np.ndarray[(CHUNK,), np.dtype[bfloat16]]
    of_x, of_y = ObjectFifo(chunk, name="x"), ObjectFifo(chunk, name="y")
    gelu = Kernel("gelu_bf16", "gelu.o", [chunk, chunk, np.int32])

    def core(x, y, gelu):
        for _ in range_(length // CHUNK):
            tx, ty = x.acquire(1), y.acquire(1)
            gelu(tx, ty, CHUNK)
            x.release(1)
            y.release(1)

    worker = Worker(core, [of_x.cons(), of_y.prod(), gelu], while_true=False)
    rt = Runtime()
    full = np.ndarray[(length,), np.dtype[bfloat16]]
    with rt.sequence(full, full) as (x, y):
        rt.start(worker)
        rt.fill(of_x.prod(), x)
        rt.drain(of_y.cons(), y, wait=True)
    return Program(dev, rt).resolve_program(SequentialPlacer())


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-d", "--device", choices=("npu", "npu2"), required=True)
    p.add_argument("-l", "--length", type=int, required=True)
    args = p.parse_args()
    from aie.iron.device import NPU1, NPU2

    print(amanuensis_gelu(NPU1() if args.device == "npu" else NPU2(), args.length))


if __name__ == "__main__":
    main()
