"""IRON design: LayerNorm with affine over R rows of D values, 64 rows per core call.

gamma and beta (D bf16 each) are loaded once; row blocks stream in and out; the kernel
keeps fp32 statistics in a 2·D scratch buffer in data memory. Not compiled here.
"""
import argparse

import numpy as np
from ml_dtypes import bfloat16

ROWS_PER_CALL = 64


def amanuensis_layernorm(dev, rows: int, d: int, eps: float = 1e-5):
    from aie.iron import Buffer, Kernel, ObjectFifo, Program, Runtime, Worker
    from aie.iron.controlflow import range_
    from aie.iron.placers import SequentialPlacer

    assert rows % ROWS_PER_CALL == 0 and d % 16 == 0
    block = np.ndarray[(ROWS_PER_CALL * d,), np.dtype[bfloat16]]
    vec = np.ndarray[(d,), np.dtype[bfloat16]]
    scratch = Buffer(np.ndarray[(2 * d,), np.dtype[np.float32]], name="scratch")
    of_x, of_y = ObjectFifo(block, name="x"), ObjectFifo(block, name="y")
    of_g, of_b = ObjectFifo(vec, name="gamma", depth=1), ObjectFifo(vec, name="beta", depth=1)
    norm = Kernel("layernorm_bf16", "layernorm.o",
                  [block, vec, vec, block, np.int32, np.int32, np.float32, scratch.type])

    def core(x, g, b, y, scratch, norm):
        tg, tb = g.acquire(1), b.acquire(1)
        for _ in range_(rows // ROWS_PER_CALL):
            tx, ty = x.acquire(1), y.acquire(1)
            norm(tx, tg, tb, ty, ROWS_PER_CALL, d, eps, scratch)
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
