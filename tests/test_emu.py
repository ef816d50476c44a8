"""The numeric contract and the `emu` backend: primitives, kernels, whole-model accuracy."""
import math

import ml_dtypes
import numpy as np
import pytest

from kernels import contract as C
from kernels import reference
from kernels.emu import EmuBackend
from tests.helpers import run_concurrently

be = EmuBackend()


def test_bf16_rounds_to_nearest_even_without_subnormals():
    x = np.array([1 + 2**-8, 1 + 3 * 2**-8, -(1 + 2**-8), 3.14159, 65504.0], np.float32)
    assert list(C.bf16(x[:3])) == [1.0, 1 + 4 * 2**-8, -1.0]
    assert C.bf16(np.float32([1e-40]))[0] == 0 and np.signbit(C.bf16(np.float32([-1e-40]))[0])
    assert C.bf16(np.finfo(np.float32).max) == np.inf              # past bf16's largest value: infinity
    # ml_dtypes' cast, an independent rounding: random bit patterns (NaNs and infinities among them),
    # every tie between two bf16 values of one binade, the edges; subnormals flushed first
    rng = np.random.default_rng(14)
    ties = (np.uint32(0x3F80) + np.arange(1 << 7, dtype=np.uint32)) << 16 | 0x8000
    x = np.concatenate([x, rng.integers(0, 1 << 32, 500_000, dtype=np.uint32).view(np.float32),
                        ties.view(np.float32), np.float32([0.0, -0.0, np.inf, -np.inf, np.nan, -np.nan])])
    with np.errstate(invalid="ignore"):
        want = C.flush(x).astype(ml_dtypes.bfloat16).astype(np.float32)
    got = C.bf16(x)
    nan = np.isnan(want)
    assert (np.isnan(got) == nan).all() and (np.signbit(got[nan]) == np.signbit(want[nan])).all()
    np.testing.assert_array_equal(got[~nan].view(np.uint32), want[~nan].view(np.uint32))


def test_exp_within_its_bound():
    x = np.linspace(C.EXP_LO, C.EXP_HI, 1_000_001, dtype=np.float32)
    ref = np.exp(x.astype(np.float64))
    assert (np.abs(C.exp(x) - ref) / ref).max() < C.EXP_ACCURACY
    below = np.nextafter(C.EXP_LO, np.float32(-np.inf))
    assert not C.exp(np.float32([-np.inf, -200, below])).any() and C.exp(np.float32(0)) == 1


def test_lane_sum_order():
    x = np.zeros((1, 112), np.float32)
    x[0, :100] = np.arange(1, 101)
    assert C.lane_sum(x)[0] == 5050
    # The 16-lane vectors are added in order: lane 0 holds 2^24, then + 1 (rounds away); lanes 1-15
    # hold 1 each and meet lane 0 in the halving tree: 2^24 + 14. A sequential fp32 sum gives 2^24,
    # an exact one 2^24 + 16.
    big = np.zeros((1, 32), np.float32)
    big[0, :17] = [2**24] + [1.0] * 16
    assert C.lane_sum(big)[0] == 2**24 + 14


def test_matmul_steps_are_exact_and_accumulate_in_fp32():
    """Each 8-wide K step's products are summed exactly and added to the fp32 accumulator with one rounding."""
    rng = np.random.default_rng(0)
    a, b = C.bf16(rng.standard_normal((7, 200))), C.bf16(rng.standard_normal((200, 5)))
    expected = np.zeros((7, 5), np.float32)
    for i in range(0, 200, 8):
        step = a[:, i:i + 8].astype(np.float64) @ b[i:i + 8].astype(np.float64)     # exact: 16-bit products
        expected = (expected + step).astype(np.float32)
    np.testing.assert_array_equal(C.matmul(a, b), expected)


