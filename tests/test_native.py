"""The cpu backend's native kernels (kernels/native): built, visible, and equal to the spec at the edges.

tests/test_kernels.py runs every kernel of both variants against kernels.reference; these tests
cover what only the native build has: its build and report, and the limits of its GELU and
attention arithmetic.
"""
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from kernels import native, reference
from kernels.cpu import _GELU_NATIVE, CpuBackend, PackedWeight

needs_native = pytest.mark.skipif(native.LIBRARY is None, reason=f"native kernels {native.UNAVAILABLE}")


def _levels():
    """The copies of the kernels in the build that this CPU can run: its own level and those below."""
    if native.LIBRARY is None:
        return [pytest.param(None, marks=pytest.mark.skip(reason=f"native kernels {native.UNAVAILABLE}"))]
    return [pytest.param(level, id=name) for level, (_, name) in native.LEVELS.items() if level <= native.LIBRARY.level]


@pytest.mark.skipif(shutil.which("gcc") is None and shutil.which("cc") is None, reason="no C compiler here")
def test_native_kernels_are_built_where_there_is_a_compiler():
    """A silent build failure at install would quietly cost 20% of the encoder's speed."""
    if os.environ.get("AMANUENSIS_CPU_NATIVE") == "0":
        pytest.skip("switched off by AMANUENSIS_CPU_NATIVE=0")
    assert native.LIBRARY is not None, native.UNAVAILABLE


@needs_native
def test_the_description_names_the_variant_in_use():
    assert f"native kernels {native.isa()}" in CpuBackend(2).describe()
    assert "numpy kernels: native kernels not used" in CpuBackend(2, native_kernels=False).describe()


def test_switching_them_off_is_reported():
    code = "from kernels.backends import get_backend; print(get_backend('cpu').describe())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "AMANUENSIS_CPU_NATIVE": "0"}).stdout
    assert "numpy kernels: native kernels switched off by AMANUENSIS_CPU_NATIVE" in out


def test_insisting_on_missing_native_kernels_is_an_error(monkeypatch):
    monkeypatch.setattr(native, "LIBRARY", None)
    monkeypatch.setattr(native, "UNAVAILABLE", "not built")
    with pytest.raises(RuntimeError, match="native kernels are not built"):
        CpuBackend(2, native_kernels=True)
    assert not CpuBackend(2).native


@pytest.mark.parametrize("level", _levels())
def test_gelu_limits_and_no_denormals(level):
    """On every copy: their selects differ (plain on AVX-512, bitwise blends elsewhere)."""
    y = np.array([[-np.inf, -1e30, -1e4, -20.0, -7.0, -0.0, 0.0, 7.0, 20.0, 1e4, 1e30, np.inf, np.nan]], np.float32)
    out = y.copy()
    grid = np.linspace(-300, 0, 300001, dtype=np.float32).reshape(1, -1)
    with native.copy_of_level(level):
        native.bias_epilogue(out, np.zeros(y.shape[1], np.float32), _GELU_NATIVE)
        native.bias_epilogue(grid, np.zeros(grid.shape[1], np.float32), _GELU_NATIVE)
    finite = np.isfinite(y[0])
    assert np.abs(out[0, finite] - reference.gelu(y[0, finite])).max() < 1e-5
    assert out[0, 0] == 0 and out[0, -2] == np.inf and np.isnan(out[0, -1])
    # below the fit's range GELU underflows to exact zero, never to a denormal the next matmul pays for
    tiny = np.abs(grid[grid != 0])
    assert tiny.min() >= np.finfo(np.float32).tiny


@needs_native
@pytest.mark.parametrize("t", [1, 7, 64, 65, 1500, 1501])
def test_attention_head_any_length_and_row_count(t):
    """Sequence lengths around the 64-column tiles, row counts around the 6-row tiles and 48-row groups."""
    rng = np.random.default_rng(t)
    qkv = (2 * rng.standard_normal((t, 3 * 64))).astype(np.float32)
    be = CpuBackend(3)                          # 3 threads: spans that start mid-tile
    with be.session():
        ours = be.attention(qkv, 1)
    assert np.abs(ours - reference.attention(qkv, 1)).max() < 2e-5


@pytest.mark.parametrize("level", _levels())
def test_attention_head_nan_and_extreme_rows(level):
    """A NaN stays in its row, and rows outside the unshifted range (all scores far below zero, one
    far above) take the stable path, on every copy."""
    rng = np.random.default_rng(5)
    qkv = rng.standard_normal((100, 3 * 64)).astype(np.float32)
    qkv[10, 0] = np.nan                         # one query row
    qkv[:, 64] = 1 + np.abs(qkv[:, 64])         # every key's first component >= 1, so that
    qkv[20, :64], qkv[20, 0] = 0, -500          # every score of row 20 is <= -62.5 (e^s sums to < 1e-20)
    qkv[30, :64], qkv[30, 0] = 0, 1000          # and every score of row 30 >= 125 (e^s overflows)
    with native.copy_of_level(level):
        be = CpuBackend(2)
        with be.session():
            out = be.attention(qkv, 1)
    assert np.isnan(out[10]).all() and np.isfinite(np.delete(out, 10, axis=0)).all()
    rows = np.delete(np.arange(100), 10)
    assert np.abs(out[rows] - reference.attention(qkv, 1)[rows]).max() < 2e-5


