"""The AIE kernel sources, built for the host (scalar path, g++), against the emulator.

Elementwise kernels and the contract's functions must agree bit for bit; matmul and
attention within one bf16 ulp (the contract allows the summation order inside a
64-wide chunk to differ).
"""
import ctypes
import shutil

import ml_dtypes
import numpy as np
import pytest

from kernels import contract as C
from kernels.emu import EmuBackend

pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++ to build the host kernels")
emu = EmuBackend()


@pytest.fixture(scope="module")
def lib():
    from kernels.aie import host

    return host.load()


def ptr(a, kind=ctypes.c_float):
    return a.ctypes.data_as(ctypes.POINTER(kind))


def bits(x):
    """float32 array -> contiguous uint16 bf16 bits."""
    return np.ascontiguousarray(np.asarray(x, np.float32).astype(ml_dtypes.bfloat16).view(np.uint16))


def from_bits(b):
    return b.view(ml_dtypes.bfloat16).astype(np.float32)


def ulps(a, b):
    """Distance in bf16 steps between bf16-valued arrays (0 where equal)."""
    ia, ib = bits(a).astype(np.int32), bits(b).astype(np.int32)
    ia = np.where(ia & 0x8000, 0x8000 - ia, ia)          # sign-magnitude -> ordered integers
    ib = np.where(ib & 0x8000, 0x8000 - ib, ib)
    return np.abs(ia - ib)


def special_values():
    rng = np.random.default_rng(0)
    return np.concatenate([np.linspace(-120, 90, 50001), 30 * rng.standard_normal(50000),
                           [0.0, -0.0, 1e-30, -1e-30, 88.7, -103.0, -103.01, 4.0, -4.0]]).astype(np.float32)


def test_contract_functions_bit_exact(lib):
    x = special_values()
    y = np.empty_like(x)
    lib.contract_exp_f32(ptr(x), ptr(y), x.size)
    np.testing.assert_array_equal(y, C.exp(x))
    lib.contract_gelu_f32(ptr(x), ptr(y), x.size)
    np.testing.assert_array_equal(y, C.gelu(x))
    b = np.empty(x.size, np.uint16)
    lib.contract_round_bf16(ptr(x), ptr(b, ctypes.c_uint16), x.size)
    np.testing.assert_array_equal(from_bits(b), C.bf16(x))
    rows = np.ascontiguousarray((1000 * np.random.default_rng(1).standard_normal((50, 100))).astype(np.float32))
    out = np.empty(50, np.float32)
    lib.contract_lane_sum(ptr(rows), 50, 100, ptr(out))
    np.testing.assert_array_equal(out, C.lane_sum(rows))


def test_gelu_kernel_bit_exact(lib):
    x = bits(special_values())
    y = np.empty_like(x)
    lib.gelu_bf16(ptr(x, ctypes.c_uint16), ptr(y, ctypes.c_uint16), x.size)
    np.testing.assert_array_equal(from_bits(y), C.bf16(C.gelu(from_bits(x))))


@pytest.mark.parametrize("n", [384, 512, 1280])
def test_layernorm_kernel_bit_exact(lib, n):
    rng = np.random.default_rng(n)
    x = (5 * rng.standard_normal((37, n)) + 3).astype(np.float32)
    g, b = rng.standard_normal(n).astype(np.float32), rng.standard_normal(n).astype(np.float32)
    xb, gb, bb = bits(x), bits(g), bits(b)
    y = np.empty_like(xb)
    scratch = np.empty(2 * n, np.float32)
    lib.layernorm_bf16(ptr(xb, ctypes.c_uint16), ptr(gb, ctypes.c_uint16), ptr(bb, ctypes.c_uint16),
                       ptr(y, ctypes.c_uint16), 37, n, np.float32(1e-5), ptr(scratch))
    np.testing.assert_array_equal(from_bits(y), emu.layernorm(x, g, b))


def host_linear(lib, x, w, b, gelu, residual):
    """act(x w + b) + residual through the tile kernels: 64 x 64 output tiles, K in 64-wide steps."""
    t, k = x.shape
    n = w.shape[1]
    out = np.zeros((t, n), np.float32)
    acc = np.empty((64, 64), np.float32)
    for i in range(0, t, 64):
        for j in range(0, n, 64):
            lib.mm_zero_64x64(ptr(acc))
            for kk in range(0, k, 64):
                a, bt = bits(x[i:i + 64, kk:kk + 64]), bits(w[kk:kk + 64, j:j + 64])
                lib.mm_bf16_64x64x64(ptr(a, ctypes.c_uint16), ptr(bt, ctypes.c_uint16), ptr(acc))
            tile = np.empty((64, 64), np.uint16)
            res = bits(residual[i:i + 64, j:j + 64]) if residual is not None else None
            lib.mm_epilogue_64x64(ptr(acc), ptr(bits(b[j:j + 64]), ctypes.c_uint16),
                                  ptr(res, ctypes.c_uint16) if res is not None else None, int(gelu),
                                  ptr(tile, ctypes.c_uint16))
            out[i:i + 64, j:j + 64] = from_bits(tile)
    return out