def test_fp32_matmul_rounds_the_exact_sum_where_float64_cannot():
    """The split-fp32 matmul of the mel front end rounds each step's exact sum, also where float64
    sums of the same terms land on the other side of an fp32 midpoint (the spectrum cancels heavily):
    one row of a spectrum tile against exact rational arithmetic."""
    from fractions import Fraction

    from kernels.frontend import frames, hann_window

    rng = np.random.default_rng(80)
    t = np.arange(16000) / 16000
    samples = (0.3 * np.sin(2 * np.pi * 220 * t) + 0.01 * rng.standard_normal(t.size)).astype(np.float32)
    a, b = frames(samples, np.float32)[3:4, :64], C.dft_matrix(hann_window())[:64, 64:128]
    pa, pb = C.split3(a), C.split3(b)
    exact, float64 = np.zeros(64, np.float32), np.zeros(64, np.float32)
    for k in range(0, 64, 8):
        for p, q in C.SPLIT_PRODUCTS:
            for j in range(64):
                terms = [float(pa[p][0, kk]) * float(pb[q][kk, j]) for kk in range(k, k + 8)]   # exact
                exact[j] = fp32_of(Fraction(float(exact[j])) + sum(map(Fraction, terms)))
                float64[j] = np.float32(float(float64[j]) + sum(terms))
    np.testing.assert_array_equal(C.matmul_f32(a, b)[0], exact)
    assert (float64 != exact).any()                           # the case the exact rounding is for


def fp32_of(x) -> np.float32:
    """A Fraction rounded to fp32, nearest even."""
    from fractions import Fraction

    r = np.float32(float(x))
    for other in (np.nextafter(r, np.float32(np.inf)), np.nextafter(r, np.float32(-np.inf))):
        mid = (Fraction(float(r)) + Fraction(float(other))) / 2
        if (x - mid) * (Fraction(float(other)) - Fraction(float(r))) > 0:
            return other
        if x == mid:
            return r if not int(np.float32(r).view(np.int32)) & 1 else other
    return r


