"""The AIE kernels built for the host (g++): the vectorised kernels, through the project's aie_api shim
(kernels/aie/common/aie_host.h), equal the `emu` backend bit for bit, on random inputs and on
activations of real speech; the scalar reference kernels agree with them within the bounds
kernels/CONTRACT.md documents."""
import ctypes
import math
import shutil

import numpy as np
import pytest

from kernels import contract as C
from kernels import reference
from kernels.aie import tiles
from kernels.emu import EmuBackend
from kernels.reference import im2col_k3

pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++ to build the host kernels")
emu = EmuBackend()
bits, from_bits = tiles.bits, tiles.from_bits


@pytest.fixture(scope="module")
def lib():
    from kernels.aie import host

    return host.load()


def ptr(a, kind=ctypes.c_float):
    return a.ctypes.data_as(ctypes.POINTER(kind))


def ulps(a, b):
    """Distance in bf16 steps between bf16-valued arrays (0 where equal)."""
    ia, ib = bits(a).astype(np.int32), bits(b).astype(np.int32)
    ia = np.where(ia & 0x8000, 0x8000 - ia, ia)          # sign-magnitude -> ordered integers
    ib = np.where(ib & 0x8000, 0x8000 - ib, ib)
    return np.abs(ia - ib)


def fp32_ulps(a, b):
    """Distance in fp32 steps."""
    ia, ib = np.asarray(a, np.float32).view(np.int32).astype(np.int64), np.asarray(b, np.float32).view(np.int32)
    ia = np.where(ia < 0, -(ia & 0x7FFFFFFF), ia)
    ib = np.where(ib < 0, -(ib.astype(np.int64) & 0x7FFFFFFF), ib.astype(np.int64))
    return np.abs(ia - ib)


def vmath(lib, name, x):
    x = np.ascontiguousarray(x, np.float32)
    y = np.empty_like(x)
    getattr(lib, f"vmath_{name}")(ptr(x), ptr(y), x.size)
    return y


