"""IRON design: multi-head attention over a padded sequence, one 64-query tile at a time.

For each head and each 64-query tile the core initialises its running state (m, l, O in
data memory), takes every 64-key tile of the whole sequence with its value tile
(attn_step_64: masked scores, running max and sum, rescaled accumulation), and writes
bf16(O / l). Keys past the real length (1500 of 1536) are masked inside the kernel from
the valid-key count the core passes per key tile. The runtime sequence streams Q tiles
(pre-scaled by 1/8 on the host side of the previous matmul), K and V tiles per head.
Not compiled here (no MLIR-AIE toolchain).
As written it needs 83,456 bytes of a core's 65,536 (kernels/aie/iron_host.py).
"""
import argparse

import numpy as np
from ml_dtypes import bfloat16

TILE = 64


def amanuensis_attention(dev, seq: int, heads: int):
    from aie.helpers.taplib.tap import TensorAccessPattern
    from aie.iron import Buffer, Kernel, ObjectFifo, Program, Runtime, Worker
    from aie.iron.controlflow import range_
    from aie.iron.placers import SequentialPlacer

    tiles = -(-seq // TILE)
    padded = tiles * TILE
    last_valid = seq - (tiles - 1) * TILE
    tile_bf16 = np.ndarray[(TILE, TILE), np.dtype[bfloat16]]
    vec_f32 = np.ndarray[(TILE,), np.dtype[np.float32]]
    tile_f32 = np.ndarray[(TILE, TILE), np.dtype[np.float32]]
    of_q, of_k, of_v, of_o = (ObjectFifo(tile_bf16, name=n) for n in ("q", "k", "v", "o"))
    m, row_sum, o = Buffer(vec_f32, name="m"), Buffer(vec_f32, name="l"), Buffer(tile_f32, name="o_acc")
    init = Kernel("attn_init", "attention.o", [vec_f32, vec_f32, tile_f32])
    step = Kernel("attn_step_64", "attention.o",
                  [tile_bf16, tile_bf16, tile_bf16, np.int32, vec_f32, vec_f32, tile_f32])
    finish = Kernel("attn_finish", "attention.o", [tile_f32, vec_f32, tile_bf16])

    def core(q, k, v, out, m, row_sum, o, init, step, finish):
        for _ in range_(heads * tiles):
            init(m, row_sum, o)
            tq = q.acquire(1)
            for _ in range_(tiles - 1):
                tk, tv = k.acquire(1), v.acquire(1)
                step(tq, tk, tv, TILE, m, row_sum, o)
                k.release(1)
                v.release(1)
            tk, tv = k.acquire(1), v.acquire(1)
            step(tq, tk, tv, last_valid, m, row_sum, o)          # the last key tile holds the padding
            k.release(1)
            v.release(1)
            q.release(1)
            to = out.acquire(1)
            finish(o, row_sum, to)
            out.release(1)

    worker = Worker(core, [of_q.cons(), of_k.cons(), of_v.cons(), of_o.prod(), m, row_sum, o, init, step, finish])
    rt = Runtime()
    per_head = np.ndarray[(heads * padded * TILE,), np.dtype[bfloat16]]      # (H, padded, 64) per tensor
    with rt.sequence(per_head, per_head, per_head, per_head) as (q, k, v, out):
        rt.start(worker)
        o_out = of_o.cons()
        for h in range(heads):
            base = h * padded * TILE
            one_head = TensorAccessPattern((heads * padded, TILE), base, [1, tiles, TILE, TILE],
                                           [0, TILE * TILE, TILE, 1])
            rt.fill(of_q.prod(), q, one_head)
            # Every query tile sees every key/value tile of its head, in order.
            kv = TensorAccessPattern((heads * padded, TILE), base, [tiles, tiles, TILE, TILE],
                                     [0, TILE * TILE, TILE, 1])
            rt.fill(of_k.prod(), k, kv)
            rt.fill(of_v.prod(), v, kv)
            rt.drain(o_out, out, one_head, wait=True)
    return Program(dev, rt).resolve_program(SequentialPlacer())


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-d", "--device", choices=("npu", "npu2"), required=True)
    p.add_argument("-T", type=int, required=True, help="sequence length (1500 for Whisper)")
    p.add_argument("-H", type=int, required=True, help="heads")
    args = p.parse_args()
    from aie.iron.device import NPU1, NPU2

    print(amanuensis_attention(NPU1() if args.device == "npu" else NPU2(), args.T, args.H))


if __name__ == "__main__":
    main()
