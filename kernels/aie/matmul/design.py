"""IRON design: C (M x N) = act(A (M x K) · W (K x N) + bias) + residual on the whole array, and
chains of such matmuls and layernorms in one dispatch.

4 rows x `cols` columns of cores (4 on Phoenix/Hawk Point, 8 on Strix); each core computes 64 x 32
output tiles two at a time, from one pass over its A tiles (one 64 x 64 A tile feeds 2 x 1,150
cycles of products against the 2,048 cycles its 8 KiB take on the core's channel). Core (r, c)
takes the 64 rows of block r of every 256-row band; N's pairs of 32-column tiles are dealt to the
columns in rounds (pair j·cols + c on column c), and the pairs left over in a tail round: as single
tiles, one per column, when they fit the columns (N = 384 on 4 columns: a round of pairs, then 4
single tiles), else as pairs on fewer columns (Deal). A column without work in the tail lets its
row's A tiles pass by.
- A: row r's 64 x 64 tiles of the band, in K order, from a shim channel through a memory tile,
  which blocks them for the matrix unit (4 x 8 blocks, dims_to_stream) and broadcasts them to the
  row's cores, once per round. A in DDR is row-major (the previous op's output, as it stands); a
  convolution's A is its input's rows, read in overlapping windows (Linear).
- W and bias: packed once per model (kernels.aie.tiles.pack_linear: per pair of 32-column tiles,
  their blocked 64 x 32 operands K chunk by K chunk, the two tiles' interleaved, then their biases),
  from a shim channel through column c's memory tile, broadcast down the column; a single tile
  takes every other object of its pair's.
- residual: on the W stream after the biases, per tile 4 objects of 64 x 32 (one per row of cores,
  put in the C layout by the shim's access pattern); each core keeps its own. Riding on the W stream
  keeps the design at 2 shim input channels per column, the hardware's number.
- C: each core's 64 x 32 bf16 tiles, joined with its column's others in the column's memory tile
  (256 x 32) and written row-major (dims_to_stream) to DDR.
Per pair a core runs mmv_zero_64x32 twice, mmv_bf16_64x64x32 twice per K chunk, and per tile
mmv_bias_act_64x32, then mmv_round_64x32 or mmv_add_round_64x32 (kernels/aie/matmul/mm_vec.cc).
Each core holds 2 x 8 KiB of A, 2 x 4 KiB of W, 2 x 4 KiB of C and two 8 KiB fp32 accumulators:
49 KiB with the stack. M must be a multiple of 256, N of 64 and K of 64.

A chain (amanuensis_chain) runs phases one after another on the same cores and streams, each
reading the previous phase's output from DDR: Linear phases as above, and Norm phases, a layernorm
over rows of d values on the same streams (mm_vec.cc's lnv_* kernels): per band, row r's cores
receive their 64 rows as A tiles twice for the statistics and once more to normalise; core (r, c)
normalises the K chunks c, c + cols, ... (gamma and beta per chunk on the W stream, kernels.aie.
tiles.pack_norm) and writes each as two 64 x 32 C tiles. Its state adds 4.5 KiB per core. A
Linear phase may be a convolution (Linear.window) with rows of its own: the encoder's stem (conv1
over 3072 rows, conv2 over 1536 with the positions as its residual) then layer 0's layernorm and
QKV projection are one chain. A chain's runtime sequence takes (inp, side, params, scratch, out):
the first phase reads inp (after a row of zeros when a convolution reads it: chain_io), a residual
is side or an earlier phase's output, every phase's packed weights lie in params and every
intermediate output in scratch (chain_layout gives both offsets), the last phase writes out.
Not compiled here (no MLIR-AIE toolchain); kernels/aie/iron_host.py runs it on the host.
"""
import argparse
from typing import NamedTuple

import numpy as np
from ml_dtypes import bfloat16

