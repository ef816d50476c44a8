"""IRON design: Whisper's log-mel front end for one 30 s window on the whole array, in three phases
of one dispatch (the vectorised kernels of kernels/aie/mel/mel_vec.cc, fp32 throughout).

4 rows x `cols` columns of cores (4 on Phoenix/Hawk Point, 8 on Strix). The 3000 frames are padded
to 3072: 12 bands of 4 row tiles of 64 frames; core (r, c) takes row tile r of every band.
1. spectrum and power: the shim DMA cuts the frames straight from the reflect-padded samples (400
   every 160, as 64 x 32 fp32 chunks of K, K padded to 416), which the memory tile blocks for the
   matrix unit and broadcasts along row r. Column c takes the groups of 32 bins c, c + cols, ...
   (7 groups); for each it accumulates two 64 x 32 spectrum tiles (16 bins' cos, then their -sin)
   over the 13 K chunks (mmf_f32_64x32x32, the DFT's pieces down the column) and turns both into
   the group's 64 x 32 power tile (melv_power_64x32), written to scratch (3072 x 224).
2. mel energies and log10: the power read back in 64 x 32 chunks of K (7), the mel filters' pieces
   down the column, column c taking the 32-mel chunks c, c + cols, ...; log10 of each tile
   (melv_log10_max_64x32) to scratch, and a running maximum over the real frames and mels; each
   core then writes its maximum as one tile (melv_max_out_64x32).
3. the finish: every core reads the maxima of all cores as one tile (melv_global_max: the window's
   maximum, exact in any order), then its log-mel tiles, and writes bf16((max(x, max - 8) + 4) / 4),
   kept as fp32, to out (melv_finish_64x32).
A phase's outputs go through DDR to the next (the runtime sequence awaits them), which is also how
the window's maximum crosses the cores. The three phases share the fifos: A (64 x 32 fp32, 8 KiB)
along each row, W (three 32 x 32 bf16 pieces, 6 KiB) down each column, and C (64 x 32 fp32)
joined in the column's memory tile and written row-major. Per core: A 2 x 8, W 2 x 6, C 2 x 8, the
accumulator 8 and the stack 1: 53 KiB.
Its runtime sequence takes (samples, params, scratch, out): the window reflect-padded by 200 and
zero-extended to SAMPLES (fp32); the DFT's and the filters' pieces (bf16, kernels.aie.tiles.
pack_mel); scratch (fp32, scratch_layout's size); the log-mel (fp32, FRAMES_PADDED x mel_columns).
Not compiled here (no MLIR-AIE toolchain); kernels/aie/iron_host.py runs it on the host.
"""
import argparse
from typing import NamedTuple

import numpy as np
from ml_dtypes import bfloat16