@needs_native
def test_layernorm_any_width():
    rng = np.random.default_rng(9)
    for cols in (1, 15, 16, 17, 384, 1280):
        x = (rng.standard_normal((5, cols)) * 50 + 1000).astype(np.float32)
        g, b = rng.standard_normal(cols).astype(np.float32), rng.standard_normal(cols).astype(np.float32)
        out = np.empty_like(x)
        native.layernorm(x, out, g, b, 1e-5)
        assert np.abs(out - reference.layernorm(x, g, b)).max() < 5e-4 * max(1.0, np.abs(g).max())


@pytest.mark.parametrize("level", _levels())
def test_every_isa_copy_matches_the_reference(level):
    """The backend only runs the copy this CPU selects; bind the others too (the AVX2 one is what
    most AMD laptops before Zen 4 run) and check their arithmetic, the linear of each included."""
    in_use = native.LIBRARY
    with native.copy_of_level(level):
        assert native.LIBRARY.level == level
        _check_the_copy_in_use()
    assert native.LIBRARY is in_use


def _check_the_copy_in_use():
    rng = np.random.default_rng(11)
    be = CpuBackend(2, native_kernels=True)
    qkv = (2 * rng.standard_normal((301, 3 * 128))).astype(np.float32)
    x = (rng.standard_normal((77, 384)) * 5 + 2).astype(np.float32)
    g, b = rng.standard_normal((2, 384)).astype(np.float32)
    w = (rng.standard_normal((384, 128)) / 20).astype(np.float32)
    r = rng.standard_normal((77, 128)).astype(np.float32)
    out = np.empty((77, 128), np.float32)
    with be.session():
        assert np.abs(be.attention(qkv, 2) - reference.attention(qkv, 2)).max() < 2e-5
        assert np.abs(be.layernorm(x, g, b) - reference.layernorm(x, g, b)).max() < 2e-5
        assert np.abs(be.linear(x, w, b[:128], gelu=True) - reference.linear(x, w, b[:128], gelu=True)).max() < 2e-5
        assert np.abs(be.linear(x, w, b[:128], residual=r) - reference.linear(x, w, b[:128], residual=r)).max() < 2e-5
    native.linear(x, native.pack(w), b[:128], out, _GELU_NATIVE, r)
    assert np.abs(out - reference.linear(x, w, b[:128], gelu=True, residual=r)).max() < 2e-5


@needs_native
@pytest.mark.parametrize("rows", [1, 5, 6, 7, 750, 751])
def test_native_linear_any_rows_overlapping_and_wide(rows):
    """Rows past the last whole 6-row tile, overlapping input rows (a stride-2 conv's patches, read in
    place), K past one 384-deep pass and N past one 512-column block."""
    rng = np.random.default_rng(rows)
    k, n = 3 * 400, 640
    x = rng.standard_normal((2 * rows + 2, 400)).astype(np.float32)
    patches = np.lib.stride_tricks.as_strided(x, (rows, k), (2 * 400 * 4, 4), writeable=False)
    w, b = (rng.standard_normal((k, n)) / 30).astype(np.float32), rng.standard_normal(n).astype(np.float32)
    res = rng.standard_normal((rows, n)).astype(np.float32)
    out = native.empty_aligned((rows, n))
    native.linear(patches, native.pack(w), b, out, None, res)
    expected = reference.linear(np.ascontiguousarray(patches), w, b, residual=res)
    assert np.abs(out - expected).max() < 1e-4


@needs_native
def test_matrices_are_packed_only_where_the_native_linear_runs_them():
    be = CpuBackend(2)
    w = np.ones((384, 384), np.float32)
    if native.LIBRARY.level == 4:
        packed = be.prepare_weight("linear", w)
        assert isinstance(packed, PackedWeight) and packed.shape == w.shape
        assert be.prepare_weight("linear", packed) is packed                  # twice is once
        assert packed.panels.ctypes.data % 64 == 0
        assert "with their own matmuls" in be.describe()
    else:
        assert be.prepare_weight("linear", w) is w and "BLAS + native kernels" in be.describe()
    assert be.prepare_weight("linear", np.ones((384, 100), np.float32)).shape == (384, 100)  # not whole panels
    assert be.prepare_weight("layernorm", w) is w
    assert CpuBackend(2, native_kernels=False).prepare_weight("linear", w) is w


