"""IRON design: LayerNorm with affine over R rows of D values on the whole array.

4 rows x `cols` columns of cores; each core normalises blocks of rows with layernormv_affine_bf16
(kernels/aie/layernorm/layernorm_vec.cc). Per round, column c's memory tile takes 4 blocks of rows
from its shim channel and splits them to its 4 cores, and joins their outputs back; gamma and beta
(one buffer, gamma then beta: one DMA channel) are broadcast to every core once. A block is as many
rows (a power of two, at most 64) as fit a core's data memory with x and y double-buffered: 16 rows
for d 384, 4 for d 1280. R must be a multiple of 4 x cols x the block.
Not compiled here; kernels/aie/iron_host.py runs it on the host.
"""
import argparse

import numpy as np
from ml_dtypes import bfloat16

MAX_ROWS_PER_CALL = 64
ROWS = 4                              # rows of cores
DATA_MEMORY = 64 * 1024 - 1024        # a core's data memory less its stack (the host executor checks both)


def rows_per_call(d: int) -> int:
    """Rows per block: x and y double-buffered and gamma-beta within DATA_MEMORY."""
    rows = MAX_ROWS_PER_CALL
    while rows > 1 and 2 * 2 * rows * d * 2 + 2 * d * 2 > DATA_MEMORY:
        rows //= 2
    return rows


def amanuensis_layernorm(dev, rows: int, d: int, eps: float = 1e-5, cols: int = 4):
    from aie.helpers.taplib.tap import TensorAccessPattern
    from aie.iron import Kernel, ObjectFifo, Program, Runtime, Worker
    from aie.iron.controlflow import range_
    from aie.iron.device import Tile
    from aie.iron.placers import SequentialPlacer

    per_call, cores = rows_per_call(d), ROWS * cols
    assert rows % (cores * per_call) == 0 and d % 16 == 0, f"R must be a multiple of {cores * per_call}"
    rounds = rows // (cores * per_call)
    block = np.ndarray[(per_call * d,), np.dtype[bfloat16]]
    column = np.ndarray[(ROWS * per_call * d,), np.dtype[bfloat16]]
    params = np.ndarray[(2 * d,), np.dtype[bfloat16]]
    norm = Kernel("layernormv_affine_bf16", "layernorm.o", [block, params, block, np.int32, np.int32, np.float32])
    offsets = [r * per_call * d for r in range(ROWS)]
    x_in = [ObjectFifo(column, name=f"x{c}") for c in range(cols)]
    x_core = [x_in[c].cons().split(offsets, Tile(c, 1), obj_types=[block] * ROWS,
                                   names=[f"x{c}_{r}" for r in range(ROWS)]) for c in range(cols)]
    y_out = [ObjectFifo(column, name=f"y{c}") for c in range(cols)]
    y_core = [y_out[c].prod().join(offsets, Tile(c, 1), obj_types=[block] * ROWS,
                                   names=[f"y{c}_{r}" for r in range(ROWS)]) for c in range(cols)]
    p_in = ObjectFifo(params, name="gamma_beta", depth=1)
    p_core = p_in.cons().forward(Tile(0, 1), name="gamma_beta_all", depth=1)

    def core(x, p, y, norm):
        tp = p.acquire(1)
        for _ in range_(rounds):
            tx, ty = x.acquire(1), y.acquire(1)
            norm(tx, tp, ty, per_call, d, eps)
            x.release(1)
            y.release(1)
        p.release(1)

    workers = [Worker(core, [x_core[c][r].cons(), p_core.cons(), y_core[c][r].prod(), norm],
                      placement=Tile(c, 2 + r), while_true=False)
               for r in range(ROWS) for c in range(cols)]
    rt = Runtime()
    full = np.ndarray[(rows * d,), np.dtype[bfloat16]]
    with rt.sequence(full, params, full) as (x, p, y):
        rt.start(*workers)
        rt.fill(p_in.prod(), p, placement=Tile(0, 0))
        for c in range(cols):
            # Round t gives column c the 4 blocks of rows after the first c columns' 4 blocks.
            rows_of_c = TensorAccessPattern((rows, d), c * ROWS * per_call * d, [rounds, ROWS * per_call, d],
                                            [cores * per_call * d, d, 1])
            rt.fill(x_in[c].prod(), x, rows_of_c, placement=Tile(c, 0))
            rt.drain(y_out[c].cons(), y, rows_of_c, placement=Tile(c, 0), wait=True)
    return Program(dev, rt).resolve_program(SequentialPlacer())


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-d", "--device", choices=("npu", "npu2"), required=True)
    p.add_argument("-R", type=int, required=True, help="rows (1536: 1500 positions padded)")
    p.add_argument("-D", type=int, required=True, help="d_model")
    args = p.parse_args()
    from aie.iron.device import NPU1, NPU2

    cols = 4 if args.device == "npu" else 8
    print(amanuensis_layernorm(NPU1() if args.device == "npu" else NPU2(), args.R, args.D, cols=cols))


if __name__ == "__main__":
    main()
