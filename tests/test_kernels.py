"""The cpu backend against the reference kernels (the specification)."""
import math
import warnings

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from kernels import contract, native, reference
from kernels.backends import get_backend
from kernels.cpu import CpuBackend, erf

# Both variants of the cpu backend: the native kernels and their numpy fallback. Matrices go through
# prepare_weight, as a graph's do, so the native variant runs its own linear where it would.
both = pytest.mark.parametrize("be", [
    pytest.param(CpuBackend(threads=2, native_kernels=False), id="numpy"),
    pytest.param(CpuBackend(threads=2) if native.LIBRARY else None, id="native",
                 marks=pytest.mark.skipif(native.LIBRARY is None, reason=f"native kernels {native.UNAVAILABLE}")),
])


# widths the native linear takes (whole 64-column panels), past its 512-column blocks too
PANELS = st.integers(1, 10).map(lambda m: 64 * m)


def rand(rng, *shape, scale=1.0):
    return (scale * rng.standard_normal(shape)).astype(np.float32)


def assert_close(ours, ref, atol, rtol=1e-5):
    """|ours − ref| ≤ atol + rtol·|ref| everywhere; atol a number or one bound per element."""
    assert ours.shape == ref.shape
    err = np.abs(ours.astype(np.float64) - ref) - rtol * np.abs(ref) - atol
    assert err.max() <= 0, f"error above the bound by {err.max():.3g} at {np.unravel_index(err.argmax(), err.shape)}"


def test_cpu_erf_accuracy_on_a_dense_grid():
    x = np.linspace(-8, 8, 400001, dtype=np.float32)
    exact = np.array([math.erf(v) for v in x.astype(np.float64)])
    assert np.abs(erf(x) - exact).max() < 1.5e-7


def test_npu_gelu_accuracy_on_a_dense_grid():
    """The contract's GELU (a piecewise polynomial, no erf): its error is absolute, at |x|'s scale."""
    x = np.linspace(-12, 12, 400001, dtype=np.float32)
    exact = 0.5 * x.astype(np.float64) * np.array([math.erfc(-v / math.sqrt(2)) for v in x.astype(np.float64)])
    assert (np.abs(contract.gelu(x) - exact) / (1 + np.abs(x))).max() < 2e-7


def test_cpu_erf_saturates_without_a_clamp():
    x = np.array([-np.inf, -1e30, -50.0, 50.0, 1e30, np.inf], np.float32)
    assert np.array_equal(erf(x), np.array([-1, -1, -1, 1, 1, 1], np.float32))


@both
def test_gelu_matches_exact_erf_form(be):
    x = np.linspace(-12, 12, 100001, dtype=np.float32).reshape(1, -1)
    w, b = np.eye(1, dtype=np.float32), np.zeros(1, np.float32)
    with be.session():
        ours = be.linear(x.T.copy(), w, b, gelu=True).ravel()
    exact = reference.gelu(x.ravel()).astype(np.float64)
    assert np.abs(ours - exact).max() <= 1.5e-7 * 12


@both
@settings(max_examples=25, deadline=None)
@given(t=st.integers(1, 300), k=st.one_of(st.integers(1, 200), st.sampled_from([384, 385, 1000])),
       n=st.one_of(st.integers(1, 200), PANELS), gelu=st.booleans(), residual=st.booleans(), seed=st.integers(0, 2**16))
def test_linear_matches_reference(t, k, n, gelu, residual, seed, be):
    rng = np.random.default_rng(seed)
    x, w, b = rand(rng, t, k), rand(rng, k, n, scale=1 / math.sqrt(k)), rand(rng, n)
    r = rand(rng, t, n) if residual else None
    with be.session():
        ours = be.linear(x, be.prepare_weight("linear", w), b, gelu=gelu, residual=r)
    assert_close(ours, reference.linear(x, w, b, gelu=gelu, residual=r), atol=2e-5)


@both
@settings(max_examples=15, deadline=None)
@given(t=st.integers(1, 200), c=st.integers(1, 64), n=st.one_of(st.integers(1, 64), PANELS),
       stride=st.sampled_from([1, 2]), residual=st.booleans(), seed=st.integers(0, 2**16))