@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc to build a stale library")
def test_a_stale_build_is_reported_not_a_crash(tmp_path, monkeypatch):
    """A library from an older source (a function missing) falls back with the reason."""
    stale = tmp_path / "stale.c"
    stale.write_text("void linear_v4(void) {}\nint native_isa(void) { return 4; }\n")
    lib = tmp_path / "_cpu_kernels.so"
    subprocess.run(["gcc", "-shared", "-fPIC", str(stale), "-o", str(lib)], check=True)
    monkeypatch.setattr(native, "_library_path", lambda: lib)
    monkeypatch.delenv("AMANUENSIS_CPU_NATIVE", raising=False)
    library, why = native._load()
    assert library is None and "reinstall to rebuild it" in why


def test_both_runners_share_one_prepared_copy_of_the_weights(tiny):
    """The cross-K/V runner takes the encoder runner's weights as they were prepared: packing them
    again would keep a second copy of every matrix for the life of the model."""
    tiny.encode_with_cross(np.zeros((tiny.dims.n_mels, 3000), np.float32))
    encoder, cross = tiny.runner.weights, tiny._cross_runner.weights
    assert not any(isinstance(w, PackedWeight) for w in tiny.converted.read_encoder_weights().values())
    assert all(cross[name] is w for name, w in encoder.items())
    packed = [name for name, w in cross.items() if isinstance(w, PackedWeight)]
    if getattr(tiny.backend, "native_linear", False):
        # every matrix product of the graph: conv1, conv2, 4 per block, and the decoder's cross K/V
        assert len(packed) == 2 + 4 * tiny.dims.n_audio_layer + tiny.dims.n_text_layer, packed
    else:
        assert packed == []


def test_a_runner_replaces_the_matrices_it_is_given(tiny):
    """The runner packs in the caller's dict, so the plain matrices are freed as it goes (a second
    dict holding them would double the weights' memory at load)."""
    from kernels.runner import Runner

    weights = tiny.converted.read_encoder_weights()
    runner = Runner(tiny.graph, weights, tiny.backend)
    assert runner.weights is weights
    kinds = {type(w) for name, w in weights.items() if name.endswith("fc1.weight")}
    assert kinds == ({PackedWeight} if getattr(tiny.backend, "native_linear", False) else {np.ndarray})


def _bf16_values(rng, shape, zeros: float = 0.1) -> np.ndarray:
    """bf16 values of magnitude 2^-8 to 2^8, either sign, a share of them ±0: any 8 of their products
    sum exactly in float64, where contract.matmul's order of summation is BLAS's."""
    from kernels import contract

    x = rng.choice([-1.0, 1.0], shape) * 2.0 ** rng.uniform(-8, 8, shape)
    x[rng.random(shape) < zeros] = 0.0
    x[rng.random(shape) < zeros / 2] = -0.0
    return contract.bf16(x.astype(np.float32))


@pytest.mark.parametrize("level", _levels())
@pytest.mark.parametrize("m, k, n, acc", [(130, 72, 96, False), (64, 64, 64, True), (7, 13, 5, True),
                                          (65, 70, 33, False), (3, 1, 17, True), (9, 240, 384, True)])
def test_the_emu_matrix_unit_equals_the_contract_bit_for_bit(level, m, k, n, acc):
    """emu_kernels.h's mmul_steps is contract.matmul, the spec of the NPU's matrix unit: each 8-wide K
    step's sum added to the fp32 accumulator with one rounding, whole blocks and edges alike."""
    from kernels import contract
    from kernels.emu import matrix_unit

    rng = np.random.default_rng(m * k + n)
    a, b = _bf16_values(rng, (m, k)), _bf16_values(rng, (k, n))
    c = None
    if acc:                       # some accumulators ±0, so that a step of zero products meets them
        c = (rng.standard_normal((m, n)) * 100).astype(np.float32)
        c[rng.random((m, n)) < 0.2] = rng.choice([-0.0, 0.0])
    want = contract.matmul(a, b, c)
    with native.copy_of_level(level):
        got = matrix_unit(a, b, c)
    np.testing.assert_array_equal(got.view(np.int32), want.view(np.int32))     # zeros' signs too


@pytest.mark.parametrize("level", _levels())
def test_a_step_of_zero_products_keeps_the_accumulators_sign_as_the_contract_does(level):
    from kernels import contract
    from kernels.emu import matrix_unit

    a = np.ones((5, 8), np.float32)
    b = np.full((8, 17), -0.0, np.float32)
    for acc in (np.full((5, 17), -0.0, np.float32), np.zeros((5, 17), np.float32), None):
        with native.copy_of_level(level):
            got = matrix_unit(a, b, acc)
        np.testing.assert_array_equal(got.view(np.int32), contract.matmul(a, b, acc).view(np.int32))


