"""IRON design: C (M x N) = act(A (M x K) · B (K x N) + bias) + residual on one AIE core.

For every 64 x 64 output tile the core zeroes an fp32 accumulator in its data memory,
takes the K/64 (A, B) tile pairs in K order (mm_bf16_64x64x64), then the bias and
residual tiles, and writes one bf16 tile (mm_epilogue_64x64). The runtime sequence
streams A row blocks repeated across the N tiles, B column tiles, bias and residual,
and drains C tile by tile. One core first; spreading row blocks over 4 (Phoenix) or
8 (Strix) columns is the next step. Not compiled here (no MLIR-AIE toolchain).
As written it needs 83,200 bytes of a core's 65,536 (kernels/aie/iron_host.py).
"""
import argparse

import numpy as np
from ml_dtypes import bfloat16

TILE = 64


def amanuensis_matmul(dev, m: int, k: int, n: int, gelu: bool, residual: bool):
    from aie.helpers.taplib.tap import TensorAccessPattern
    from aie.iron import Buffer, Kernel, ObjectFifo, Program, Runtime, Worker
    from aie.iron.controlflow import range_
    from aie.iron.placers import SequentialPlacer

    assert m % TILE == 0 and k % TILE == 0 and n % TILE == 0, "pad M, K, N to multiples of 64"
    tile_bf16 = np.ndarray[(TILE, TILE), np.dtype[bfloat16]]
    tile_f32 = np.ndarray[(TILE, TILE), np.dtype[np.float32]]
    row_bf16 = np.ndarray[(TILE,), np.dtype[bfloat16]]
    of_a, of_b = ObjectFifo(tile_bf16, name="a"), ObjectFifo(tile_bf16, name="b")
    of_bias = ObjectFifo(row_bf16, name="bias")
    of_res, of_c = ObjectFifo(tile_bf16, name="res"), ObjectFifo(tile_bf16, name="c")
    acc = Buffer(tile_f32, name="acc")
    zero = Kernel("mm_zero_64x64", "mm.o", [tile_f32])
    mac = Kernel("mm_bf16_64x64x64", "mm.o", [tile_bf16, tile_bf16, tile_f32])
    epilogue = Kernel("mm_epilogue_64x64", "mm.o", [tile_f32, row_bf16, tile_bf16, np.int32, tile_bf16])

    def core(a, b, bias, res, c, acc, zero, mac, epilogue):
        for _ in range_(m // TILE * (n // TILE)):
            zero(acc)
            for _ in range_(k // TILE):
                ta, tb = a.acquire(1), b.acquire(1)
                mac(ta, tb, acc)
                a.release(1)
                b.release(1)
            tbias, tres, tc = bias.acquire(1), res.acquire(1), c.acquire(1)
            epilogue(acc, tbias, tres, 1 if gelu else 0, tc)
            bias.release(1)
            res.release(1)
            c.release(1)

    worker = Worker(core, [of_a.cons(), of_b.cons(), of_bias.cons(), of_res.cons(), of_c.prod(),
                           acc, zero, mac, epilogue])
    rt = Runtime()
    ty = lambda rows, cols: np.ndarray[(rows * cols,), np.dtype[bfloat16]]   # noqa: E731
    with rt.sequence(ty(m, k), ty(k, n), ty(1, n), ty(m, n), ty(m, n)) as (a, b, bias, res, c):
        rt.start(worker)
        c_out = of_c.cons()
        for i in range(m // TILE):
            # A row block i, once per output column tile; B and bias column tiles in order.
            rt.fill(of_a.prod(), a, TensorAccessPattern((m, k), i * TILE * k, [n // TILE, k // TILE, TILE, TILE],
                                                        [0, TILE, k, 1]))
            rt.fill(of_b.prod(), b, TensorAccessPattern((k, n), 0, [n // TILE, k // TILE, TILE, TILE],
                                                        [TILE, TILE * n, n, 1]))
            rt.fill(of_bias.prod(), bias, TensorAccessPattern((1, n), 0, [1, 1, n // TILE, TILE], [0, 0, TILE, 1]))
            tile_rows = TensorAccessPattern((m, n), i * TILE * n, [1, n // TILE, TILE, TILE], [0, TILE, n, 1])
            # Without a residual the host passes a zero tensor (kept simple: one design for both).
            rt.fill(of_res.prod(), res, tile_rows)
            rt.drain(c_out, c, tile_rows, wait=True)
    return Program(dev, rt).resolve_program(SequentialPlacer())


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-d", "--device", choices=("npu", "npu2"), required=True)
    p.add_argument("-M", type=int, required=True)
    p.add_argument("-K", type=int, required=True)
    p.add_argument("-N", type=int, required=True)
    p.add_argument("--gelu", action="store_true")
    p.add_argument("--residual", action="store_true")
    args = p.parse_args()
    from aie.iron.device import NPU1, NPU2

    device = NPU1() if args.device == "npu" else NPU2()
    print(amanuensis_matmul(device, args.M, args.K, args.N, args.gelu, args.residual))


if __name__ == "__main__":
    main()
