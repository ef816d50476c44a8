"""IRON design: C (M x N) = act(A (M x K) · W (K x N) + bias) + residual on the whole array.

4 rows x `cols` columns of cores (4 on Phoenix/Hawk Point, 8 on Strix); each core computes 64 x 32
output tiles: core (r, c) takes the 64 rows of block r of every 256-row band and the 32-column
tiles c, c + cols, ... of N.
- A: row r's 64 x 64 tiles of the band, in K order, from a shim channel through a memory tile,
  which blocks them for the matrix unit (4 x 8 blocks, dims_to_stream) and broadcasts them to the
  row's cores. A in DDR is row-major (the previous op's output, as it stands).
- W and bias: packed once per model (kernels.aie.tiles.pack_linear: per 32-column tile, its K/64
  blocked 64 x 32 operands, then its bias), from a shim channel through column c's memory tile,
  broadcast down the column.
- residual: on the W stream after each tile's bias, as 4 objects of 64 x 32 (one per row of
  cores, put in the C layout by the shim's access pattern); each core keeps its own. Riding on the
  W stream keeps the design at 2 shim input channels per column, the hardware's number.
- C: each core's 64 x 32 bf16 tile, joined with its column's others in the column's memory tile
  (256 x 32) and written row-major (dims_to_stream) to DDR.
Per output tile a core runs mmv_zero_64x32, mmv_bf16_64x64x32 per K chunk, mmv_bias_act_64x32,
then mmv_round_64x32 or mmv_add_round_64x32 (kernels/aie/matmul/mm_vec.cc). Each core holds
2 x 8 KiB of A, 2 x 4 KiB of W, 2 x 4 KiB of C and its 8 KiB fp32 accumulator: 41 KiB with the
stack. M must be a multiple of 256 and N of 32 x cols; K of 64.
Not compiled here (no MLIR-AIE toolchain); kernels/aie/iron_host.py runs it on the host.
"""
import argparse

import numpy as np
from ml_dtypes import bfloat16