@needs_native
def test_the_emu_backend_says_where_its_matrix_unit_runs_and_computes_the_same_either_way(monkeypatch):
    from kernels import contract
    from kernels.emu import EmuBackend

    rng = np.random.default_rng(3)
    x, w, b = rng.standard_normal((300, 96)), rng.standard_normal((96, 128)) * 0.1, rng.standard_normal(128)
    emu = EmuBackend()
    assert "matrix unit, attention, GELU and layernorm in native kernels" in emu.describe()
    r = rng.standard_normal((300, 128)).astype(np.float32)
    fast = emu.linear(x.astype(np.float32), w.astype(np.float32), b.astype(np.float32), gelu=True)
    fast_r = emu.linear(x.astype(np.float32), w.astype(np.float32), b.astype(np.float32), residual=r)
    monkeypatch.setattr(native, "LIBRARY", None)
    monkeypatch.setattr(native, "UNAVAILABLE", "switched off by AMANUENSIS_CPU_NATIVE")
    assert "matrix unit, attention, GELU and layernorm in numpy (native kernels switched off" in emu.describe()
    slow = emu.linear(x.astype(np.float32), w.astype(np.float32), b.astype(np.float32), gelu=True)
    slow_r = emu.linear(x.astype(np.float32), w.astype(np.float32), b.astype(np.float32), residual=r)
    np.testing.assert_array_equal(fast.view(np.int32), slow.view(np.int32))
    np.testing.assert_array_equal(fast_r.view(np.int32), slow_r.view(np.int32))
    assert contract.bf16(fast).tobytes() == fast.tobytes()          # bf16 values out, as the kernels write


@pytest.mark.parametrize("level", _levels())
def test_the_emu_bf16_rounding_equals_the_contracts_bit_for_bit(level):
    """Random bit patterns (NaNs, infinities and subnormals among them), every tie between two bf16
    values around 1, and the edges."""
    from kernels import contract

    rng = np.random.default_rng(13)
    ties = (np.arange(1 << 16, dtype=np.uint32) << 16 | 0x8000).view(np.float32)    # halfway between bf16s
    x = np.concatenate([rng.integers(0, 1 << 32, 1_000_000, dtype=np.uint32).view(np.float32), ties,
                        np.array([0.0, -0.0, np.inf, -np.inf, np.nan, -np.nan, 1e-40, -1e-40, 3.4e38, -3.4e38,
                                  np.finfo(np.float32).max, np.finfo(np.float32).tiny], np.float32)])
    with native.copy_of_level(level):
        got = native.emu_bf16(x)
    with np.errstate(invalid="ignore"):                     # ml_dtypes casting NaNs
        want = contract.bf16(x)
    nan = np.isnan(want)
    np.testing.assert_array_equal(np.isnan(got), nan)
    np.testing.assert_array_equal(np.signbit(got[nan]), np.signbit(want[nan]))      # a NaN keeps its sign
    np.testing.assert_array_equal(got[~nan].view(np.int32), want[~nan].view(np.int32))


@needs_native
def test_the_emu_elementwise_kernels_take_any_shape_and_layout():
    """0-d, empty, one value with an odd stride, transposed: the shape of the input, the contract's values."""
    from kernels import contract
    from kernels.emu import GELU_TABLE

    for x in (np.float32(1.00390625), np.zeros((0, 3), np.float32), np.ones((1, 4), np.float32).T,
              (np.arange(300, dtype=np.float32) / 7)[::100][:1], np.arange(12, dtype=np.float32).reshape(3, 4).T / 3):
        for got, want in ((native.emu_bf16(x), contract.bf16(x)), (native.emu_gelu(np.array(x), GELU_TABLE),
                                                                   contract.gelu(x))):
            assert got.shape == np.shape(x)
            np.testing.assert_array_equal(np.asarray(got).view(np.int32), np.asarray(want).view(np.int32))


@needs_native
def test_the_emu_layernorm_refuses_rows_it_cannot_take_and_the_epilogue_takes_no_rows():
    from kernels.emu import EmuBackend

    with pytest.raises(ValueError, match="positive multiple of 16"):
        native.emu_layernorm(np.zeros((2, 0), np.float32), np.zeros(0, np.float32), np.zeros(0, np.float32), 1e-5)
    with pytest.raises(ValueError, match="positive multiple of 16"):
        native.emu_layernorm(np.zeros((2, 8), np.float32), np.zeros(8, np.float32), np.zeros(8, np.float32), 1e-5)
    assert EmuBackend().layernorm(np.zeros((0, 32), np.float32), np.ones(32), np.zeros(32)).shape == (0, 32)
    empty = np.zeros((0, 16), np.float32)
    native.emu_epilogue(empty, np.zeros(16, np.float32), None, None, empty)


