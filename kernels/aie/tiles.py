"""The vectorised kernels run over whole ops on the host: the tiling, the blocked layouts the DMA
produces, and the kernel calls, in the order a design makes them (kernels/aie/*/*_vec.cc).

Each function takes the graph op's arguments (fp32 arrays, as kernels/interface.py has them) and
the host build of the kernels (kernels.aie.host.load()), and returns what the NPU would: the tests
compare it with the `emu` backend bit for bit.
"""
from __future__ import annotations

import ctypes
import math

import numpy as np

from kernels import contract as C
from kernels.frontend import HOP_LENGTH, N_FFT, N_FRAMES, hann_window, mel_filters

TILE = C.TILE
_F32 = ctypes.POINTER(ctypes.c_float)
_U16 = ctypes.POINTER(ctypes.c_uint16)


def bits(x) -> np.ndarray:
    """fp32 values as contiguous bf16 bits (uint16), rounded to nearest even."""
    import ml_dtypes  # bf16 data: only where the kernels run

    return np.ascontiguousarray(C.bf16(x).astype(ml_dtypes.bfloat16).view(np.uint16))


def from_bits(b: np.ndarray) -> np.ndarray:
    import ml_dtypes

    return np.ascontiguousarray(b).view(ml_dtypes.bfloat16).astype(np.float32)


def _p(a: np.ndarray):
    return a.ctypes.data_as(_U16 if a.dtype == np.uint16 else _F32)


def pad(x: np.ndarray, rows: int, cols: int) -> np.ndarray:
    out = np.zeros((rows, cols), x.dtype)
    out[:x.shape[0], :x.shape[1]] = x
    return out


