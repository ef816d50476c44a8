"""IRON design: multi-head self-attention over a padded sequence on the whole array.

Input: the QKV projection's output as it stands in DDR, row-major (rows x 3·d: Q | K | V, Q
pre-scaled by 1/8 through the packed weights); output: rows x d, row-major. The work is items of
(head, 4 consecutive query tiles), dealt to the columns in turn (so 6 heads x 6 items each spread
evenly over 4 columns); in an item, core (r, c) owns query tile r and walks every key tile of the
sequence for it (flash style: attnv_init, attnv_step_64 per key tile, attnv_finish;
kernels/aie/attention/attention_vec.cc), keys past the real length masked in the last tile. Per
item:
- Q: the column's 4 query tiles (256 x 64) from a shim channel, split in the column's memory
  tile, which blocks each for the matrix unit (dims_to_stream);
- K and V: every key tile of the head, K then V, on one stream through the same memory tile,
  blocked the same way and broadcast down the column; the core turns each V into the B layout and
  each K into Kᵀ in the B layout in place (attnv_v_layout, attnv_k_layout), so a core takes its
  inputs on its 2 DMA channels;
- out: the 4 tiles joined in the memory tile and written back row-major.
Each core holds Q (8 KiB), 3 K/V objects (24 KiB), its fp32 state (16.5 KiB), one output tile
(8 KiB) and a 2 KiB stack (the step's score band and P: ~1.6 KiB, estimated): 58.5 KiB.
Not compiled here (no MLIR-AIE toolchain); kernels/aie/iron_host.py runs it on the host.
"""
import argparse

import numpy as np
from ml_dtypes import bfloat16