@pytest.mark.parametrize("level", _levels())
@pytest.mark.parametrize("gelu, residual", [(False, False), (True, False), (False, True), (True, True)])
def test_the_emu_epilogue_equals_the_numpy_one_bit_for_bit(level, gelu, residual):
    """bias, GELU and the residual after the matrix unit, into rows of a wider output; a y + b below
    the smallest normal float (flushed before the residual is added) and values at GELU's breaks."""
    from kernels import contract
    from kernels.emu import GELU_TABLE, _epilogue

    rng = np.random.default_rng(int(gelu) * 2 + int(residual))
    rows, n = 70, 48
    y = contract.flush((rng.standard_normal((rows, n)) * 3).astype(np.float32))
    b = contract.bf16(rng.standard_normal(n).astype(np.float32))
    r = contract.bf16(rng.standard_normal((rows, n)).astype(np.float32)) if residual else None
    y[0, :8], b[:8] = -1.5 * 2.0 ** -126, 2.0 ** -125      # y + b = 2^-127, flushed before the residual adds
    if residual:
        r[0, :8] = 2.0 ** -126
    y[1, :4] = np.array([0.625, 1.75, 3.25, 5.5], np.float32) - b[:4]
    if residual:
        r[2] = -contract.bf16(contract.gelu(contract.flush(y[2] + b)) if gelu else contract.flush(y[2] + b))
    out = np.full((rows, n + 16), 7.0, np.float32)[:, :n]
    with native.copy_of_level(level):
        native.emu_epilogue(y, b, GELU_TABLE if gelu else None, r, out)
    np.testing.assert_array_equal(out.view(np.int32), _epilogue(y, b, gelu, r).view(np.int32))
    assert (out.base[:, n:] == 7.0).all()                    # the rows' other columns untouched


@pytest.mark.parametrize("level", _levels())
@pytest.mark.parametrize("n", [16, 384, 1280])
def test_the_emu_layernorm_equals_the_numpy_one_bit_for_bit(level, n, monkeypatch):
    """Rows of several scales and offsets, a constant row (variance 0: the eps alone), a row whose
    squares lie mostly below the smallest normal (and a tiny eps, where flushing them shows), rows
    read from a wider array; the numpy layernorm (native kernels off) is the reference."""
    from kernels.emu import EmuBackend

    rng = np.random.default_rng(n)
    wide = np.empty((40, n + 32), np.float32)
    x = wide[:, 5:5 + n]
    x[:] = rng.standard_normal((40, n)) * rng.choice([1e-3, 1.0, 30.0, 1e4], (40, 1)) + rng.normal(0, 5, (40, 1))
    x[0] = 2.5
    x[1] = np.where(np.arange(n) % 2, 1e-19, -1e-19)        # d² below the smallest normal (flushed) ...
    x[1, :2] = 2.1e-18, -2.1e-18                              # ... beside two that make the variance normal
    gamma, beta = rng.standard_normal(n).astype(np.float32), rng.standard_normal(n).astype(np.float32)
    emu = EmuBackend()
    with native.copy_of_level(level):
        fast = [emu.layernorm(x, gamma, beta, eps) for eps in (1e-5, 1e-37)]   # 1e-37: the flushed d² show
    monkeypatch.setattr(native, "LIBRARY", None)
    for eps, got in zip((1e-5, 1e-37), fast):
        np.testing.assert_array_equal(got.view(np.int32), emu.layernorm(x, gamma, beta, eps).view(np.int32))


@needs_native
def test_the_emu_matrix_unit_takes_operands_in_any_layout():
    """Attention hands it Kᵀ as a transposed view and accumulators of any layout."""
    from kernels import contract
    from kernels.emu import matrix_unit

    rng = np.random.default_rng(7)
    a, b_t = _bf16_values(rng, (96, 64)), _bf16_values(rng, (48, 64))
    acc = np.asfortranarray(rng.standard_normal((96, 48)).astype(np.float32))
    before = acc.copy()
    want = contract.matmul(a, b_t.T, acc)
    np.testing.assert_array_equal(matrix_unit(a, b_t.T, acc).view(np.int32), want.view(np.int32))
    np.testing.assert_array_equal(acc, before)          # the accumulators are the caller's, untouched
    row, column = _bf16_values(rng, (1, 64)), _bf16_values(rng, (64, 1))
    for b, c in ((row.T, acc[:, :1]), (column, np.float32(2.5)), (column, np.ones(1, np.float32))):
        want = contract.matmul(a, b, c)                 # a transposed row; accumulators broadcast
        np.testing.assert_array_equal(matrix_unit(a, b, c).view(np.int32), want.view(np.int32))


def _emu_attention_both_ways(qkv: np.ndarray, n_head: int, level) -> tuple[np.ndarray, np.ndarray]:
    """emu's attention of qkv on the native kernels (the copy of `level`) and on numpy's _attention_tiles."""
    from kernels.emu import EmuBackend

    emu = EmuBackend()
    with native.copy_of_level(level):
        fast = emu.attention(qkv, n_head)
    saved = native.LIBRARY
    native.LIBRARY = None
    try:
        slow = emu.attention(qkv, n_head)
    finally:
        native.LIBRARY = saved
    return fast, slow