def attention_per_tile(qkv, n_head):
    """The attention contract written tile by tile, one head and query tile at a time."""
    t, three_d = qkv.shape
    d_model = three_d // 3
    d = d_model // n_head
    tiles = -(-t // 64)
    x = np.zeros((tiles * 64, three_d), np.float32)
    x[:t] = C.bf16(qkv)
    out = np.zeros((tiles * 64, d_model), np.float32)
    for h in range(n_head):
        q_all = C.bf16(x[:, h * d:(h + 1) * d] * np.float32(1 / math.sqrt(d)))
        k_all = x[:, d_model + h * d:d_model + (h + 1) * d]
        v_all = x[:, 2 * d_model + h * d:2 * d_model + (h + 1) * d]
        for i in range(tiles):
            q = q_all[i * 64:(i + 1) * 64]
            m = np.full(64, -np.inf, np.float32)
            row_sum = np.zeros(64, np.float32)
            o = np.zeros((64, d), np.float32)
            for j in range(tiles):
                s = C.matmul(q, k_all[j * 64:(j + 1) * 64].T)
                s[:, np.arange(j * 64, (j + 1) * 64) >= t] = -np.inf
                m_new = np.maximum(m, s.max(axis=1))
                alpha = C.exp(m - m_new)
                p = C.exp(s - m_new[:, None])
                row_sum = C.flush(row_sum * alpha + C.lane_sum(p))
                o = C.matmul(C.bf16(p), v_all[j * 64:(j + 1) * 64], acc=C.flush(o * alpha[:, None]))
                m = m_new
            out[i * 64:(i + 1) * 64, h * d:(h + 1) * d] = C.bf16(C.flush(o * C.recip(row_sum)[:, None]))
    return out[:t]


@pytest.mark.parametrize("t, heads", [(64, 1), (150, 2), (300, 3)])
def test_vectorised_attention_is_the_per_tile_contract_bit_for_bit(t, heads):
    qkv = (2 * np.random.default_rng(t).standard_normal((t, 3 * 64 * heads))).astype(np.float32)
    np.testing.assert_array_equal(be.attention(qkv, heads), attention_per_tile(qkv, heads))


def corr(a, b):
    return np.corrcoef(a.ravel().astype(np.float64), b.ravel().astype(np.float64))[0, 1]


def test_emu_kernels_track_the_fp32_reference():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((300, 128)).astype(np.float32)
    w, b = (rng.standard_normal((128, 256)) / 11).astype(np.float32), rng.standard_normal(256).astype(np.float32)
    r = rng.standard_normal((300, 256)).astype(np.float32)
    cw = (rng.standard_normal((384, 64)) / 20).astype(np.float32)
    qkv = 2 * np.tile(x, 3)                                     # (300, 384): 2 heads of 64
    for ours, ref in [
        (be.linear(x, w, b, gelu=True, residual=r), reference.linear(x, w, b, gelu=True, residual=r)),
        (be.conv1d_k3(x, cw, b[:64], stride=2), reference.conv1d_k3(x, cw, b[:64], stride=2)),
        (be.conv1d_k3(x, cw, b[:64], r[:150, :64], stride=2),
         reference.conv1d_k3(x, cw, b[:64], r[:150, :64], stride=2)),
        (be.layernorm(x, b[:128], r[0, :128]), reference.layernorm(x, b[:128], r[0, :128])),
        (be.attention(qkv, 2), reference.attention(qkv, 2)),
    ]:
        assert np.all(ours == C.bf16(ours))                     # outputs are bf16 values
        assert corr(ours, ref) >= 0.9999
        assert np.linalg.norm(ours - ref) / np.linalg.norm(ref) < 0.01


def test_padded_keys_are_masked():
    """1500 positions pad to 1536: if the 36 zero keys leaked into the softmax, the result would move."""
    rng = np.random.default_rng(2)
    qkv = rng.standard_normal((1500, 3 * 64)).astype(np.float32)
    qkv[:, :64] = 0.0                                          # uniform attention: padding would dilute it
    ours = be.attention(qkv, 1)
    ref = reference.attention(qkv, 1)
    assert np.abs(ours - ref).max() < 0.01 and corr(ours, ref) >= 0.9999


@pytest.mark.slow
def test_emu_encoder_parity_on_speech(tiny, tiny_torch, speech):
    from encoder.audio import load_audio
    from encoder.layer_parity import MIN_COSINE_BF16, compare
    from encoder.model import WhisperModel

    emu = WhisperModel(tiny.converted, "emu")
    for clip in speech[:4]:
        rows = compare(emu, load_audio(clip.path), tiny_torch)
        assert all(not r.fp32 and r.ok and r.diff.cosine >= MIN_COSINE_BF16 for r in rows), (clip.file, rows)


def test_kernel_report_every_node_at_least_0_9999(tiny):
    from encoder.audio import load_audio
    from encoder.network import build_encoder_graph
    from kernels.backends import get_backend
    from kernels.report import kernel_report

    graph = build_encoder_graph(tiny.dims, cross_kv=True)
    weights = {**tiny.converted.read_encoder_weights(), **tiny.converted.cross_kv_weights()}
    rows = kernel_report(graph, weights, load_audio("tests/data/hello.wav")[:480000], get_backend("cpu"),
                         get_backend("emu"))
    assert {r.kernel for r in rows} == {"log_mel", "conv1d_k3", "layernorm", "linear", "attention"}
    assert [r.node for r in rows] == [n.name for n in graph.nodes] and rows[0].node == "mel"
    assert all(r.correlation >= 0.9999 for r in rows), [r for r in rows if not r.ok]


def test_emu_transcribes_and_reports_its_backend(tiny, tmp_path):
    import json
    import subprocess
    import sys

    from encoder.evaluation import score

    r = subprocess.run([sys.executable, "-m", "encoder.transcribe", "tests/data/hello.wav", "--device", "emu",
                        "-o", str(tmp_path), "-f", "json", "--verbose", "False"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    result = json.loads((tmp_path / "hello.json").read_text())
    assert set(sum(result["provenance"]["encoder_nodes"].values(), [])) == {"emu"}
    assert score(open("tests/data/hello.reference.txt").read(), result["text"]).wer <= 0.15


def test_concurrent_encodes_give_each_caller_its_own_result(tiny):
    """Results never mix between callers. (Not bit-equal to a lone run: numpy's SIMD reductions group
    elements by array alignment, which differs per thread, so fp32 rounding moves by ~1e-6.)"""
    rng = np.random.default_rng(3)
    mels = [tiny.mel((0.05 * rng.standard_normal(16000 * (i + 3))).astype(np.float32)) for i in range(4)]
    expected = [tiny.encode(m).output for m in mels]
    got, errors = [None] * 8, []

    def work(i):
        try:
            got[i] = tiny.encode(mels[i % 4]).output
        except Exception as e:  # surfaced below
            errors.append(e)

    run_concurrently(work, 8)
    assert not errors
    for i in range(8):
        np.testing.assert_allclose(got[i], expected[i % 4], atol=1e-4, rtol=1e-5)
        for other in range(4):          # and each is far from every other caller's answer
            if other != i % 4:
                assert np.abs(got[i] - expected[other]).max() > 0.1