def test_conv1d_k3_matches_reference(t, c, n, stride, residual, seed, be):
    rng = np.random.default_rng(seed)
    x, w, b = rand(rng, t, c), rand(rng, 3 * c, n, scale=1 / math.sqrt(3 * c)), rand(rng, n)
    r = rand(rng, (t - 1) // stride + 1, n) if residual else None      # the positional embedding after conv2
    with be.session():
        ours = be.conv1d_k3(x, be.prepare_weight("conv1d_k3", w), b, r, stride=stride)
    assert ours.shape == ((t - 1) // stride + 1, n)
    assert_close(ours, reference.conv1d_k3(x, w, b, r, stride=stride), atol=2e-5)


def test_conv1d_is_whisper_conv():
    """Our im2col weight order reproduces torch's Conv1d(k=3, padding=1)."""
    torch = pytest.importorskip("torch")
    from weights_tools.layout import conv_to_kernel

    rng = np.random.default_rng(1)
    x, w, b = rand(rng, 50, 7), rand(rng, 5, 7, 3), rand(rng, 5)
    for stride in (1, 2):
        ref = torch.nn.functional.conv1d(torch.from_numpy(x.T[None]), torch.from_numpy(w), torch.from_numpy(b),
                                         stride=stride, padding=1)[0].T.numpy()
        ours = reference.conv1d_k3(x, conv_to_kernel(w), b, stride=stride, gelu=False)
        assert_close(ours, ref.astype(np.float64), atol=1e-5)


@both
@settings(max_examples=15, deadline=None)
@given(t=st.integers(1, 400), heads=st.sampled_from([1, 2, 6]), d=st.sampled_from([8, 64]), seed=st.integers(0, 2**16))
@example(t=38, heads=2, d=64, seed=60000)   # two near-equal top keys, opposite values: ~1.1x the bare 2e-5
def test_attention_matches_reference(t, heads, d, seed, be):
    rng = np.random.default_rng(seed)
    qkv = rand(rng, t, 3 * heads * d, scale=2.0)
    with be.session():
        ours = be.attention(qkv, heads)
    assert_close(ours, reference.attention(qkv, heads), atol=2e-5 + score_rounding_floor(qkv, heads))


def score_rounding_floor(qkv: np.ndarray, n_head: int) -> np.ndarray:
    """What rounding the scores to fp32 alone may move each output by: an input-dependent floor no fp32
    attention is below. A score's dot product of d terms rounds within √d·u·Σ|q·k|/√d (u = 2⁻²⁴; the
    probabilistic bound, λ = 1: blocked BLAS sums measure ~0.4 of it), and an error δs_j in score j moves
    output o by p_j·(v_j − o)·δs_j. Two near-equal top keys with opposite values make it ~1e-5 at scale 2."""
    q64 = qkv.astype(np.float64)
    t, d_model = qkv.shape[0], qkv.shape[1] // 3
    d = d_model // n_head
    floor = np.empty((t, d_model))                                           # (T, D)
    for h in range(n_head):
        q, k, v = (q64[:, i * d_model + h * d:i * d_model + (h + 1) * d] for i in range(3))
        s = q @ k.T / math.sqrt(d)                                           # (T, T)
        p = np.exp(s - s.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        magnitude = np.abs(q) @ np.abs(k).T / math.sqrt(d)                   # (T, T): Σ|q·k|/√d
        spread = np.abs(v[None, :, :] - (p @ v)[:, None, :])                 # (T, T, d): |v_j − o_i|
        floor[:, h * d:(h + 1) * d] = np.einsum("ij,ijc->ic", p * magnitude, spread)
    return math.sqrt(d) * 2.0 ** -24 * floor


@both
def test_attention_spans_the_whole_sequence(be):
    """A query must see a key 1400 positions away (the 64-row-block bug would miss it)."""
    t, d = 1500, 64
    qkv = np.zeros((t, 3 * d), np.float32)
    qkv[:, 0] = 10.0                      # every query looks along dimension 0
    qkv[1400, d] = 10.0                   # only key 1400 answers
    qkv[1400, 2 * d:] = 1.0               # and carries value 1
    with be.session():
        out = be.attention(qkv, 1)
    assert np.all(out[:, 0] > 0.99)


@both
@pytest.mark.parametrize("shift, keys", [(0.0, 2), (120.0, 2), (-150.0, 1), (120.0, 1)])
def test_attention_rows_outside_the_unshifted_range(shift, keys, be):
    """Scores far above e^88 or below e^-46 take the max-shifted path and still match the spec;
    mixed rows (some safe, some not) in one block included."""
    rng = np.random.default_rng(7)
    t, d = 300, 64
    qkv = rand(rng, t, 3 * d)
    qkv[:, 0] = 1.0                                  # query component along key dimension 0
    qkv[:, d] = rand(rng, t) + shift / 0.125 * (np.arange(t) % keys == keys - 1)   # every `keys`-th key
    qkv[::3, 0] = 0.0                                # every third query ignores the shift
    with be.session(), warnings.catch_warnings():
        warnings.simplefilter("error")               # overflow in the fast path must stay silent
        ours = be.attention(qkv, 1)
    assert np.isfinite(ours).all()
    assert_close(ours, reference.attention(qkv, 1), atol=2e-5)


@both
def test_layernorm_matches_reference(be):
    rng = np.random.default_rng(3)
    x, g, b = rand(rng, 333, 384, scale=30.0), rand(rng, 384), rand(rng, 384)
    x += 100.0   # a large mean must not cost precision
    with be.session():
        ours = be.layernorm(x, g, b)
    assert_close(ours, reference.layernorm(x, g, b), atol=2e-5)


@both
def test_session_restores_blas_threads(be):
    from threadpoolctl import threadpool_info

    before = [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]
    with be.session():
        inside = [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]
    after = [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]
    assert all(n == 1 for n in inside) and after == before


def test_missing_npu_is_an_error_not_a_fallback(monkeypatch, tmp_path):
    from kernels.errors import AmanuensisError

    monkeypatch.setenv("AMANUENSIS_ACCEL_GLOB", str(tmp_path / "accel*"))
    with pytest.raises(AmanuensisError, match="device npu: no NPU device node"):
        get_backend("npu")
    assert get_backend("emu").name == "emu" and get_backend("cpu").name == "cpu"
    with pytest.raises(AmanuensisError, match="unknown device"):
        get_backend("gpu")