def up_to(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def up(n: int) -> int:
    return up_to(n, TILE)


# ---- the DMA's blocked layouts of a 64 x 64 tile ---------------------------------------------------------

def block_a(t: np.ndarray) -> np.ndarray:
    """A operand (64 x 64, or 64 x 32): 16 x (K / 8) blocks of 4 x 8 (rows x K), blocks and their
    elements row-major."""
    steps = t.shape[1] // 8
    return np.ascontiguousarray(t.reshape(16, 4, steps, 8).transpose(0, 2, 1, 3)).reshape(-1)


def block_b(t: np.ndarray) -> np.ndarray:
    """B operand (64 x 64, 64 x 32 or 32 x 32): (K / 8) x (columns / 4) blocks of 8 x 4 (K x columns)."""
    steps, cols = t.shape[0] // 8, t.shape[1] // 4
    return np.ascontiguousarray(t.reshape(steps, 8, cols, 4).transpose(0, 2, 1, 3)).reshape(-1)


def block_c(t: np.ndarray) -> np.ndarray:
    """C, residual and output (64 x 64, or 64 x 32): 16 x (columns / 4) blocks of 4 x 4."""
    cols = t.shape[1] // 4
    return np.ascontiguousarray(t.reshape(16, 4, cols, 4).transpose(0, 2, 1, 3)).reshape(-1)


def unblock_c(flat: np.ndarray, cols: int = TILE) -> np.ndarray:
    return np.ascontiguousarray(flat.reshape(16, cols // 4, 4, 4).transpose(0, 2, 1, 3)).reshape(64, cols)


# ---- the whole-array designs' tensors ---------------------------------------------------------------------

BAND = 256             # rows: the whole-array designs work on whole bands of 4 rows of cores x 64


def band_rows(n: int) -> int:
    """Rows of a design's activation tensors: n padded to whole bands."""
    return -(-n // BAND) * BAND


PACK_COLUMNS = 32      # output columns per core tile in the whole-array matmul (kernels/aie/matmul/design.py)
PACK_PAIR = 2          # the tiles a core computes per pass over its A tiles (the design's PAIR)
PACK_WIDTH = PACK_PAIR * PACK_COLUMNS    # N must be a multiple of it


def pack_linear(w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """W (K x N) and bias (N) as the whole-array matmul streams them, bf16 bits (N/64, K/64 + 1, 2, 2048):
    per pair of 32-column tiles, their B operands (64 x 32, blocked) K chunk by K chunk, the two tiles'
    interleaved, then one more pair of objects whose first 32 values are each tile's bias (the rest
    zero). K and N are zero-padded to 64."""
    k, n = up(w.shape[0]), up(w.shape[1])
    wb, bias = bits(pad(w, k, n)), bits(np.pad(b, (0, n - len(b))))
    out = np.zeros((n // PACK_COLUMNS, k // TILE + 1, TILE * PACK_COLUMNS), np.uint16)
    for j in range(n // PACK_COLUMNS):
        cols = slice(j * PACK_COLUMNS, (j + 1) * PACK_COLUMNS)
        for kk in range(k // TILE):
            out[j, kk] = block_b(wb[kk * TILE:(kk + 1) * TILE, cols])
        out[j, -1, :PACK_COLUMNS] = bias[cols]
    pairs = out.reshape(n // PACK_WIDTH, PACK_PAIR, k // TILE + 1, TILE * PACK_COLUMNS)
    return np.ascontiguousarray(pairs.transpose(0, 2, 1, 3))


LN_STATE = 64 * 16 + 64 + 64    # fp32 values of a core's layernorm-phase state (mm_vec.cc): lane sums, means, rstd


def pack_norm(gamma: np.ndarray, beta: np.ndarray) -> np.ndarray:
    """Gamma and beta (d) as the whole-array matmul's layernorm phase streams them on W, bf16 bits
    (d/64, 2048): per 64-value K chunk one W object, its 64 gammas, then its 64 betas, then zeros."""
    chunks = len(gamma) // TILE
    out = np.zeros((chunks, TILE * PACK_COLUMNS), np.uint16)
    out[:, :TILE] = bits(np.asarray(gamma, np.float32)).reshape(chunks, TILE)
    out[:, TILE:2 * TILE] = bits(np.asarray(beta, np.float32)).reshape(chunks, TILE)
    return out


def pack_projection(w: np.ndarray, b: np.ndarray, head_dim: int | None = None) -> np.ndarray:
    """pack_linear, with the query columns (the first third) of a QKV projection scaled by
    1/sqrt(head_dim) when it feeds attention: 1/8 for every Whisper size, exact, so the attention
    design reads the projection's output as it stands and its bits are 1/8 of the unscaled ones."""
    if head_dim:
        scale = np.ones(w.shape[1], np.float32)
        scale[:w.shape[1] // 3] = 1.0 / math.sqrt(head_dim)
        w, b = w * scale, b * scale
    return pack_linear(w, b)


def unpack_linear(packed: np.ndarray, k: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(W (k x n), bias) as bf16 bits from pack_linear's layout (any shape, n a multiple of 64): its inverse."""
    chunks = up(k) // TILE
    per_tile = packed.reshape(n // PACK_WIDTH, chunks + 1, PACK_PAIR, TILE * PACK_COLUMNS)
    per_tile = per_tile.transpose(0, 2, 1, 3).reshape(n // PACK_COLUMNS, chunks + 1, -1)
    blocks = per_tile[:, :chunks].reshape(-1, chunks, 8, PACK_COLUMNS // 4, 8, 4).transpose(1, 2, 4, 0, 3, 5)
    w = blocks.reshape(chunks * TILE, n)
    return np.ascontiguousarray(w[:k]), np.ascontiguousarray(per_tile[:, -1, :PACK_COLUMNS].reshape(-1))


MEL_K = 32            # the mel design's K chunk and tile width (kernels/aie/mel/design.py's COLS)


def pack_mel(n_mels: int) -> np.ndarray:
    """The mel design's params, bf16 bits: the windowed DFT (contract.dft_matrix, K padded to whole
    chunks of 32) as 7 groups of 32 bins x 2 halves (16 bins' cos, then their -sin) x K chunks, then
    the padded mel filters as chunks of 32 mels x 7 K chunks; each object three 32 x 32 pieces
    (contract.split3: hi, mid, lo) in the B layout."""
    dft = [pad(p, up_to(N_FFT, MEL_K), p.shape[1]) for p in C.split3(C.dft_matrix(hann_window()))]
    filters = C.filters_padded(mel_filters(n_mels))
    filters = [pad(p, p.shape[0], up_to(n_mels, MEL_K)) for p in C.split3(filters)]
    objects = []
    for g in range(C.BINS_PADDED // MEL_K):
        for h in range(2):
            cols = np.r_[64 * g + 16 * h:64 * g + 16 * h + 16, 64 * g + 32 + 16 * h:64 * g + 48 + 16 * h]
            objects += [_pieces_b([p[:, cols] for p in dft], k) for k in range(0, dft[0].shape[0], MEL_K)]
    for j in range(0, filters[0].shape[1], MEL_K):
        objects += [_pieces_b([p[:, j:j + MEL_K] for p in filters], k) for k in range(0, C.BINS_PADDED, MEL_K)]
    return np.concatenate(objects)


def _pieces_b(pieces: list[np.ndarray], k: int) -> np.ndarray:
    return np.concatenate([block_b(bits(p[k:k + MEL_K])) for p in pieces])


def mel_samples(samples: np.ndarray, length: int) -> np.ndarray:
    """A 30 s window as the mel design reads it: reflect-padded by N_FFT / 2 (its frames' centres) and
    zero-extended to `length` samples (fp32)."""
    window = np.zeros(N_FRAMES * HOP_LENGTH, np.float32)
    window[:min(len(samples), window.size)] = samples[:window.size]
    out = np.zeros(length, np.float32)
    reflected = np.pad(window, N_FFT // 2, mode="reflect")
    out[:reflected.size] = reflected
    return out


# ---- ops ---------------------------------------------------------------------------------------------------

def linear(lib, x, w, b, gelu=False, residual=None) -> np.ndarray:
    """act(x · W + b) + residual: per 64 x 64 output tile, zero, one matmul call per 64-wide K chunk, the
    epilogue."""
    m, k, n = up(x.shape[0]), up(x.shape[1]), up(w.shape[1])
    xb, wb = bits(pad(x, m, k)), bits(pad(w, k, n))
    bias = bits(np.pad(b, (0, n - len(b))))
    res = None if residual is None else bits(pad(residual, m, n))
    out = np.zeros((m, n), np.uint16)
    acc, tile = np.zeros(TILE * TILE, np.float32), np.zeros(TILE * TILE, np.uint16)
    for i in range(0, m, TILE):
        for j in range(0, n, TILE):
            lib.mmv_zero_64x64(_p(acc))
            for kk in range(0, k, TILE):
                a_t, b_t = block_a(xb[i:i + TILE, kk:kk + TILE]), block_b(wb[kk:kk + TILE, j:j + TILE])
                lib.mmv_bf16_64x64x64(_p(a_t), _p(b_t), _p(acc))
            r_t = None if res is None else block_c(res[i:i + TILE, j:j + TILE])
            lib.mmv_epilogue_64x64(_p(acc), _p(np.ascontiguousarray(bias[j:j + TILE])),
                                   None if r_t is None else _p(r_t), int(gelu), _p(tile))
            out[i:i + TILE, j:j + TILE] = unblock_c(tile)
    return from_bits(out)[:x.shape[0], :w.shape[1]]


def attention(lib, qkv, n_head) -> np.ndarray:
    """Per head and 64-query tile: init, one step per 64-key tile of the padded sequence, finish."""
    t, d_model = qkv.shape[0], qkv.shape[1] // 3
    d = d_model // n_head
    padded = up(t)
    x = np.zeros((padded, qkv.shape[1]), np.float32)
    x[:t] = qkv
    out = np.zeros((padded, d_model), np.uint16)
    m, row_sum, o = np.zeros(TILE, np.float32), np.zeros(TILE, np.float32), np.zeros(TILE * TILE, np.float32)
    tile = np.zeros(TILE * TILE, np.uint16)
    for h in range(n_head):
        q_all = bits(x[:, h * d:(h + 1) * d] * np.float32(1.0 / math.sqrt(d)))
        k_all = bits(x[:, d_model + h * d:d_model + (h + 1) * d])
        v_all = bits(x[:, 2 * d_model + h * d:2 * d_model + (h + 1) * d])
        keys = [(block_a(k_all[j:j + TILE]), block_b(v_all[j:j + TILE]), min(TILE, t - j))
                for j in range(0, padded, TILE)]
        for k_t, _, _ in keys:
            lib.attnv_k_layout(_p(k_t))                          # Kᵀ in the B layout, as the design does
        for i in range(0, padded, TILE):
            q = block_a(q_all[i:i + TILE])
            lib.attnv_init(_p(m), _p(row_sum), _p(o))
            for k_t, v_t, valid in keys:
                lib.attnv_step_64(_p(q), _p(k_t), _p(v_t), valid, _p(m), _p(row_sum), _p(o))
            lib.attnv_finish(_p(o), _p(row_sum), _p(tile))
            out[i:i + TILE, h * d:(h + 1) * d] = unblock_c(tile)
    return from_bits(out)[:t]


def layernorm(lib, x, gamma, beta, eps=1e-5) -> np.ndarray:
    xb, out = bits(x), np.zeros(x.shape, np.uint16)
    lib.layernormv_bf16(_p(xb), _p(bits(gamma)), _p(bits(beta)), _p(out), x.shape[0], x.shape[1], eps)
    return from_bits(out)


def layernorm_on_a_stream(lib, x, gamma, beta, eps=1e-5) -> np.ndarray:
    """layernorm as the whole-array matmul's layernorm phase computes it: per 64 rows, the lnv_*
    kernels of mm_vec.cc over the rows' 64 x 64 tiles in the A layout (rows padded with zeros to 64,
    d a multiple of 64)."""
    rows, d = x.shape
    xb = bits(pad(np.asarray(x, np.float32), -(-rows // TILE) * TILE, d))
    params, out = pack_norm(gamma, beta), np.zeros(xb.shape, np.uint16)
    state, half = np.zeros(LN_STATE, np.float32), np.zeros(TILE * PACK_COLUMNS, np.uint16)
    for r in range(0, xb.shape[0], TILE):
        blocks = [block_a(xb[r:r + TILE, k:k + TILE]) for k in range(0, d, TILE)]
        for k, a in enumerate(blocks):
            lib.lnv_sum_64x64(_p(a), _p(state), int(k == 0))
        lib.lnv_mean_64(_p(state), d)
        for k, a in enumerate(blocks):
            lib.lnv_sqdev_64x64(_p(a), _p(state), int(k == 0))
        lib.lnv_rstd_64(_p(state), d, eps)
        for k, a in enumerate(blocks):
            for h in range(2):
                lib.lnv_norm_64x32(_p(a), _p(params[k]), _p(state), h, _p(half))
                cols = slice(k * TILE + h * PACK_COLUMNS, k * TILE + (h + 1) * PACK_COLUMNS)
                out[r:r + TILE, cols] = unblock_c(half, PACK_COLUMNS)
    return from_bits(out[:rows])


def gelu(lib, x) -> np.ndarray:
    flat = bits(np.ravel(x))
    n = up(flat.size)
    xb, out = np.zeros(n, np.uint16), np.zeros(n, np.uint16)
    xb[:flat.size] = flat
    lib.geluv_bf16(_p(xb), _p(out), n)
    return from_bits(out[:flat.size]).reshape(np.shape(x))


def matmul_f32(lib, a: np.ndarray, b_pieces: list[np.ndarray]) -> np.ndarray:
    """fp32 a (M, K) · b (K, N), b given as its three bf16 pieces (contract.split3): mmf_f32_64x32x32 per
    64 x 32 output tile and 32-wide K chunk, as the mel design runs it."""
    m, k, n = up(a.shape[0]), up_to(a.shape[1], MEL_K), up_to(b_pieces[0].shape[1], MEL_K)
    a = pad(np.asarray(a, np.float32), m, k)
    pieces = [pad(p, k, n) for p in b_pieces]
    out = np.zeros((m, n), np.float32)
    acc = np.zeros(TILE * MEL_K, np.float32)
    for i in range(0, m, TILE):
        for j in range(0, n, MEL_K):
            lib.melv_zero_64x32(_p(acc))
            for kk in range(0, k, MEL_K):
                b3 = _pieces_b([p[:, j:j + MEL_K] for p in pieces], kk)
                lib.mmf_f32_64x32x32(_p(block_a(a[i:i + TILE, kk:kk + MEL_K])), _p(b3), _p(acc))
            out[i:i + TILE, j:j + MEL_K] = unblock_c(acc, MEL_K)
    return out


def log_mel(lib, samples, n_mels) -> np.ndarray:
    """Whisper's log-mel of one window (3000, n_mels), bf16 values, through the mel design's kernels one
    tile at a time (kernels/aie/mel/design.py): per group of 16 bins the spectrum and its power, the mel
    energies, their log10 and the maximum of the real frames, the finish."""
    frames_padded, k = up(N_FRAMES), up_to(N_FFT, MEL_K)                       # 3008 frames of 416 samples
    x = mel_samples(samples, (frames_padded - 1) * HOP_LENGTH + k)
    frames = np.lib.stride_tricks.sliding_window_view(x, k)[::HOP_LENGTH][:frames_padded]   # the DMA's pattern
    dft = C.split3(C.dft_matrix(hann_window()))
    power = np.zeros((frames_padded, C.BINS_PADDED), np.float32)
    tile = np.zeros(TILE * MEL_K, np.float32)
    for g in range(0, C.BINS_PADDED, MEL_K):
        group = np.zeros((frames_padded // TILE, TILE * MEL_K), np.float32)   # per 64 frames, a C tile
        for h in range(2):
            cols = np.r_[2 * g + 16 * h:2 * g + 16 * h + 16, 2 * g + 32 + 16 * h:2 * g + 48 + 16 * h]
            spectrum = matmul_f32(lib, frames, [p[:, cols] for p in dft])
            for i in range(0, frames_padded, TILE):
                lib.melv_power_64x32(_p(block_c(spectrum[i:i + TILE])), h, _p(group[i // TILE]))
        for i in range(0, frames_padded, TILE):
            power[i:i + TILE, g:g + MEL_K] = unblock_c(group[i // TILE], MEL_K)
    energies = matmul_f32(lib, power, list(C.split3(C.filters_padded(mel_filters(n_mels)))))
    log_mel, running, maximum = np.zeros_like(energies), np.zeros(16, np.float32), np.zeros(16, np.float32)
    lib.melv_max_init(_p(running))
    for i in range(0, frames_padded, TILE):
        for j in range(0, energies.shape[1], MEL_K):
            rows, cols = min(max(N_FRAMES - i, 0), TILE), min(MEL_K, n_mels - j)
            lib.melv_log10_max_64x32(_p(block_c(energies[i:i + TILE, j:j + MEL_K])), rows, cols, _p(running), _p(tile))
            log_mel[i:i + TILE, j:j + MEL_K] = unblock_c(tile, MEL_K)
    lib.melv_max_out_64x32(_p(running), _p(tile))
    lib.melv_global_max(_p(tile), _p(maximum))
    out = np.zeros_like(log_mel)
    for i in range(0, frames_padded, TILE):
        for j in range(0, log_mel.shape[1], MEL_K):
            lib.melv_finish_64x32(_p(block_a(log_mel[i:i + TILE, j:j + MEL_K])), _p(maximum), _p(tile))
            out[i:i + TILE, j:j + MEL_K] = unblock_c(tile, MEL_K)
    return out[:N_FRAMES, :n_mels]