TILE = 64
ROWS = 4                                                      # rows of cores
STACK = 2048
WAVE = 4                                                      # items per column in one task group (12 BDs)
BLOCKED = [(16, 4 * TILE), (8, 8), (4, TILE), (8, 1)]        # 64 x 64 row-major -> 4 x 8 blocks
ROW_MAJOR = [(ROWS * TILE // 4, 256), (4, 4), (16, 16), (4, 1)]   # 4 x (64 x 64 in 4 x 4 blocks) -> rows


def padded_rows(seq: int) -> int:
    """Rows of the design's tensors: the sequence padded to whole rounds of 4 query tiles."""
    return -(-seq // (ROWS * TILE)) * ROWS * TILE


def amanuensis_attention(dev, seq: int, heads: int, cols: int = 4):
    from aie.helpers.taplib.tap import TensorAccessPattern
    from aie.iron import Buffer, Kernel, ObjectFifo, Program, Runtime, Worker
    from aie.iron.controlflow import range_
    from aie.iron.device import Tile
    from aie.iron.placers import SequentialPlacer

    rows, d = padded_rows(seq), heads * TILE
    key_tiles = -(-seq // TILE)
    items = [(h, first) for h in range(heads) for first in range(0, rows, ROWS * TILE)]   # (head, first row)
    last_valid = seq - (key_tiles - 1) * TILE
    tile_ty = np.ndarray[(TILE, TILE), np.dtype[bfloat16]]
    column_ty = np.ndarray[(ROWS * TILE, TILE), np.dtype[bfloat16]]
    vec_f32 = np.ndarray[(TILE,), np.dtype[np.float32]]
    o_ty = np.ndarray[(TILE, TILE), np.dtype[np.float32]]
    init = Kernel("attnv_init", "attention.o", [vec_f32, vec_f32, o_ty])
    step = Kernel("attnv_step_64", "attention.o", [tile_ty, tile_ty, tile_ty, np.int32, vec_f32, vec_f32, o_ty])
    finish = Kernel("attnv_finish", "attention.o", [o_ty, vec_f32, tile_ty])
    v_layout = Kernel("attnv_v_layout", "attention.o", [tile_ty])
    k_layout = Kernel("attnv_k_layout", "attention.o", [tile_ty])

    offsets = [r * TILE * TILE for r in range(ROWS)]
    q_in = [ObjectFifo(column_ty, name=f"q{c}") for c in range(cols)]
    q_core = [q_in[c].cons().split(offsets, Tile(c, 1), obj_types=[tile_ty] * ROWS, depths=[1] * ROWS,
                                   names=[f"q{c}_{r}" for r in range(ROWS)], dims_to_stream=[BLOCKED] * ROWS)
              for c in range(cols)]
    kv_in = [ObjectFifo(tile_ty, name=f"kv{c}_in") for c in range(cols)]
    kv_core = [kv_in[c].cons().forward(Tile(c, 1), name=f"kv{c}", depth=3, dims_to_stream=BLOCKED)
               for c in range(cols)]
    out = [ObjectFifo(column_ty, name=f"o{c}", dims_to_stream=ROW_MAJOR) for c in range(cols)]
    out_core = [out[c].prod().join(offsets, Tile(c, 1), obj_types=[tile_ty] * ROWS, depths=[1] * ROWS,
                                   names=[f"o{c}_{r}" for r in range(ROWS)]) for c in range(cols)]

    def core(q, kv, o_fifo, m, row_sum, o, init, step, finish, v_layout, k_layout, my_items):
        for _ in range_(my_items):
            tq = q.acquire(1)
            init(m, row_sum, o)
            for _ in range_(key_tiles - 1):
                tk, tv = kv.acquire(1), kv.acquire(1)
                k_layout(tk)
                v_layout(tv)
                step(tq, tk, tv, TILE, m, row_sum, o)
                kv.release(1)
                kv.release(1)
            tk, tv = kv.acquire(1), kv.acquire(1)
            k_layout(tk)
            v_layout(tv)
            step(tq, tk, tv, last_valid, m, row_sum, o)          # the last key tile holds the padding
            kv.release(1)
            kv.release(1)
            q.release(1)
            finish(o, row_sum, o_fifo.acquire(1))
            o_fifo.release(1)

    workers = [Worker(core, [q_core[c][r].cons(), kv_core[c].cons(), out_core[c][r].prod(),
                             Buffer(vec_f32, name=f"m{r}{c}"), Buffer(vec_f32, name=f"l{r}{c}"),
                             Buffer(o_ty, name=f"o_acc{r}{c}"), init, step, finish, v_layout, k_layout,
                             len(range(c, len(items), cols))],
                      placement=Tile(c, 2 + r), stack_size=STACK, while_true=False)
               for r in range(ROWS) for c in range(min(cols, len(items)))]
    rt = Runtime()
    qkv_ty = np.ndarray[(rows * 3 * d,), np.dtype[bfloat16]]
    out_ty = np.ndarray[(rows * d,), np.dtype[bfloat16]]
    with rt.sequence(qkv_ty, out_ty) as (qkv, attn):
        rt.start(*workers)
        for wave in range(0, len(items), WAVE * cols):       # a task group per WAVE items on each column
            group = rt.task_group()
            for i in range(wave, min(wave + WAVE * cols, len(items))):
                h, first = items[i]
                c = i % cols
                rt.fill(q_in[c].prod(), qkv, TensorAccessPattern((rows, 3 * d), first * 3 * d + h * TILE,
                                                                 [ROWS * TILE, TILE], [3 * d, 1]),
                        placement=Tile(c, 0), task_group=group)
                rt.fill(kv_in[c].prod(), qkv, TensorAccessPattern((rows, 3 * d), d + h * TILE,
                                                                  [key_tiles, 2, TILE, TILE],
                                                                  [TILE * 3 * d, d, 3 * d, 1]),
                        placement=Tile(c, 0), task_group=group)
                rt.drain(out[c].cons(), attn, TensorAccessPattern((rows, d), first * d + h * TILE,
                                                                  [ROWS * TILE, TILE], [d, 1]),
                         placement=Tile(c, 0), task_group=group, wait=True)
            rt.finish_task_group(group)
    return Program(dev, rt).resolve_program(SequentialPlacer())


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-d", "--device", choices=("npu", "npu2"), required=True)
    p.add_argument("-T", type=int, required=True, help="sequence length (1500 for Whisper)")
    p.add_argument("-H", type=int, required=True, help="heads")
    args = p.parse_args()
    from aie.iron.device import NPU1, NPU2

    cols = 4 if args.device == "npu" else 8
    print(amanuensis_attention(NPU1() if args.device == "npu" else NPU2(), args.T, args.H, cols))


if __name__ == "__main__":
    main()