TILE = 64            # rows of an output tile, and the K chunk
COLS = 32            # columns of an output tile (kernels.aie.tiles.PACK_COLUMNS)
ROWS = 4             # rows of cores
A_BLOCKED = [(16, 4 * TILE), (8, 8), (4, TILE), (8, 1)]                 # 64 x 64 row-major -> 4 x 8 blocks
GROUP_TILES = 4      # output column tiles per core in one task group
C_ROW_MAJOR = [(TILE, 128), (4, 4), (COLS // 4, 16), (4, 1)]            # 4 x (64 x 32 in 4 x 4 blocks) -> rows


def amanuensis_matmul(dev, m: int, k: int, n: int, gelu: bool, residual: bool, cols: int = 4):
    from aie.helpers.taplib.tap import TensorAccessPattern
    from aie.iron import Buffer, Kernel, ObjectFifo, Program, Runtime, Worker
    from aie.iron.controlflow import range_
    from aie.iron.device import Tile
    from aie.iron.placers import SequentialPlacer

    band = ROWS * TILE
    assert m % band == 0 and k % TILE == 0 and n % (COLS * cols) == 0, \
        f"M must be a multiple of {band}, K of {TILE}, N of {COLS * cols}"
    k_tiles, col_tiles = k // TILE, n // (COLS * cols)           # per output tile; per band, per core
    packed = (k_tiles + 1) * TILE * COLS                         # one 32-column tile's W and bias
    a_ty = np.ndarray[(TILE, TILE), np.dtype[bfloat16]]
    w_ty = np.ndarray[(TILE, COLS), np.dtype[bfloat16]]          # a W operand, a bias, a residual tile
    c_ty = np.ndarray[(TILE, COLS), np.dtype[bfloat16]]
    c_col_ty = np.ndarray[(ROWS * TILE, COLS), np.dtype[bfloat16]]
    acc_ty = np.ndarray[(TILE, COLS), np.dtype[np.float32]]
    zero = Kernel("mmv_zero_64x32", "mm.o", [acc_ty])
    mac = Kernel("mmv_bf16_64x64x32", "mm.o", [a_ty, w_ty, acc_ty])
    bias_act = Kernel("mmv_bias_act_64x32", "mm.o", [acc_ty, w_ty, np.int32])
    finish = (Kernel("mmv_add_round_64x32", "mm.o", [acc_ty, w_ty, c_ty]) if residual
              else Kernel("mmv_round_64x32", "mm.o", [acc_ty, c_ty]))

    a_in = [ObjectFifo(a_ty, name=f"a{r}_in") for r in range(ROWS)]
    a_core = [a_in[r].cons().forward(placement=Tile(r % cols, 1), dims_to_stream=A_BLOCKED, name=f"a{r}")
              for r in range(ROWS)]
    w_in = [ObjectFifo(w_ty, name=f"w{c}_in") for c in range(cols)]
    w_core = [w_in[c].cons().forward(placement=Tile(c, 1), name=f"w{c}") for c in range(cols)]
    c_out = [ObjectFifo(c_col_ty, name=f"c{c}", dims_to_stream=C_ROW_MAJOR) for c in range(cols)]
    c_core = [c_out[c].prod().join([r * TILE * COLS for r in range(ROWS)], placement=Tile(c, 1),
                                   obj_types=[c_ty] * ROWS, names=[f"c{c}_{r}" for r in range(ROWS)])
              for c in range(cols)]

    def core(a, w, out, acc, zero, mac, bias_act, finish, row):
        for _ in range_(m // band * col_tiles):
            zero(acc)
            for _ in range_(k_tiles):
                ta, tw = a.acquire(1), w.acquire(1)
                mac(ta, tw, acc)
                a.release(1)
                w.release(1)
            bias_act(acc, w.acquire(1), 1 if gelu else 0)
            w.release(1)
            if residual:
                for r in range(ROWS):                            # every row's residual tile; keep ours
                    tr = w.acquire(1)
                    if r == row:
                        finish(acc, tr, out.acquire(1))
                        out.release(1)
                    w.release(1)
            else:
                finish(acc, out.acquire(1))
                out.release(1)

    workers = [Worker(core, [a_core[r].cons(), w_core[c].cons(), c_core[c][r].prod(), Buffer(acc_ty, name=f"acc{r}{c}"),
                             zero, mac, bias_act, finish, r], placement=Tile(c, 2 + r))
               for r in range(ROWS) for c in range(cols)]

    rt = Runtime()
    flat = lambda size: np.ndarray[(size,), np.dtype[bfloat16]]         # noqa: E731
    with rt.sequence(flat(m * k), flat(n // COLS * packed), flat(m * n), flat(m * n)) as (a, w, res, out):
        rt.start(*workers)
        for band_start in range(0, m, band):
            # A task group per band and up to GROUP_TILES output column tiles per core: at most
            # 1 + 2 x GROUP_TILES + 1 transfers in flight on a shim tile (16 buffer descriptors).
            for first in range(0, col_tiles, GROUP_TILES):
                tiles = min(GROUP_TILES, col_tiles - first)
                group = rt.task_group()
                for r in range(ROWS):
                    # Row r's A tiles, once per output column tile.
                    rt.fill(a_in[r].prod(), a, TensorAccessPattern((m, k), (band_start + r * TILE) * k,
                                                                   [tiles, k_tiles, TILE, TILE], [0, TILE, k, 1]),
                            placement=Tile(r % cols, 0), task_group=group)
                for c in range(cols):
                    for fill in _w_stream(w, res, band_start, first * cols + c, tiles, cols, k_tiles, m, n, residual):
                        rt.fill(w_in[c].prod(), *fill, placement=Tile(c, 0), task_group=group)
                    rt.drain(c_out[c].cons(), out,
                             TensorAccessPattern((m, n), band_start * n + (first * cols + c) * COLS,
                                                 [tiles, band, COLS], [cols * COLS, n, 1]),
                             placement=Tile(c, 0), task_group=group, wait=True)
                rt.finish_task_group(group)
    return Program(dev, rt).resolve_program(SequentialPlacer())


def _w_stream(w, res, band_start, tile, tiles, cols, k_tiles, m, n, residual):
    """(tensor, access pattern) of each transfer of one column's W stream for `tiles` output tiles from
    32-column tile `tile` on (every cols-th): per tile its packed W and bias, then (with a residual)
    the band's 256 x 32 residual as 4 objects in the C layout."""
    from aie.helpers.taplib.tap import TensorAccessPattern

    packed = (k_tiles + 1) * TILE * COLS
    rows_256 = packed // 256                                      # 256-element rows: a DMA dimension < 1024
    w_dims = (n // COLS * packed,)
    if not residual:
        return [(w, TensorAccessPattern(w_dims, tile * packed, [tiles, rows_256, 256], [cols * packed, 256, 1]))]
    fills = []
    for t in range(tile, tile + tiles * cols, cols):
        fills.append((w, TensorAccessPattern(w_dims, t * packed, [rows_256, 256], [256, 1])))
        fills.append((res, TensorAccessPattern((m, n), band_start * n + t * COLS, [ROWS * TILE // 4, COLS // 4, 4, 4],
                                               [4 * n, 4, n, 1])))
    return fills


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-d", "--device", choices=("npu", "npu2"), required=True)
    p.add_argument("-M", type=int, required=True)
    p.add_argument("-K", type=int, required=True)
    p.add_argument("-N", type=int, required=True)
    p.add_argument("--gelu", action="store_true")
    p.add_argument("--residual", action="store_true")
    p.add_argument("--cols", type=int, help="columns of cores (default: 4 on npu, 8 on npu2)")
    args = p.parse_args()
    from aie.iron.device import NPU1, NPU2

    device = NPU1() if args.device == "npu" else NPU2()
    cols = args.cols or (4 if args.device == "npu" else 8)
    print(amanuensis_matmul(device, args.M, args.K, args.N, args.gelu, args.residual, cols))


if __name__ == "__main__":
    main()