def spread(n=100000, seed=0, low=-120.0, high=90.0):
    """Values across a range, random ones, and the edges the functions care about (a multiple of 16)."""
    rng = np.random.default_rng(seed)
    edges = [0.0, -0.0, 1e-30, -1e-30, 88.0, 88.5, -87.0, -87.0001, -86.99, -103.0, 4.0, -4.0, 0.5, -0.5,
             1e-39, -1e-39, -np.inf, 3.0, 1.0, -1.0]
    x = np.concatenate([np.linspace(low, high, n // 2), 30 * rng.standard_normal(n // 2 - len(edges)), edges])
    return np.resize(x.astype(np.float32), -(-x.size // 16) * 16)


# ---- the vector math ---------------------------------------------------------------------------------------

def test_vector_math_equals_the_contract(lib):
    x = spread()
    for name in ("exp", "gelu"):
        with np.errstate(invalid="ignore"):                                     # gelu(±inf) passes inf through k
            expected = getattr(C, name)(C.flush(x))
        np.testing.assert_array_equal(vmath(lib, name, x), expected, err_msg=name)
    # the domain the kernels call them on: row sums of exp (>= 1), variances + eps, mel energies + 1e-10
    positive = np.resize(np.concatenate([np.logspace(-30, 30, 60000), [1.0, 2.0, 1e-10]]).astype(np.float32), 60016)
    for name in ("recip", "rsqrt", "log10"):
        np.testing.assert_array_equal(vmath(lib, name, positive), getattr(C, name)(positive), err_msg=name)
    rows = (1000 * np.random.default_rng(1).standard_normal((50, 384))).astype(np.float32)
    out = np.empty(50, np.float32)
    lib.vmath_lane_sum(ptr(rows), 50, 384, ptr(out))
    np.testing.assert_array_equal(out, C.lane_sum(rows))
    ties = np.concatenate([x, (np.arange(1, 65, dtype=np.uint32) << 16 | 0x8000).view(np.float32),
                           np.float32([1e-38, 1.1e-38, -1.17e-38, 2e-45])])      # halfway cases, subnormals
    ties = np.resize(ties, -(-ties.size // 16) * 16)
    rounded = np.empty(ties.size, np.uint16)
    lib.vmath_round_bf16(ptr(ties), ptr(rounded, ctypes.c_uint16), ties.size)
    np.testing.assert_array_equal(from_bits(rounded), C.bf16(ties))


def test_vector_math_is_accurate(lib):
    """The documented accuracy of the forms the kernels use (kernels/CONTRACT.md), against float64."""
    x = np.linspace(-80, 88, 200000, dtype=np.float32)
    exp64 = np.exp(x.astype(np.float64))
    assert (np.abs(vmath(lib, "exp", x) - exp64) / exp64).max() < C.EXP_ACCURACY
    assert vmath(lib, "exp", np.zeros(16, np.float32)).tolist() == [1.0] * 16       # a row's largest P is exact
    assert not vmath(lib, "exp", np.float32([-80.01, -100, -np.inf] + [-200] * 13)).any()
    z = np.linspace(-6, 6, 200000, dtype=np.float32)
    z = np.concatenate([z, np.float32([1e-30, -1e-30, 1e-6, -1e-6, 0.0])])
    z = np.resize(z, -(-z.size // 16) * 16)
    gelu64 = 0.5 * z.astype(np.float64) * np.array([math.erfc(-v / math.sqrt(2)) for v in z.astype(np.float64)])
    gelu = vmath(lib, "gelu", z)
    # |x| − k(|x|) rounds at the scale of |x| and k's error is absolute: bound the error by 1 + |x|
    assert (np.abs(gelu - gelu64) / (1 + np.abs(z))).max() < 2e-7
    near_zero = np.abs(z) < 0.5                                                 # and relative where GELU ≈ x/2
    assert (np.abs(gelu - gelu64)[near_zero] / np.maximum(np.abs(gelu64[near_zero]), 1e-38)).max() < 5e-7
    assert vmath(lib, "gelu", np.zeros(16, np.float32)).tolist() == [0.0] * 16
    p = np.logspace(-20, 20, 200000, dtype=np.float32)
    assert fp32_ulps(vmath(lib, "recip", p), (1 / p.astype(np.float64)).astype(np.float32)).max() <= 2
    assert fp32_ulps(vmath(lib, "rsqrt", p), (1 / np.sqrt(p.astype(np.float64))).astype(np.float32)).max() <= 2
    assert np.abs(vmath(lib, "log10", p) - np.log10(p.astype(np.float64))).max() < 5e-6


# ---- each vectorised kernel against the emulator, on random inputs ---------------------------------------------

@pytest.mark.parametrize("gelu, with_residual", [(False, False), (True, False), (False, True), (True, True)])
def test_matmul_equals_the_emulator(lib, gelu, with_residual):
    rng = np.random.default_rng(int(gelu) * 2 + int(with_residual))
    x = (2 * rng.standard_normal((130, 200))).astype(np.float32)                  # M, K, N not tile multiples
    w = (rng.standard_normal((200, 96)) / 14).astype(np.float32)
    b = rng.standard_normal(96).astype(np.float32)
    r = rng.standard_normal((130, 96)).astype(np.float32) if with_residual else None
    np.testing.assert_array_equal(tiles.linear(lib, x, w, b, gelu, r), emu.linear(x, w, b, gelu=gelu, residual=r))


@pytest.mark.parametrize("t, heads", [(64, 1), (150, 2), (1500, 1)])
def test_attention_equals_the_emulator(lib, t, heads):
    qkv = (3 * np.random.default_rng(t).standard_normal((t, 3 * 64 * heads))).astype(np.float32)
    np.testing.assert_array_equal(tiles.attention(lib, qkv, heads), emu.attention(qkv, heads))


def test_operand_relayouts_in_the_core_give_the_b_layout(lib):
    """The attention design receives K and V blocked as A operands; attnv_k_layout turns K into Kᵀ and
    attnv_v_layout V into V, both in the B layout, in place."""
    rng = np.random.default_rng(64)
    k, v = (tiles.bits(rng.standard_normal((64, 64)).astype(np.float32)) for _ in range(2))
    kt, vt = tiles.block_a(k), tiles.block_a(v)
    lib.attnv_k_layout(kt.ctypes.data_as(ctypes.POINTER(ctypes.c_uint16)))
    lib.attnv_v_layout(vt.ctypes.data_as(ctypes.POINTER(ctypes.c_uint16)))
    np.testing.assert_array_equal(kt, tiles.block_b(np.ascontiguousarray(k.T)))
    np.testing.assert_array_equal(vt, tiles.block_b(v))


@pytest.mark.parametrize("n", [384, 512, 1280])
def test_layernorm_equals_the_emulator(lib, n):
    rng = np.random.default_rng(n)
    x = (5 * rng.standard_normal((37, n)) + 3).astype(np.float32)
    g, b = rng.standard_normal(n).astype(np.float32), rng.standard_normal(n).astype(np.float32)
    np.testing.assert_array_equal(tiles.layernorm(lib, x, g, b), emu.layernorm(x, g, b))


@pytest.mark.parametrize("n", [384, 1280])
def test_layernorm_on_the_matmul_stream_equals_the_emulator(lib, n):
    """The matmul design's layernorm phase (its tiles in the A layout, two statistics passes) computes
    layernormv_bf16's bits."""
    rng = np.random.default_rng(n + 1)
    x = (5 * rng.standard_normal((70, n)) + 3).astype(np.float32)
    x[3] = 0.0                                                                   # a row of zeros: rstd of eps
    g, b = rng.standard_normal(n).astype(np.float32), rng.standard_normal(n).astype(np.float32)
    np.testing.assert_array_equal(tiles.layernorm_on_a_stream(lib, x, g, b), emu.layernorm(x, g, b))


def test_gelu_kernel_equals_the_emulator(lib):
    x = spread(seed=3)
    with np.errstate(invalid="ignore"):                                         # gelu(-inf) is nan in both
        expected = C.bf16(C.gelu(C.bf16(x)))
    np.testing.assert_array_equal(tiles.gelu(lib, x), expected)


def test_fp32_matmul_equals_the_emulator(lib):
    """The spectrum's fp32 matmul, where float64 sums of a step's terms often round the other way
    (heavy cancellation): both round the exact sums, so every fp32 accumulator agrees."""
    from kernels.frontend import frames, hann_window

    rng = np.random.default_rng(80)
    t = np.arange(21 * 16000) / 16000
    samples = (0.3 * np.sin(2 * np.pi * 220 * t) * np.exp(-t / 4) + 0.01 * rng.standard_normal(t.size))
    a, dft = frames(samples.astype(np.float32), np.float32)[:128], C.dft_matrix(hann_window())
    np.testing.assert_array_equal(tiles.matmul_f32(lib, a, list(C.split3(dft)))[:128], C.matmul_f32(a, dft))


@pytest.mark.parametrize("n_mels", [80, pytest.param(128, marks=pytest.mark.slow)])
def test_mel_front_end_equals_the_emulator(lib, n_mels):
    rng = np.random.default_rng(n_mels)
    t = np.arange(21 * 16000) / 16000                                            # a window shorter than 30 s
    samples = (0.3 * np.sin(2 * np.pi * 220 * t) * np.exp(-t / 4) + 0.01 * rng.standard_normal(t.size))
    np.testing.assert_array_equal(tiles.log_mel(lib, samples.astype(np.float32), n_mels),
                                  emu.log_mel(samples.astype(np.float32), n_mels))


# ---- on the activations of real speech -------------------------------------------------------------------------

def test_kernels_equal_the_emulator_on_real_speech(lib, tiny, speech):
    """One real clip through tiny.en on `cpu`: each kind of node of the first block (and the front end and
    conv1) runs through the host-built kernels and through the emulator on the same captured inputs."""
    from encoder.audio import load_audio
    from encoder.network import INPUT

    clip = next(c for c in speech if "LJ001-0001" in c.file)
    samples = load_audio(clip.path)[:480000]
    values = tiny.encode(samples, keep="all").tensors
    weights = tiny.converted.read_encoder_weights()
    graph = tiny.graph
    np.testing.assert_array_equal(tiles.log_mel(lib, values[INPUT], 80), emu.log_mel(values[INPUT], 80))
    conv1 = graph.node("conv1")
    patches = im2col_k3(C.bf16(values["mel"]), 1)
    w, b = (weights[n] for n in conv1.weights)
    np.testing.assert_array_equal(tiles.linear(lib, patches, w, b, True), emu.conv1d_k3(values["mel"], w, b))
    for node in [n for n in graph.nodes if n.name.startswith("layers.0.")]:        # block 0
        args = [values[t] for t in node.inputs] + [weights[n] for n in node.weights]
        kw = dict(node.params)
        if node.kernel == "layernorm":
            ours = tiles.layernorm(lib, *args)
        elif node.kernel == "attention":
            ours = tiles.attention(lib, args[0], kw["n_head"])
        else:
            residual = values[node.residual] if node.residual else None
            ours = tiles.linear(lib, *args, kw["gelu"], residual)
            kw = {**kw, "residual": residual}
        np.testing.assert_array_equal(ours, getattr(emu, node.kernel)(*args, **kw), err_msg=node.name)


# ---- the scalar references --------------------------------------------------------------------------------------

def scalar_linear(lib, x, w, b, gelu, residual):
    """act(x w + b) + residual through the scalar tile kernels (row-major tiles)."""
    m, k, n = tiles.up(x.shape[0]), tiles.up(x.shape[1]), tiles.up(w.shape[1])
    xb, wb, bias = bits(tiles.pad(x, m, k)), bits(tiles.pad(w, k, n)), bits(np.pad(b, (0, n - len(b))))
    res = None if residual is None else bits(tiles.pad(residual, m, n))
    out = np.zeros((m, n), np.uint16)
    acc = np.empty((64, 64), np.float32)
    for i in range(0, m, 64):
        for j in range(0, n, 64):
            lib.mm_zero_64x64(ptr(acc))
            for kk in range(0, k, 64):
                a, bt = np.ascontiguousarray(xb[i:i + 64, kk:kk + 64]), np.ascontiguousarray(wb[kk:kk + 64, j:j + 64])
                lib.mm_bf16_64x64x64(ptr(a, ctypes.c_uint16), ptr(bt, ctypes.c_uint16), ptr(acc))
            tile = np.empty((64, 64), np.uint16)
            r = None if res is None else np.ascontiguousarray(res[i:i + 64, j:j + 64])
            lib.mm_epilogue_64x64(ptr(acc), ptr(np.ascontiguousarray(bias[j:j + 64]), ctypes.c_uint16),
                                  None if r is None else ptr(r, ctypes.c_uint16), int(gelu), ptr(tile, ctypes.c_uint16))
            out[i:i + 64, j:j + 64] = tile
    return from_bits(out)[:x.shape[0], :w.shape[1]]


def scalar_attention(lib, qkv, n_head):
    t, d_model = qkv.shape[0], qkv.shape[1] // 3
    padded = tiles.up(t)
    x = np.zeros((padded, qkv.shape[1]), np.float32)
    x[:t] = qkv
    out = np.zeros((padded, d_model), np.float32)
    m, row_sum, o = np.empty(64, np.float32), np.empty(64, np.float32), np.empty((64, 64), np.float32)
    for h in range(n_head):
        q_all = bits(x[:, h * 64:(h + 1) * 64] * np.float32(0.125))
        k_all, v_all = (bits(x[:, c * d_model + h * 64:c * d_model + (h + 1) * 64]) for c in (1, 2))
        for i in range(0, padded, 64):
            lib.attn_init(ptr(m), ptr(row_sum), ptr(o))
            q = np.ascontiguousarray(q_all[i:i + 64])
            for j in range(0, padded, 64):
                kt, vt = np.ascontiguousarray(k_all[j:j + 64]), np.ascontiguousarray(v_all[j:j + 64])
                lib.attn_step_64(ptr(q, ctypes.c_uint16), ptr(kt, ctypes.c_uint16), ptr(vt, ctypes.c_uint16),
                                 min(64, t - j), ptr(m), ptr(row_sum), ptr(o))
            tile = np.empty((64, 64), np.uint16)
            lib.attn_finish(ptr(o), ptr(row_sum), ptr(tile, ctypes.c_uint16))
            out[i:i + 64, h * 64:(h + 1) * 64] = from_bits(tile)
    return out[:t]


def test_scalar_references_agree_with_the_vectorised_kernels(lib):
    """Within one bf16 step (attention: or 2^-8 of the largest |V| where its output nearly cancels),
    nearly always equal; and both near float64."""
    rng = np.random.default_rng(7)
    x = (2 * rng.standard_normal((130, 200))).astype(np.float32)
    w, b = (rng.standard_normal((200, 96)) / 14).astype(np.float32), rng.standard_normal(96).astype(np.float32)
    r = rng.standard_normal((130, 96)).astype(np.float32)
    vec, scal = tiles.linear(lib, x, w, b, True, r), scalar_linear(lib, x, w, b, True, r)
    assert ulps(vec, scal).max() <= 1 and np.mean(vec == scal) > 0.99
    assert ulps(vec, reference.linear(C.bf16(x), C.bf16(w), C.bf16(b), gelu=True, residual=C.bf16(r))).max() <= 1
    qkv = (3 * rng.standard_normal((150, 3 * 128))).astype(np.float32)
    vec, scal = tiles.attention(lib, qkv, 2), scalar_attention(lib, qkv, 2)
    # the two exps differ by up to 5e-5 (relative), which moves a bf16(P) by one step now and then: an
    # output that nearly cancels (values of both signs) is then off by a small absolute amount
    near = np.abs(vec - scal) <= 2**-8 * np.abs(C.bf16(qkv[:, 256:])).max()
    assert ((ulps(vec, scal) <= 1) | near).all() and np.mean(vec == scal) > 0.99
    xn = (5 * rng.standard_normal((37, 384)) + 3).astype(np.float32)
    g, be = rng.standard_normal(384).astype(np.float32), rng.standard_normal(384).astype(np.float32)
    scal = np.empty((37, 384), np.uint16)
    lib.layernorm_bf16(ptr(bits(xn), ctypes.c_uint16), ptr(bits(g), ctypes.c_uint16), ptr(bits(be), ctypes.c_uint16),
                       ptr(scal, ctypes.c_uint16), 37, 384, np.float32(1e-5), ptr(np.empty(768, np.float32)))
    vec = tiles.layernorm(lib, xn, g, be)
    assert ulps(vec, from_bits(scal)).max() <= 1 and np.mean(vec == from_bits(scal)) > 0.99
    z = np.nan_to_num(spread(seed=5), neginf=0.0)                                 # finite values
    scal = np.empty(z.size, np.uint16)
    lib.gelu_bf16(ptr(bits(z), ctypes.c_uint16), ptr(scal, ctypes.c_uint16), z.size)
    vec, scal = tiles.gelu(lib, z), from_bits(scal)
    # one bf16 step, or less than 2e-6 apart: the scalar erf form's 1 + erf cancels for negative x
    assert ((ulps(vec, scal) <= 1) | (np.abs(vec - scal) < 2e-6)).all()