TILE = 64            # rows of an output tile, and the K chunk
COLS = 32            # columns of an output tile (kernels.aie.tiles.PACK_COLUMNS)
ROWS = 4             # rows of cores
OBJECT = TILE * COLS  # values of a W object (and of a C tile)
LN_STATE = 64 * 16 + 64 + 64                                            # mm_vec.cc's layernorm state (fp32)
A_BLOCKED = [(16, 4 * TILE), (8, 8), (4, TILE), (8, 1)]                 # 64 x 64 row-major -> 4 x 8 blocks
PAIR = 2             # output tiles a core computes per pass over its A tiles (kernels.aie.tiles.PACK_PAIR)
WIDTH = PAIR * COLS  # output columns per core and round
GROUP_TILES = 4      # rounds (pairs of output tiles per core) in one task group
C_ROW_MAJOR = [(TILE, 128), (4, 4), (COLS // 4, 16), (4, 1)]            # 4 x (64 x 32 in 4 x 4 blocks) -> rows
STATS_PASSES = 2     # the layernorm phase's passes over A before it normalises: mean, then variance


class Linear(NamedTuple):
    """A matmul phase: out (M x n) = act(x (M x k) · W + bias) + residual. x and the residual name "inp",
    "side" or an earlier phase's output ("p0", "p1", ...); x is the previous phase's output by default.
    A convolution (kernel size 3, padding 1; window = (c, s): x's rows of c values, stride s) takes as row t of
    its A the input rows s·t − 1 .. s·t + 1, which lie next to each other in memory: the DMA reads them
    from a source with a row of zeros before its first (bordered), rows s·c values apart, no patches
    made; k is 3c rounded up to 64, W's rows past 3c zero. rows: its output rows, where they are not
    the chain's M (a convolution's)."""

    k: int
    n: int
    gelu: bool = False
    residual: str | None = None
    source: str | None = None
    window: tuple[int, int] | None = None
    rows: int = 0

    @property
    def width(self) -> int:
        return self.n

    @property
    def input_width(self) -> int:
        return self.window[0] if self.window else self.k

    @property
    def w_rows(self) -> int:
        """Rows of its W before the padding to k: 3c for a convolution."""
        return 3 * self.window[0] if self.window else self.k

    @property
    def a_step(self) -> int:
        """Values between the starts of consecutive rows of A in its source."""
        return self.window[0] * self.window[1] if self.window else self.k

    def bordered_values(self, m: int) -> int:
        """A convolution's bordered source: values it reads from the zero row on, and no fewer than
        its input rows (s·rows) and the border hold."""
        c, s = self.window
        rows = self.rows or m
        return max((rows - 1) * s * c + self.k, (1 + s * rows) * c)

    @property
    def packed(self) -> int:
        """Values of its packed W and bias (kernels.aie.tiles.pack_linear)."""
        return self.n // COLS * (self.k // TILE + 1) * OBJECT

    @property
    def pair_packed(self) -> int:
        """Values of one pair of output tiles' packed W and biases."""
        return PAIR * (self.k // TILE + 1) * OBJECT


class Norm(NamedTuple):
    """A layernorm phase over rows of d values (d a multiple of 64)."""

    d: int
    eps: float = 1e-5
    source: str | None = None
    window = None
    rows = 0

    @property
    def width(self) -> int:
        return self.d

    @property
    def input_width(self) -> int:
        return self.d

    @property
    def packed(self) -> int:
        """Values of its gamma and beta (kernels.aie.tiles.pack_norm)."""
        return self.d // TILE * OBJECT


def phases_spec(phases) -> str:
    """Phases as one line of text (the manifest's key and make's CHAIN), e.g.
    "norm 384 1e-05; linear 384 1152"; parse_phases reads it back."""
    parts = []
    for ph in phases:
        if isinstance(ph, Norm):
            words = [f"norm {ph.d} {ph.eps!r}"]
        else:
            words = [f"linear {ph.k} {ph.n}"] + (["gelu"] if ph.gelu else []) + \
                ([f"residual={ph.residual}"] if ph.residual else []) + \
                ([f"window={ph.window[0]}x{ph.window[1]}"] if ph.window else []) + \
                ([f"rows={ph.rows}"] if ph.rows else [])
        parts.append(" ".join(words + ([f"source={ph.source}"] if ph.source else [])))
    return "; ".join(parts)


def parse_phases(spec: str) -> list:
    phases = []
    for part in spec.split(";"):
        kind, *words = part.split()
        named = dict(w.split("=", 1) for w in words if "=" in w)
        plain = [w for w in words if "=" not in w]
        if kind == "norm":
            phases.append(Norm(int(plain[0]), float(plain[1]), named.get("source")))
        else:
            window = tuple(int(v) for v in named["window"].split("x")) if "window" in named else None
            phases.append(Linear(int(plain[0]), int(plain[1]), "gelu" in plain, named.get("residual"),
                                 named.get("source"), window, int(named.get("rows", 0))))
    return phases


class ChainIo(NamedTuple):
    """A chain's inputs as its runtime sequence takes them: inp (values, the offset of its first row:
    a row of zeros before it when a convolution reads it, rows and values per row as the host places
    them) and side (rows and values per row; 0 rows for none)."""

    inp: int
    inp_at: int
    rows: int
    width: int
    side_rows: int
    side_width: int

    @property
    def side(self) -> int:
        """Values of the side input (0 for none)."""
        return self.side_rows * self.side_width


def chain_io(m: int, phases) -> ChainIo:
    """The inputs of a chain of M rows: inp bordered when a convolution reads it, side as its phase's rows."""
    first = phases[0]
    rows = first.window[1] * (first.rows or m) if first.window else m
    inp, at = rows * first.input_width, 0
    for ph in phases:
        if ph.window and (ph.source == "inp" or ph is first):
            inp, at = max(inp + first.input_width, ph.bordered_values(m)), first.input_width
    side = next((ph for ph in phases if isinstance(ph, Linear) and ph.residual == "side"), None)
    return ChainIo(inp, at, rows, first.input_width, (side.rows or m) if side else 0, side.n if side else 0)


def chain_layout(m: int, phases) -> tuple[list[int], list[int | None], int, int]:
    """(offset of each phase's packed operands in params, offset of each phase's output in scratch (None
    for the last: it writes out), values of params, values of scratch). An output a convolution reads
    has a row of zeros before it and room for the convolution's reads after it; scratch is zeros
    before the first run, and nothing writes those rows."""
    params, scratch, p, s = [], [], 0, 0
    for i, ph in enumerate(phases):
        params.append(p)
        p += ph.packed
        if i == len(phases) - 1:
            scratch.append(None)
            continue
        size = (ph.rows or m) * ph.width
        readers = [r for j, r in enumerate(phases[i + 1:], i + 1) if r.window and (r.source or f"p{j - 1}") == f"p{i}"]
        if readers:
            lead = ph.width
            size = max([lead + size] + [r.bordered_values(m) for r in readers])
            scratch.append(s + lead)
        else:
            scratch.append(s)
        s += size
    return params, scratch, p, s


def amanuensis_matmul(dev, m: int, k: int, n: int, gelu: bool, residual: bool, cols: int = 4):
    """One matmul: its runtime sequence takes (a, w, res, out)."""
    return _program(dev, m, [Linear(k, n, gelu, "side" if residual else None)], cols, single=True)


def amanuensis_chain(dev, m: int, phases, cols: int = 4):
    """Phases (Linear, Norm) in one dispatch: its runtime sequence takes (inp, side, params, scratch, out)."""
    return _program(dev, m, list(phases), cols, single=False)


def _program(dev, m: int, phases: list, cols: int, single: bool):
    from aie.iron import Buffer, Kernel, ObjectFifo, Program, Runtime, Worker
    from aie.iron.controlflow import range_
    from aie.iron.device import Tile
    from aie.iron.placers import SequentialPlacer

    band = ROWS * TILE
    assert m % band == 0 and all((ph.rows or m) % band == 0 for ph in phases), f"rows must be a multiple of {band}"
    io = chain_io(m, phases)
    widths = {"inp": io.width}
    previous = "inp"
    for i, ph in enumerate(phases):
        width = widths[ph.source or previous]
        if isinstance(ph, Linear):
            assert ph.input_width == width and ph.k % TILE == 0 and ph.n % WIDTH == 0, \
                f"K must be its input's width and a multiple of {TILE}, N of {WIDTH}"
            assert not ph.window or (ph.k >= 3 * width and ph.k - 3 * width < TILE and ph.window[1] in (1, 2)), \
                "a convolution's K is 3 input rows rounded up to 64, its stride 1 or 2"
        else:
            assert ph.d == width and ph.d % TILE == 0, f"a layernorm's d must be its input's width and of {TILE}"
        widths[previous := f"p{i}"] = ph.width
    width = phases[-1].width
    a_ty = np.ndarray[(TILE, TILE), np.dtype[bfloat16]]
    w_ty = np.ndarray[(TILE, COLS), np.dtype[bfloat16]]          # a W operand, a bias, a residual tile, gamma-beta
    c_ty = np.ndarray[(TILE, COLS), np.dtype[bfloat16]]
    c_col_ty = np.ndarray[(ROWS * TILE, COLS), np.dtype[bfloat16]]
    acc_ty = np.ndarray[(TILE, COLS), np.dtype[np.float32]]
    state_ty = np.ndarray[(LN_STATE,), np.dtype[np.float32]]
    kernels = {
        "zero": Kernel("mmv_zero_64x32", "mm.o", [acc_ty]),
        "mac": Kernel("mmv_bf16_64x64x32", "mm.o", [a_ty, w_ty, acc_ty]),
        "bias_act": Kernel("mmv_bias_act_64x32", "mm.o", [acc_ty, w_ty, np.int32]),
        "round": Kernel("mmv_round_64x32", "mm.o", [acc_ty, c_ty]),
        "add_round": Kernel("mmv_add_round_64x32", "mm.o", [acc_ty, w_ty, c_ty]),
        "ln_sum": Kernel("lnv_sum_64x64", "mm.o", [a_ty, state_ty, np.int32]),
        "ln_mean": Kernel("lnv_mean_64", "mm.o", [state_ty, np.int32]),
        "ln_sqdev": Kernel("lnv_sqdev_64x64", "mm.o", [a_ty, state_ty, np.int32]),
        "ln_rstd": Kernel("lnv_rstd_64", "mm.o", [state_ty, np.int32, np.float32]),
        "ln_norm": Kernel("lnv_norm_64x32", "mm.o", [a_ty, w_ty, state_ty, np.int32, c_ty]),
    }
    used = _kernels_used(phases)
    kernels = {name: kernels[name] for name in used}

    a_in = [ObjectFifo(a_ty, name=f"a{r}_in") for r in range(ROWS)]
    a_core = [a_in[r].cons().forward(placement=Tile(r % cols, 1), dims_to_stream=A_BLOCKED, name=f"a{r}")
              for r in range(ROWS)]
    w_in = [ObjectFifo(w_ty, name=f"w{c}_in") for c in range(cols)]
    w_core = [w_in[c].cons().forward(placement=Tile(c, 1), name=f"w{c}") for c in range(cols)]
    c_out = [ObjectFifo(c_col_ty, name=f"c{c}", dims_to_stream=C_ROW_MAJOR) for c in range(cols)]
    c_core = [c_out[c].prod().join([r * TILE * COLS for r in range(ROWS)], placement=Tile(c, 1),
                                   obj_types=[c_ty] * ROWS, names=[f"c{c}_{r}" for r in range(ROWS)])
              for c in range(cols)]

    def core(a, w, out, accs, state, row, col, **k):
        for ph in phases:
            if isinstance(ph, Linear):
                _linear_core(ph, (ph.rows or m) // band, cols, row, col, a, w, out, accs, range_, k)
            else:
                _norm_core(ph, m // band, cols, col, a, w, out, state, range_, k)

    workers = []
    for r in range(ROWS):
        for c in range(cols):
            state = Buffer(state_ty, name=f"ln{r}{c}") if any(isinstance(ph, Norm) for ph in phases) else None
            accs = [Buffer(acc_ty, name=f"acc{h}_{r}{c}") for h in range(PAIR)] if "mac" in kernels else [None] * PAIR
            workers.append(Worker(_bind(core, r, c, list(kernels)),
                                  [a_core[r].cons(), w_core[c].cons(), c_core[c][r].prod(), *accs, state,
                                   *kernels.values()],
                                  placement=Tile(c, 2 + r)))

    rt = Runtime()
    param_at, scratch_at, params_size, scratch_size = chain_layout(m, phases)
    if single:
        names, sizes = ("inp", "params", "side", "out"), (io.inp, params_size, io.side or 1, m * width)
    else:
        names, sizes = ("inp", "side", "params", "scratch", "out"), (io.inp, io.side or 1, params_size,
                                                                     scratch_size or 1, m * width)
    with rt.sequence(*(np.ndarray[(size,), np.dtype[bfloat16]] for size in sizes)) as handles:
        tensors = {name: (h, 0, size) for name, h, size in zip(names, handles, sizes)}   # (tensor, offset, values)
        tensors["inp"] = (tensors["inp"][0], io.inp_at, io.inp)
        rt.start(*workers)
        previous = tensors["inp"]
        for i, ph in enumerate(phases):
            source = tensors[ph.source] if ph.source else previous
            dest = tensors["out"] if scratch_at[i] is None else (tensors["scratch"][0], scratch_at[i], scratch_size)
            params = (tensors["params"][0], param_at[i], params_size)
            streams = Streams(a_in, w_in, c_out, source, params, dest, cols, ph.rows or m)
            if isinstance(ph, Linear):
                _linear_sequence(rt, ph, streams, tensors.get(ph.residual))
            else:
                _norm_sequence(rt, ph, streams)
            tensors[f"p{i}"] = previous = dest
    return Program(dev, rt).resolve_program(SequentialPlacer())


def _kernels_used(phases) -> list[str]:
    used = []
    if any(isinstance(ph, Linear) for ph in phases):
        used += ["zero", "mac", "bias_act"]
        used += ["add_round"] if any(isinstance(ph, Linear) and ph.residual for ph in phases) else []
        used += ["round"] if any(isinstance(ph, Linear) and not ph.residual for ph in phases) else []
    if any(isinstance(ph, Norm) for ph in phases):
        used += ["ln_sum", "ln_mean", "ln_sqdev", "ln_rstd", "ln_norm"]
    return used


def _bind(core, row: int, col: int, names: list[str]):
    """The core function of core (row, col): its kernels arrive as positional arguments after the
    buffers (as a Worker passes them)."""
    def bound(a, w, out, acc0, acc1, state, *kernels):
        core(a, w, out, (acc0, acc1), state, row, col, **dict(zip(names, kernels)))
    return bound


class Deal(NamedTuple):
    """How N's output tiles are dealt to the columns: `full` rounds in which every column computes a pair
    (pair j·cols + c on column c), then, for the pairs left, a tail round: "single" (one of the tiles
    left per column, on the first `busy` columns: two single rounds would cost more than one of pairs
    on fewer columns) or "pair" (one pair per column, on the first `busy`), or none."""

    full: int
    tail: str | None
    busy: int


def _deal(n: int, cols: int) -> Deal:
    full, left = divmod(n // WIDTH, cols)
    if not left:
        return Deal(full, None, 0)
    return Deal(full, "single", PAIR * left) if PAIR * left <= cols else Deal(full, "pair", left)


def _linear_core(ph: Linear, bands: int, cols: int, row: int, col: int, a, w, out, accs, range_, k) -> None:
    """Per band, one pair of output tiles per full round, then the tail round's pair or single tile; a
    column without one in the tail lets its row's A tiles pass by."""
    deal = _deal(ph.n, cols)
    for _ in range_(bands):
        for _ in range_(deal.full):
            _output_tiles(ph, row, a, w, out, accs, range_, k)
        if deal.tail and col < deal.busy:
            _output_tiles(ph, row, a, w, out, accs if deal.tail == "pair" else accs[:1], range_, k)
        elif deal.tail:
            for _ in range_(ph.k // TILE):
                a.acquire(1)
                a.release(1)


def _output_tiles(ph: Linear, row: int, a, w, out, accs, range_, k) -> None:
    """A pair of 64 x 32 output tiles (or one) from one pass over the row's A tiles: per K chunk, the A
    tile times each tile's W; then each tile's bias (and GELU), and its residual or plain rounding."""
    for acc in accs:
        k["zero"](acc)
    for _ in range_(ph.k // TILE):
        ta = a.acquire(1)
        for acc in accs:
            k["mac"](ta, w.acquire(1), acc)
            w.release(1)
        a.release(1)
    for acc in accs:
        k["bias_act"](acc, w.acquire(1), 1 if ph.gelu else 0)
        w.release(1)
    for acc in accs:
        if ph.residual:
            for r in range(ROWS):                                # every row's residual tile; keep ours
                tr = w.acquire(1)
                if r == row:
                    k["add_round"](acc, tr, out.acquire(1))
                    out.release(1)
                w.release(1)
        else:
            k["round"](acc, out.acquire(1))
            out.release(1)


def _norm_core(ph: Norm, bands: int, cols: int, col: int, a, w, out, state, range_, k) -> None:
    """Per band: the statistics from two passes over the row block's A tiles, then the K chunks this
    column owns normalised (the others' tiles pass by)."""
    chunks = ph.d // TILE
    for _ in range_(bands):
        for kt in range(chunks):
            k["ln_sum"](a.acquire(1), state, 1 if kt == 0 else 0)
            a.release(1)
        k["ln_mean"](state, ph.d)
        for kt in range(chunks):
            k["ln_sqdev"](a.acquire(1), state, 1 if kt == 0 else 0)
            a.release(1)
        k["ln_rstd"](state, ph.d, ph.eps)
        for kt in range(chunks):
            ta = a.acquire(1)
            if kt % cols == col:
                gb = w.acquire(1)
                for half in range(2):
                    k["ln_norm"](ta, gb, state, half, out.acquire(1))
                    out.release(1)
                w.release(1)
            a.release(1)


class Streams(NamedTuple):
    """What one phase's runtime sequence moves: the fifos, and (tensor, offset) of its input, its packed
    operands and its output."""

    a_in: list
    w_in: list
    c_out: list
    source: tuple
    params: tuple
    dest: tuple
    cols: int
    m: int


def _linear_sequence(rt, ph: Linear, s: Streams, residual) -> None:
    from aie.helpers.taplib.tap import TensorAccessPattern
    from aie.iron.device import Tile

    band, cols, m, n = ROWS * TILE, s.cols, s.m, ph.n
    deal = _deal(n, cols)
    out, out_at, out_size = s.dest
    for band_start in range(0, m, band):
        # A task group per band and up to GROUP_TILES full rounds: at most 1 + 3 x GROUP_TILES + 1
        # transfers in flight on a shim tile (16 buffer descriptors); the tail round in a group of its own.
        for first in range(0, deal.full, GROUP_TILES):
            rounds = min(GROUP_TILES, deal.full - first)
            group = _a_fills(rt, ph, s, band_start, rounds)
            for c in range(cols):
                for fill in _w_stream(s.params, residual, band_start, first * cols + c, rounds, cols, ph, n):
                    rt.fill(s.w_in[c].prod(), *fill, placement=Tile(c, 0), task_group=group)
                rt.drain(s.c_out[c].cons(), out,
                         TensorAccessPattern((out_size,), out_at + band_start * n + (first * cols + c) * WIDTH,
                                             [rounds, PAIR, band, COLS], [cols * WIDTH, COLS, n, 1]),
                         placement=Tile(c, 0), task_group=group, wait=True)
            rt.finish_task_group(group)
        if deal.tail:
            group = _a_fills(rt, ph, s, band_start, 1)
            for c in range(deal.busy):
                if deal.tail == "pair":
                    fills = _w_stream(s.params, residual, band_start, deal.full * cols + c, 1, cols, ph, n)
                    at, sizes, strides = (deal.full * cols + c) * WIDTH, [PAIR, band, COLS], [COLS, n, 1]
                else:
                    tile = PAIR * deal.full * cols + c
                    fills = _w_single(s.params, residual, band_start, tile, ph, n)
                    at, sizes, strides = tile * COLS, [band, COLS], [n, 1]
                for fill in fills:
                    rt.fill(s.w_in[c].prod(), *fill, placement=Tile(c, 0), task_group=group)
                rt.drain(s.c_out[c].cons(), out, TensorAccessPattern((out_size,), out_at + band_start * n + at,
                                                                     sizes, strides),
                         placement=Tile(c, 0), task_group=group, wait=True)
            rt.finish_task_group(group)


def _a_fills(rt, ph: Linear, s: Streams, band_start: int, rounds: int):
    """A new task group with each row's A tiles of the band, once per round."""
    from aie.helpers.taplib.tap import TensorAccessPattern
    from aie.iron.device import Tile

    (a, a_at, a_size), k, step = s.source, ph.k, ph.a_step
    start = a_at - ph.input_width if ph.window else a_at          # a convolution's A starts at the zero row
    group = rt.task_group()
    for r in range(ROWS):
        rt.fill(s.a_in[r].prod(), a, TensorAccessPattern((a_size,), start + (band_start + r * TILE) * step,
                                                         [rounds, k // TILE, TILE, TILE], [0, TILE, step, 1]),
                placement=Tile(r % s.cols, 0), task_group=group)
    return group


def _norm_sequence(rt, ph: Norm, s: Streams) -> None:
    from aie.helpers.taplib.tap import TensorAccessPattern
    from aie.iron.device import Tile

    band, cols, m, d = ROWS * TILE, s.cols, s.m, ph.d
    chunks = d // TILE
    (x, x_at, x_size), (params, p_at, p_size), (out, out_at, out_size) = s.source, s.params, s.dest
    for band_start in range(0, m, band):
        group = rt.task_group()
        for r in range(ROWS):
            # Row r's tiles in K order, for each statistics pass and to normalise.
            rt.fill(s.a_in[r].prod(), x, TensorAccessPattern((x_size,), x_at + (band_start + r * TILE) * d,
                                                             [STATS_PASSES + 1, chunks, TILE, TILE], [0, TILE, d, 1]),
                    placement=Tile(r % cols, 0), task_group=group)
        for c in range(min(cols, chunks)):
            mine = len(range(c, chunks, cols))
            rt.fill(s.w_in[c].prod(), params, TensorAccessPattern((p_size,), p_at + c * OBJECT,
                                                                  [mine, OBJECT // 256, 256], [cols * OBJECT, 256, 1]),
                    placement=Tile(c, 0), task_group=group)
            rt.drain(s.c_out[c].cons(), out,
                     TensorAccessPattern((out_size,), out_at + band_start * d + c * TILE,
                                         [mine, 2, band, COLS], [cols * TILE, COLS, d, 1]),
                     placement=Tile(c, 0), task_group=group, wait=True)
        rt.finish_task_group(group)


def _w_stream(params, residual, band_start, pair, pairs, cols, ph: Linear, n):
    """(tensor, access pattern) of each transfer of one column's W stream for `pairs` pairs of output
    tiles from pair `pair` on (every cols-th): per pair its packed W and biases (K chunk by K chunk,
    the two tiles' interleaved, as kernels.aie.tiles.pack_linear lays them out), then (with a residual,
    (tensor, offset)) each tile's band of 256 x 32 residual as 4 objects in the C layout."""
    from aie.helpers.taplib.tap import TensorAccessPattern

    w, w_at, w_size = params
    objects = PAIR * (ph.k // TILE + 1)                           # per pair
    rows_256 = OBJECT // 256                                      # 256-element rows: a DMA dimension < 1024
    if residual is None:
        return [(w, TensorAccessPattern((w_size,), w_at + pair * ph.pair_packed, [pairs, objects, rows_256, 256],
                                        [cols * ph.pair_packed, OBJECT, 256, 1]))]
    fills = []
    for p in range(pair, pair + pairs * cols, cols):
        fills.append((w, TensorAccessPattern((w_size,), w_at + p * ph.pair_packed, [objects, rows_256, 256],
                                             [OBJECT, 256, 1])))
        fills += [_residual_fill(residual, band_start, t, n) for t in range(PAIR * p, PAIR * p + PAIR)]
    return fills


def _w_single(params, residual, band_start, tile, ph: Linear, n):
    """The W stream's transfers for one output tile alone (a tail round): its packed W and bias, every
    other object of its pair's, then (with a residual) its band of 256 x 32 residual."""
    from aie.helpers.taplib.tap import TensorAccessPattern

    w, w_at, w_size = params
    pair, half = divmod(tile, PAIR)
    fills = [(w, TensorAccessPattern((w_size,), w_at + pair * ph.pair_packed + half * OBJECT,
                                     [ph.k // TILE + 1, OBJECT // 256, 256], [PAIR * OBJECT, 256, 1]))]
    if residual is not None:
        fills.append(_residual_fill(residual, band_start, tile, n))
    return fills


def _residual_fill(residual, band_start, tile, n):
    """(tensor, access pattern) of output tile `tile`'s band of 256 x 32 residual (residual: (tensor,
    offset, size)), as 4 objects of 64 x 32 in the C layout."""
    from aie.helpers.taplib.tap import TensorAccessPattern

    res, res_at, res_size = residual
    return res, TensorAccessPattern((res_size,), res_at + band_start * n + tile * COLS,
                                    [ROWS * TILE // 4, COLS // 4, 4, 4], [4 * n, 4, n, 1])


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-d", "--device", choices=("npu", "npu2"), required=True)
    p.add_argument("-M", type=int, required=True)
    p.add_argument("-K", type=int, default=0)
    p.add_argument("-N", type=int, default=0)
    p.add_argument("--gelu", action="store_true")
    p.add_argument("--residual", action="store_true")
    p.add_argument("--cols", type=int, help="columns of cores (default: 4 on npu, 8 on npu2)")
    p.add_argument("--chain", help="a chain of phases instead of one matmul (phases_spec's text; -K and -N unused)")
    args = p.parse_args()
    from aie.iron.device import NPU1, NPU2

    device = NPU1() if args.device == "npu" else NPU2()
    cols = args.cols or (4 if args.device == "npu" else 8)
    if args.chain:
        print(amanuensis_chain(device, args.M, parse_phases(args.chain), cols))
    else:
        print(amanuensis_matmul(device, args.M, args.K, args.N, args.gelu, args.residual, cols))


if __name__ == "__main__":
    main()