@pytest.mark.parametrize("level", _levels())
@pytest.mark.parametrize("t, n_head, d, scale", [(200, 2, 64, 2.0), (64, 1, 64, 1.0), (1, 1, 64, 1.0),
                                                 (65, 3, 16, 0.5), (130, 1, 48, 30.0), (90, 2, 64, 1e-19)])
def test_the_emu_attention_kernel_equals_the_numpy_one_bit_for_bit(level, t, n_head, d, scale):
    """emu_kernels.h's emu_attention_head is emu's _attention_tiles (the contract's exp, lane sums,
    reciprocal and flushes around the matrix unit), whole tiles and a last tile mostly masked, scores
    from tiny (subnormal products flushed) to large (exp's clamp at -80 taken)."""
    rng = np.random.default_rng(t * d)
    qkv = (rng.standard_normal((t, 3 * n_head * d)) * scale).astype(np.float32)
    qkv[rng.random(qkv.shape) < 0.05] = 0.0
    fast, slow = _emu_attention_both_ways(qkv, n_head, level)
    assert fast.shape == (t, n_head * d)
    np.testing.assert_array_equal(fast.view(np.int32), slow.view(np.int32))


@needs_native
def test_the_emu_attention_kernel_takes_only_head_sizes_of_whole_vectors():
    """A head size that is not a multiple of 16 runs in numpy, as does an empty sequence; the kernel itself
    refuses them."""
    rng = np.random.default_rng(5)
    qkv = rng.standard_normal((70, 3 * 2 * 40)).astype(np.float32)
    fast, slow = _emu_attention_both_ways(qkv, 2, native.LIBRARY.level)
    np.testing.assert_array_equal(fast.view(np.int32), slow.view(np.int32))
    q = np.zeros((64, 40), np.float32)
    with pytest.raises(AssertionError, match="multiple of 16"):
        native.emu_attention_head(q, q, q, 64, q.copy())
    from kernels.emu import EmuBackend

    assert EmuBackend().attention(np.zeros((0, 3 * 64), np.float32), 1).shape == (0, 64)   # no rows: numpy's


@pytest.mark.parametrize("level", _levels())
def test_the_emu_attention_kernels_exp_equals_the_contracts_bit_for_bit(level):
    """Every float of [-100, 100] on a fine grid, random ones and the edges: the clamp at 88, the zero
    below -80, ±0, infinities and subnormals."""
    from kernels import contract

    rng = np.random.default_rng(11)
    x = np.concatenate([np.linspace(-100, 100, 1_000_001, dtype=np.float32),
                        (rng.standard_normal(200_000) * 10).astype(np.float32),
                        np.array([-np.inf, np.inf, -80, np.nextafter(-80, -81), 88, np.nextafter(88, 89), 0.0, -0.0,
                                  1e-40, -1e-40, 1e-30, -3e-39], np.float32)])
    with native.copy_of_level(level):
        got = native.emu_exp(x)
    np.testing.assert_array_equal(got.view(np.int32), contract.exp(x).view(np.int32))


@pytest.mark.parametrize("level", _levels())
def test_the_emu_gelu_equals_the_contracts_bit_for_bit(level):
    """Every float of [-12, 12] on a fine grid, random ones at several scales, each piece's break and
    the end with their neighbours, and the edges: ±0, infinities, NaN, subnormals, huge values."""
    from kernels import contract
    from kernels.emu import GELU_TABLE

    rng = np.random.default_rng(12)
    edges = [*contract.GELU_BREAKS, contract.GELU_END]
    x = np.concatenate([np.linspace(-12, 12, 2_000_001, dtype=np.float32),
                        *((rng.standard_normal(200_000) * scale).astype(np.float32) for scale in (1e-3, 1, 30)),
                        np.array([e * sign for e in edges for sign in (1, -1)], np.float32),
                        np.nextafter(np.array(edges + [-e for e in edges], np.float32), np.float32(0)),
                        np.nextafter(np.array(edges + [-e for e in edges], np.float32), np.float32(np.inf)),
                        np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1e-40, -1e-40, 2e-38, -2e-38, 1e-30, -1e-30,
                                  3e38, -3e38, 1e-7, -1e-7], np.float32)])
    with np.errstate(over="ignore", invalid="ignore"):              # the polynomial of ±inf and 3e38
        want = contract.gelu(x)
    with native.copy_of_level(level):
        got = native.emu_gelu(x.copy(), GELU_TABLE)
    np.testing.assert_array_equal(got.view(np.int32), want.view(np.int32))