N_FFT, HOP, FRAMES = 400, 160, 3000
TILE, COLS, ROWS = 64, 32, 4          # frames of a tile, its columns (the K chunk too), rows of cores
BAND = ROWS * TILE
FRAMES_PADDED = -(-FRAMES // BAND) * BAND                   # 3072
DFT_CHUNKS = -(-N_FFT // COLS)                              # 13: K = 400 padded to 416
GROUPS = 7                                                  # groups of 32 bins: 224, 201 of them real
POWER = GROUPS * COLS                                       # 224 power columns
PIECES = 3 * COLS * COLS                                    # a W object: three 32 x 32 bf16 pieces
GROUP_VALUES = 2 * DFT_CHUNKS * PIECES                      # one group's DFT: two halves of 13 K chunks
FILTER_VALUES = GROUPS * PIECES                             # one 32-mel chunk's filters: 7 K chunks
SAMPLES = (FRAMES_PADDED - 1) * HOP + DFT_CHUNKS * COLS     # the samples the last frame's chunks reach
OBJECT = TILE * COLS
MAX_COLS = 8                                                # columns of the largest array (Strix)
A_BLOCKED = [(16, 4 * COLS), (COLS // 8, 8), (4, COLS), (8, 1)]      # 64 x 32 row-major -> 4 x 8 blocks
C_ROW_MAJOR = [(TILE, 4 * COLS), (4, 4), (COLS // 4, 16), (4, 1)]    # 4 x (64 x 32 in 4 x 4 blocks) -> rows


def mel_columns(n_mels: int) -> int:
    return -(-n_mels // COLS) * COLS


def scratch_layout(n_mels: int) -> tuple[int, int, int]:
    """(offset of the log-mel, offset of the maxima, values of scratch): the power first, at 0; room for
    the maxima of up to MAX_COLS columns, so that the buffers are the same on every device."""
    log_mel = FRAMES_PADDED * POWER
    maxima = log_mel + FRAMES_PADDED * mel_columns(n_mels)
    return log_mel, maxima, maxima + ROWS * MAX_COLS * OBJECT


def params_size(n_mels: int) -> int:
    return GROUPS * GROUP_VALUES + mel_columns(n_mels) // COLS * FILTER_VALUES


def amanuensis_mel(dev, n_mels: int, cols: int = 4):
    from aie.iron import Buffer, Kernel, ObjectFifo, Program, Runtime, Worker
    from aie.iron.controlflow import range_
    from aie.iron.device import Tile
    from aie.iron.placers import SequentialPlacer

    f32 = np.dtype[np.float32]
    a_ty = np.ndarray[(TILE, COLS), f32]
    w_ty = np.ndarray[(PIECES,), np.dtype[bfloat16]]
    c_col_ty = np.ndarray[(BAND, COLS), f32]
    lanes_ty = np.ndarray[(16,), f32]
    kernels = {
        "zero": Kernel("melv_zero_64x32", "mel.o", [a_ty]),
        "mac": Kernel("mmf_f32_64x32x32", "mel.o", [a_ty, w_ty, a_ty]),
        "power": Kernel("melv_power_64x32", "mel.o", [a_ty, np.int32, a_ty]),
        "log10_max": Kernel("melv_log10_max_64x32", "mel.o", [a_ty, np.int32, np.int32, lanes_ty, a_ty]),
        "max_init": Kernel("melv_max_init", "mel.o", [lanes_ty]),
        "max_out": Kernel("melv_max_out_64x32", "mel.o", [lanes_ty, a_ty]),
        "global_max": Kernel("melv_global_max", "mel.o", [a_ty, lanes_ty]),
        "finish": Kernel("melv_finish_64x32", "mel.o", [a_ty, lanes_ty, a_ty]),
    }
    a_in = [ObjectFifo(a_ty, name=f"a{r}_in") for r in range(ROWS)]
    a_core = [a_in[r].cons().forward(placement=Tile(r % cols, 1), dims_to_stream=A_BLOCKED, name=f"a{r}")
              for r in range(ROWS)]
    w_in = [ObjectFifo(w_ty, name=f"w{c}_in") for c in range(cols)]
    w_core = [w_in[c].cons().forward(placement=Tile(c, 1), name=f"w{c}") for c in range(cols)]
    c_out = [ObjectFifo(c_col_ty, name=f"c{c}", dims_to_stream=C_ROW_MAJOR) for c in range(cols)]
    c_core = [c_out[c].prod().join([r * OBJECT for r in range(ROWS)], placement=Tile(c, 1),
                                   obj_types=[a_ty] * ROWS, names=[f"c{c}_{r}" for r in range(ROWS)])
              for c in range(cols)]
    bands, chunks = FRAMES_PADDED // BAND, mel_columns(n_mels) // COLS

    def core(a, w, out, acc, running, maximum, row, col, k):
        _spectrum_core(a, w, out, acc, bands, cols, col, range_, k)
        _energies_core(a, w, out, acc, running, n_mels, bands, cols, row, col, range_, k)
        _finish_core(a, out, maximum, bands, chunks, cols, col, range_, k)

    def bound(row, col):
        def fn(a, w, out, acc, running, maximum, *ks):
            core(a, w, out, acc, running, maximum, row, col, dict(zip(kernels, ks)))
        return fn

    workers = [Worker(bound(r, c), [a_core[r].cons(), w_core[c].cons(), c_core[c][r].prod(),
                                    Buffer(a_ty, name=f"acc{r}{c}"), Buffer(lanes_ty, name=f"run{r}{c}"),
                                    Buffer(lanes_ty, name=f"max{r}{c}"), *kernels.values()],
                      placement=Tile(c, 2 + r), while_true=False)
               for r in range(ROWS) for c in range(cols)]
    rt = Runtime()
    sizes = (SAMPLES, params_size(n_mels), scratch_layout(n_mels)[2], FRAMES_PADDED * mel_columns(n_mels))
    types = (f32, np.dtype[bfloat16], f32, f32)
    with rt.sequence(*(np.ndarray[(n,), t] for n, t in zip(sizes, types))) as (samples, params, scratch, out):
        rt.start(*workers)
        streams = (a_in, w_in, c_out, cols)
        _spectrum_sequence(rt, streams, samples, params, scratch, sizes)
        _energies_sequence(rt, streams, params, scratch, n_mels, sizes)
        _finish_sequence(rt, streams, scratch, out, n_mels, sizes)
    return Program(dev, rt).resolve_program(SequentialPlacer())


def _mine(first: int, count: int, cols: int) -> int:
    """How many of the items first, first + cols, ... below count a column takes."""
    return len(range(first, count, cols))


# ---- the cores --------------------------------------------------------------------------------------------

def _spectrum_core(a, w, out, acc, bands, cols, col, range_, k):
    """Per band and round: the group's two spectrum tiles over the DFT's K chunks, then its power tile;
    in a round without a group of its own a core lets its row's frames pass by."""
    for _ in range_(bands):
        for group in range(col, -(-GROUPS // cols) * cols, cols):
            mine = group < GROUPS
            power = out.acquire(1) if mine else None
            for half in range(2):
                _accumulate(a, w, acc, DFT_CHUNKS, mine, range_, k)
                if mine:
                    k["power"](acc, half, power)
            if mine:
                out.release(1)


def _accumulate(a, w, acc, k_chunks, mine, range_, k):
    """acc = the row's next k_chunks A tiles times the column's W objects; a core without the item
    (mine False) lets the A tiles pass by."""
    if mine:
        k["zero"](acc)
    for _ in range_(k_chunks):
        tile = a.acquire(1)
        if mine:
            k["mac"](tile, w.acquire(1), acc)
            w.release(1)
        a.release(1)


def _energies_core(a, w, out, acc, running, n_mels, bands, cols, row, col, range_, k):
    """Per band and round: a 32-mel chunk's energies over the power's K chunks, their log10 and the
    running maximum of the real frames and mels; then the core's maximum as one tile."""
    k["max_init"](running)
    chunks = mel_columns(n_mels) // COLS
    last_rows = min(max(FRAMES - (bands - 1) * BAND - row * TILE, 0), TILE)    # real frames in the last band
    for band_rows, count in ((TILE, bands - 1), (last_rows, 1)):
        for _ in range_(count):
            for chunk in range(col, -(-chunks // cols) * cols, cols):
                mine = chunk < chunks
                _accumulate(a, w, acc, GROUPS, mine, range_, k)
                if mine:
                    k["log10_max"](acc, band_rows, min(COLS, n_mels - chunk * COLS), running, out.acquire(1))
                    out.release(1)
    k["max_out"](running, out.acquire(1))
    out.release(1)


def _finish_core(a, out, maximum, bands, chunks, cols, col, range_, k):
    """The window's maximum from every core's, then per band the row's log-mel tiles: the column's own
    finished, the others passed by."""
    k["global_max"](a.acquire(1), maximum)
    a.release(1)
    for _ in range_(bands):
        for chunk in range(chunks):
            tile = a.acquire(1)
            if chunk % cols == col:
                k["finish"](tile, maximum, out.acquire(1))
                out.release(1)
            a.release(1)


# ---- the runtime sequence ---------------------------------------------------------------------------------

class Phase(NamedTuple):
    """One matmul phase's runtime sequence: row r of a band takes A from `a` (tensor, size, offset of
    its first row, the access pattern's sizes and strides after it); column c's W objects start at
    params offset w_at + c·w_values, its outputs (items of the `items` dealt to the columns) go to
    `out` (tensor, size, offset, width) at columns c·COLS, c·COLS + cols·COLS, ..."""

    a: tuple
    a_row: int                       # values between one row of frames (or power) and the next
    a_sizes: list
    a_strides: list
    w_at: int
    w_values: int
    items: int
    out: tuple


def _phase_sequence(rt, streams, params, sizes, ph: Phase):
    from aie.helpers.taplib.tap import TensorAccessPattern
    from aie.iron.device import Tile

    a_in, w_in, c_out, cols = streams
    (a, a_size, a_at), (out, out_size, out_at, width) = ph.a, ph.out
    for band in range(FRAMES_PADDED // BAND):
        group = rt.task_group()
        for r in range(ROWS):
            rt.fill(a_in[r].prod(), a, TensorAccessPattern((a_size,), a_at + (band * BAND + r * TILE) * ph.a_row,
                                                           ph.a_sizes, ph.a_strides),
                    placement=Tile(r % cols, 0), task_group=group)
        for c in range(min(cols, ph.items)):
            mine = _mine(c, ph.items, cols)
            rt.fill(w_in[c].prod(), params, TensorAccessPattern((sizes[1],), ph.w_at + c * ph.w_values,
                                                                [mine, ph.w_values // 256, 256],
                                                                [cols * ph.w_values, 256, 1]),
                    placement=Tile(c, 0), task_group=group)
            rt.drain(c_out[c].cons(), out, TensorAccessPattern((out_size,), out_at + band * BAND * width + c * COLS,
                                                               [mine, BAND, COLS], [cols * COLS, width, 1]),
                     placement=Tile(c, 0), task_group=group, wait=True)
        rt.finish_task_group(group)


def _spectrum_sequence(rt, streams, samples, params, scratch, sizes):
    """Row r's 64 frames, 400 samples every 160, as 13 chunks of 32 samples, for both halves of every
    round; each group's power tile to scratch."""
    rounds = -(-GROUPS // streams[3])
    _phase_sequence(rt, streams, params, sizes, Phase(
        (samples, sizes[0], 0), HOP, [2 * rounds, DFT_CHUNKS, TILE, COLS], [0, COLS, HOP, 1],
        0, GROUP_VALUES, GROUPS, (scratch, sizes[2], 0, POWER)))


def _energies_sequence(rt, streams, params, scratch, n_mels, sizes):
    """The power back in 7 chunks of K per round, the filters' chunks, the log-mel tiles to scratch;
    then each core's maximum."""
    from aie.helpers.taplib.tap import TensorAccessPattern
    from aie.iron.device import Tile

    _, _, c_out, cols = streams
    width, chunks = mel_columns(n_mels), mel_columns(n_mels) // COLS
    log_mel, maxima, _ = scratch_layout(n_mels)
    _phase_sequence(rt, streams, params, sizes, Phase(
        (scratch, sizes[2], 0), POWER, [-(-chunks // cols), GROUPS, TILE, COLS], [0, COLS, POWER, 1],
        GROUPS * GROUP_VALUES, FILTER_VALUES, chunks, (scratch, sizes[2], log_mel, width)))
    group = rt.task_group()
    for c in range(cols):                       # each core's maximum, its column's 4 as one joined object
        rt.drain(c_out[c].cons(), scratch, TensorAccessPattern((sizes[2],), maxima + c * ROWS * OBJECT,
                                                               [ROWS * OBJECT // 256, 256], [256, 1]),
                 placement=Tile(c, 0), task_group=group, wait=True)
    rt.finish_task_group(group)


def _finish_sequence(rt, streams, scratch, out, n_mels, sizes):
    from aie.helpers.taplib.tap import TensorAccessPattern
    from aie.iron.device import Tile

    a_in, _, c_out, cols = streams
    width, chunks = mel_columns(n_mels), mel_columns(n_mels) // COLS
    log_mel, maxima, _ = scratch_layout(n_mels)
    cores = ROWS * cols
    for band in range(FRAMES_PADDED // BAND):
        group = rt.task_group()
        for r in range(ROWS):
            if band == 0:                       # the first OBJECT / cores values of every core's maximum tile
                rt.fill(a_in[r].prod(), scratch, TensorAccessPattern((sizes[2],), maxima, [cores, OBJECT // cores],
                                                                     [OBJECT, 1]),
                        placement=Tile(r % cols, 0), task_group=group)
            rows_at = log_mel + (band * BAND + r * TILE) * width
            rt.fill(a_in[r].prod(), scratch, TensorAccessPattern((sizes[2],), rows_at, [chunks, TILE, COLS],
                                                                 [COLS, width, 1]),
                    placement=Tile(r % cols, 0), task_group=group)
        for c in range(min(cols, chunks)):
            rt.drain(c_out[c].cons(), out, TensorAccessPattern((sizes[3],), band * BAND * width + c * COLS,
                                                               [_mine(c, chunks, cols), BAND, COLS],
                                                               [cols * COLS, width, 1]),
                     placement=Tile(c, 0), task_group=group, wait=True)
        rt.finish_task_group(group)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-d", "--device", choices=("npu", "npu2"), required=True)
    p.add_argument("-m", "--mels", type=int, default=80, help="80, or 128 for large-v3")
    p.add_argument("--cols", type=int, help="columns of cores (default: 4 on npu, 8 on npu2)")
    args = p.parse_args()
    from aie.iron.device import NPU1, NPU2

    device = NPU1() if args.device == "npu" else NPU2()
    print(amanuensis_mel(device, args.mels, args.cols or (4 if args.device == "npu" else 8)))


if __name__ == "__main__":
    main()