@pytest.mark.parametrize("gelu, with_residual", [(False, False), (True, False), (False, True), (True, True)])
def test_matmul_tiles_within_one_ulp(lib, gelu, with_residual):
    rng = np.random.default_rng(int(gelu) * 2 + int(with_residual))
    x = rng.standard_normal((128, 192)).astype(np.float32)
    w = (rng.standard_normal((192, 128)) / 14).astype(np.float32)
    b = rng.standard_normal(128).astype(np.float32)
    r = rng.standard_normal((128, 128)).astype(np.float32) if with_residual else None
    ours = host_linear(lib, x, w, b, gelu, r)
    ref = emu.linear(x, w, b, gelu=gelu, residual=r)
    assert ulps(ours, ref).max() <= 1
    assert np.mean(ours == ref) > 0.99


def host_attention(lib, qkv, n_head, t):
    """The attention kernel driven as the design drives it: per head and query tile, every key tile."""
    d = 64
    d_model = n_head * d
    tiles = -(-t // 64)
    x = np.zeros((tiles * 64, 3 * d_model), np.float32)
    x[:t] = C.bf16(qkv)
    out = np.zeros((tiles * 64, d_model), np.float32)
    m, row_sum, o = np.empty(64, np.float32), np.empty(64, np.float32), np.empty((64, 64), np.float32)
    for h in range(n_head):
        q_all = bits(x[:, h * d:(h + 1) * d] * np.float32(0.125))
        k_all = bits(x[:, d_model + h * d:d_model + (h + 1) * d])
        v_all = bits(x[:, 2 * d_model + h * d:2 * d_model + (h + 1) * d])
        for i in range(tiles):
            lib.attn_init(ptr(m), ptr(row_sum), ptr(o))
            q = np.ascontiguousarray(q_all[i * 64:(i + 1) * 64])
            for j in range(tiles):
                kt = np.ascontiguousarray(k_all[j * 64:(j + 1) * 64])
                vt = np.ascontiguousarray(v_all[j * 64:(j + 1) * 64])
                lib.attn_step_64(ptr(q, ctypes.c_uint16), ptr(kt, ctypes.c_uint16), ptr(vt, ctypes.c_uint16),
                                 min(64, t - j * 64), ptr(m), ptr(row_sum), ptr(o))
            tile = np.empty((64, 64), np.uint16)
            lib.attn_finish(ptr(o), ptr(row_sum), ptr(tile, ctypes.c_uint16))
            out[i * 64:(i + 1) * 64, h * d:(h + 1) * d] = from_bits(tile)
    return out[:t]


@pytest.mark.parametrize("t, heads", [(64, 1), (200, 2), (1500, 1)])
def test_attention_tiles_within_one_ulp(lib, t, heads):
    qkv = (2 * np.random.default_rng(t).standard_normal((t, 3 * 64 * heads))).astype(np.float32)
    ours = host_attention(lib, qkv, heads, t)
    ref = emu.attention(qkv, heads)
    assert ulps(ours, ref).max() <= 1
    assert np.mean(ours == ref) > 0.99


def test_log10_bit_exact(lib):
    x = np.logspace(-12, 12, 100001).astype(np.float32)
    y = np.empty_like(x)
    lib.contract_log10_f32(ptr(x), ptr(y), x.size)
    np.testing.assert_array_equal(y, C.log10(x))


def test_mel_kernel_matches_the_emulated_front_end(lib):
    """Frames of real-looking audio through mel_frames_64 + mel_finish equal kernels.emu.log_mel."""
    from kernels.emu import log_mel
    from kernels.frontend import hann_window, mel_filters

    rng = np.random.default_rng(9)
    t = np.arange(48000) / 16000
    samples = (0.3 * np.sin(2 * np.pi * 220 * t) * np.exp(-t) + 0.01 * rng.standard_normal(t.size)).astype(np.float32)
    expected = log_mel(samples, 80)                                   # (80, 3000)
    x = np.pad(np.pad(samples, (0, 480000 - samples.size)), 200, mode="reflect").astype(np.float32)
    frames = np.lib.stride_tricks.sliding_window_view(x, 400)[::160][:3000]
    hann, dft = hann_window().astype(np.float32), C.dft_matrix()
    filters_t = np.ascontiguousarray(mel_filters(80).T.astype(np.float32))
    logm = np.empty((3008, 80), np.float32)
    padded = np.zeros((3008, 400), np.float32)
    padded[:3000] = frames
    for i in range(0, 3008, 64):
        block = np.ascontiguousarray(padded[i:i + 64])
        lib.mel_frames_64(ptr(block), ptr(hann), ptr(dft), ptr(filters_t), 80, ptr(logm[i:i + 64]))
    logm = np.ascontiguousarray(logm[:3000])
    out = np.empty(logm.size, np.uint16)
    lib.mel_finish(ptr(logm), logm.size, np.float32(logm.max()), ptr(out, ctypes.c_uint16))
    ours = from_bits(out).reshape(3000, 80).T
    assert ulps(ours, expected).max() <= 1 and np.mean(ours == expected) > 0.99