@pytest.mark.parametrize("level", _levels())
@pytest.mark.parametrize("first, t, start", [(0, 64, False), (128, 150, True), (64, 65, True), (0, 40, False)])
def test_the_emu_attention_kernels_softmax_step_equals_the_numpy_one_bit_for_bit(level, first, t, start):
    """One key tile's running max, sum, bf16(P) and rescaled O (emu's _softmax_step), every fp32
    result compared: the kernel's output is rounded to bf16, which hides most one-ulp slips in them.
    start: the first key tile (m = -inf, ℓ = 0, O = 0); keys from t on are masked."""
    from kernels import contract
    from kernels.emu import _softmax_step

    rng = np.random.default_rng(first + t)
    rows, d = 37, 64
    s = contract.flush((rng.standard_normal((rows, 64)) * 4).astype(np.float32))
    m = np.full(rows, -np.inf, np.float32) if start else (rng.standard_normal(rows) * 4).astype(np.float32)
    row_sum = np.zeros(rows, np.float32) if start else rng.uniform(1, 60, rows).astype(np.float32)
    o = np.zeros((rows, d), np.float32) if start else rng.standard_normal((rows, d)).astype(np.float32)
    o[rng.random(o.shape) < 0.1] = 2e-38             # O·α below the smallest normal: flushed
    valid = first + np.arange(64) < t
    want = _softmax_step(s, valid, m, row_sum, o)
    got = [s.copy(), m.copy(), row_sum.copy(), o.copy()]
    with native.copy_of_level(level):
        native.emu_softmax_rows(got[0], first, t, got[1], got[2], got[3])
    for name, g, w in zip(("bf16(P)", "max", "sum", "O·α"), got, want):
        np.testing.assert_array_equal(g.view(np.int32), w.view(np.int32), err_msg=name)


@pytest.mark.parametrize("level", _levels())
def test_the_emu_attention_kernels_normalisation_equals_the_numpy_one_bit_for_bit(level):
    """Enough rows (1.3M outputs) that a reciprocal one ulp off shows through the bf16 rounding."""
    from kernels.emu import _normalise

    rng = np.random.default_rng(13)
    o = (rng.standard_normal((20_000, 64)) * 30).astype(np.float32)
    row_sum = rng.uniform(1, 1500, 20_000).astype(np.float32)
    with native.copy_of_level(level):
        got = native.emu_normalise_rows(o, row_sum)
    np.testing.assert_array_equal(got.view(np.int32), _normalise(o, row_sum).view(np.int32))


