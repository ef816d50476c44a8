"""IRON design: LayerNorm with affine over R rows of D values, a block of rows per core call.

gamma and beta (D bf16 each) are loaded once; row blocks stream in and out, double-buffered;
the kernel keeps fp32 statistics in a 2·D scratch buffer in data memory. The block is as many
rows (a power of two, at most 64) as fit the core's data memory with all of that: 16 rows
for d 384, 4 for d 1280. Not compiled here; kernels/aie/iron_host.py runs it on the host.
"""
import argparse

import numpy as np
from ml_dtypes import bfloat16

MAX_ROWS_PER_CALL = 64
DATA_MEMORY = 64 * 1024 - 1024        # a core's data memory less its stack (the host executor checks both)


def rows_per_call(d: int) -> int:
    """Rows per block: x and y double-buffered, gamma, beta and the fp32 scratch within DATA_MEMORY."""
    rows = MAX_ROWS_PER_CALL
    while rows > 1 and 2 * 2 * rows * d * 2 + 2 * d * 2 + 2 * d * 4 > DATA_MEMORY:
        rows //= 2
    return rows


def amanuensis_layernorm(dev, rows: int, d: int, eps: float = 1e-5):
    from aie.iron import Buffer, Kernel, ObjectFifo, Program, Runtime, Worker
    from aie.iron.controlflow import range_
    from aie.iron.placers import SequentialPlacer

    per_call = rows_per_call(d)
    assert rows % per_call == 0 and d % 16 == 0
    block = np.ndarray[(per_call * d,), np.dtype[bfloat16]]
    vec = np.ndarray[(d,), np.dtype[bfloat16]]
    scratch = Buffer(np.ndarray[(2 * d,), np.dtype[np.float32]], name="scratch")
    of_x, of_y = ObjectFifo(block, name="x"), ObjectFifo(block, name="y")
    of_g, of_b = ObjectFifo(vec, name="gamma", depth=1), ObjectFifo(vec, name="beta", depth=1)
    norm = Kernel("layernorm_bf16", "layernorm.o",
                  [block, vec, vec, block, np.int32, np.int32, np.float32, scratch.type])

    def core(x, g, b, y, scratch, norm):
        tg, tb = g.acquire(1), b.acquire(1)
        for _ in range_(rows // per_call):
            tx, ty = x.acquire(1), y.acquire(1)
            norm(tx, tg, tb, ty, per_call, d, eps, scratch)
            x.release(1)
            y.release(1)
        g.release(1)
        b.release(1)

    worker = Worker(core, [of_x.cons(), of_g.cons(), of_b.cons(), of_y.prod(), scratch, norm], while_true=False)
    rt = Runtime()
    full = np.ndarray[(rows * d,), np.dtype[bfloat16]]
    with rt.sequence(full, vec, vec, full) as (x, g, b, y):
        rt.start(worker)
        rt.fill(of_g.prod(), g)
        rt.fill(of_b.prod(), b)
        rt.fill(of_x.prod(), x)
        rt.drain(of_y.cons(), y, wait=True)
    return Program(dev, rt).resolve_program(SequentialPlacer())


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-d", "--device", choices=("npu", "npu2"), required=True)
    p.add_argument("-R", type=int, required=True, help="rows (1536 for a padded Whisper window)")
    p.add_argument("-D", type=int, required=True, help="row width (d_model)")
    args = p.parse_args()
    from aie.iron.device import NPU1, NPU2

    print(amanuensis_layernorm(NPU1() if args.device == "npu" else NPU2(), args.R, args.D))


if __name__ == "__main__":
    main()