def _near_ties(rng, m: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Sums whose float64 value lies on an fp32 rounding midpoint or at zero while the exact sum does not,
    or does too: a row [1, (2j + 1)·2^-24, ±2^-80, 2^-80, ...] times a column of ±1 (each step's
    products: a tie, and terms float64 loses in it, which may cancel), so only the exact rounding
    gets them right."""
    a = np.zeros((m, k), np.float32)
    a[:, 0::8] = 1.0
    a[:, 1::8] = rng.integers(0, 4, (m, 1)) * 2 + 1
    a[:, 1::8] *= np.float32(2.0 ** -24)
    a[:, 2::8] = rng.choice([-1.0, 1.0], (m, 1)) * np.float32(2.0 ** -80)
    a[:, 3::8] = np.float32(2.0 ** -80)       # with the term before it, ±2^-80 · 2 or an exact tie
    a[::3, 1::8] = -1.0                       # 1 − 1 + tiny: a float64 sum of 0, an exact one of ±2^-79 or 0
    b = rng.choice([-1.0, 1.0], (k, 24)).astype(np.float32)
    b[0::8], b[1::8] = 1.0, 1.0
    return a, b


@pytest.mark.parametrize("level", _levels())
@pytest.mark.parametrize("data", ["wide", "pcm", "ties", "edges"])
def test_the_emu_fp32_matmul_equals_the_contract_bit_for_bit(level, data):
    """emu_kernels.h's emu_matmul_f32 is contract.matmul_f32 (the mel front end's fp32 products on the
    bf16 matrix unit: each step's six products of pieces, each sum rounded once from its exact value):
    operands spanning 2^-40 to 2^8; 16-bit PCM frames and the DFT (sums of few bits: many ties, which
    float64 gets right only when it sums exactly); sums float64 rounds onto a midpoint or to zero; and
    shapes with edge rows, columns and K."""
    from kernels import contract
    from kernels.emu import float_unit
    from kernels.frontend import hann_window

    rng = np.random.default_rng(len(data))
    if data == "wide":
        a = (rng.standard_normal((36, 96)) * 2.0 ** rng.integers(-40, 8, (36, 96))).astype(np.float32)
        b = (rng.standard_normal((96, 48)) * 2.0 ** rng.integers(-40, 8, (96, 48))).astype(np.float32)
    elif data == "pcm":
        a = (rng.integers(-3000, 3000, (40, 400)) / 32768).astype(np.float32)
        b = contract.dft_matrix(hann_window())
    elif data == "ties":
        a, b = _near_ties(rng, 20, 64)
    else:
        a = rng.standard_normal((7, 13)).astype(np.float32)
        b = rng.standard_normal((13, 21)).astype(np.float32)
    want = contract.matmul_f32(a, b)
    with native.copy_of_level(level):
        got = float_unit(a, b)
    np.testing.assert_array_equal(got.view(np.int32), want.view(np.int32))


@needs_native
def test_the_emu_log_mel_is_the_same_with_its_native_fp32_products(monkeypatch):
    from kernels.emu import EmuBackend

    rng = np.random.default_rng(2)
    samples = (rng.integers(-8000, 8000, 16000 * 3) / 32768).astype(np.float32)
    fast = EmuBackend().log_mel(samples, 80)
    monkeypatch.setattr(native, "LIBRARY", None)
    slow = EmuBackend().log_mel(samples, 80)
    np.testing.assert_array_equal(fast.view(np.int32), slow.view(np.int32))


def _fp32_of(value) -> np.float32:
    """An exact rational rounded to fp32, nearest even; infinity from the overflow threshold on."""
    from fractions import Fraction

    top = np.finfo(np.float32).max
    if abs(value) >= Fraction(float(top)) + Fraction(float(top - np.nextafter(top, np.float32(0)))) / 2:
        return np.float32(np.inf if value > 0 else -np.inf)
    r = np.float32(float(value))
    candidates = [r, np.nextafter(r, np.float32(np.inf)), np.nextafter(r, np.float32(-np.inf))]
    return min(candidates, key=lambda c: (abs(Fraction(float(c)) - value), int(c.view(np.int32)) & 1))


def _matmul_f32_exactly(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """contract.matmul_f32's specification in exact rationals: for each output, each 8-wide K step's six
    products of bf16 pieces (contract.split3, contract.SPLIT_PRODUCTS), each sum with the accumulator
    rounded to fp32 once; the result flushed (no subnormals out)."""
    from fractions import Fraction

    from kernels import contract

    pa, pb = contract.split3(a), contract.split3(b)
    out = np.zeros((a.shape[0], b.shape[1]), np.float32)
    for i in range(a.shape[0]):
        for j in range(b.shape[1]):
            acc = np.float32(0)
            for s in range(0, a.shape[1], contract.STEP):
                for x, y in contract.SPLIT_PRODUCTS:
                    if not np.isfinite(acc):
                        continue
                    terms = [Fraction(float(pa[x][i, k])) * Fraction(float(pb[y][k, j]))
                             for k in range(s, min(s + contract.STEP, a.shape[1]))]
                    acc = _fp32_of(Fraction(float(acc)) + sum(terms))
            out[i, j] = acc
    return contract.flush(out)


@pytest.mark.parametrize("level", _levels())
@pytest.mark.parametrize("row, column", [
    ([1024.0, 3 * 2.0 ** -45, -1024.0, 2.0 ** -22], None),        # cancellation: many fp32 steps in E
    ([2.0 ** 60, 1.0, 2.0 ** -20, -2.0 ** 60, 256.0], None),
    ([2.0 ** 64, 2.0 ** -60], [2.0 ** 64, 1.0]),                  # past the overflow threshold
    ([2.0 ** 64] + [0.0] * 7 + [1.0, 2.0 ** -60], [2.0 ** 64]),   # an infinite accumulator, then a rounded sum
    ([2.0 ** -70, 2.0 ** -80, 2.0 ** -110] + [0.0] * 5 + [2.0 ** -63],
     [2.0 ** -70, 2.0 ** -70, 2.0 ** -110] + [0.0] * 5 + [2.0 ** -63]),   # subnormal accumulators
])
def test_the_fp32_matmul_rounds_each_step_from_its_exact_sum(level, row, column):
    """Both the native emu_matmul_f32 and contract.matmul_f32 equal the specification in exact
    rationals where float64 cannot decide: sums that cancel by far more than an fp32 step, that
    overflow, that meet an infinite accumulator, and that stay below the smallest normal float."""
    from kernels import contract
    from kernels.emu import float_unit

    a = np.zeros((4, 16), np.float32)
    a[:, :len(row)] = row
    a[1] = -a[0]
    b = np.ones((16, 17), np.float32)
    if column is not None:
        b[:len(column)] = np.array(column, np.float32)[:, None]
    b[:, 1::2] *= -1
    want = _matmul_f32_exactly(a, b)
    with np.errstate(over="ignore", invalid="ignore"):
        spec = contract.matmul_f32(a, b)
        with native.copy_of_level(level):
            got = float_unit(a, b)
    np.testing.assert_array_equal(spec.view(np.int32), want.view(np.int32))
    np.testing.assert_array_equal(got.view(np.int32), want.view(np.int32))
