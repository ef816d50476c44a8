"""The `cpu-bf16` backend: bf16 matrix products (linear layers, convolutions, attention) on AMX tiles
and on AVX512-BF16, each kind checked against their formulas on the same bf16-rounded inputs; its
accuracy on speech; and a clear error where neither is usable."""
import json
import math
import os
import subprocess
import sys
from contextlib import contextmanager

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from kernels import native, reference
from kernels.errors import AmanuensisError

KINDS = list(native.BF16_KINDS)


def skip_unless_usable(kind: str) -> None:
    """Skip the test, saying why, where this CPU cannot run `kind`."""
    kernels, why = native.load_bf16(kind)
    if kernels is None:
        pytest.skip(f"bf16 products on {native.BF16_KINDS[kind][0]}: {why}")


@contextmanager
def products_of(kind: str):
    """native.BF16 on `kind` for the block (skipped where this CPU cannot run it)."""
    skip_unless_usable(kind)
    with native.bf16_of_kind(kind):
        yield


def bf16(x: np.ndarray) -> np.ndarray:
    """x rounded to bf16, as fp32 values."""
    return (native.to_bf16_bits(x).astype(np.uint32) << 16).view(np.float32)


def test_bf16_rounding_is_nearest_ties_to_even():
    from ml_dtypes import bfloat16

    rng = np.random.default_rng(0)
    x = np.concatenate([rng.standard_normal(10000).astype(np.float32) * 10.0 ** rng.integers(-30, 30, 10000),
                        np.array([0.0, -0.0, np.inf, -np.inf, 3.4e38, 1e-40, -1e-45], np.float32),
                        # exact ties: bf16 keeps 8 significant bits, so 1 + 2^-8 lies halfway between two
                        np.array([1 + 2**-8, 1 + 3 * 2**-8, -(1 + 2**-8)], np.float32)])
    ours = native.to_bf16_bits(x)
    assert np.array_equal(ours, x.astype(bfloat16).view(np.uint16))
    assert native.to_bf16_bits(np.array([np.nan], np.float32))[0] & 0x7FFF > 0x7F80   # still a NaN


@pytest.mark.parametrize("kind", KINDS)
@settings(max_examples=30, deadline=None)
@given(rows=st.integers(1, 100), k=st.integers(1, 400), n=st.integers(1, 8).map(lambda m: 32 * m),
       gelu=st.booleans(), residual=st.booleans(), seed=st.integers(0, 2**16))
@example(rows=33, k=384, n=96, gelu=True, residual=True, seed=0)     # K a multiple of 32: no padding in
@example(rows=4, k=32, n=64, gelu=False, residual=False, seed=1)     # its last pair, which a slip drops
def test_linear_bf16_is_the_reference_on_bf16_inputs(kind, rows, k, n, gelu, residual, seed):
    """act(bf16(x) · bf16(W) + b) (+ r) with fp32 sums: within fp32 summation error of the float64
    reference on the same rounded inputs, for any rows (partial passes and register tiles), any K
    (padded to 32), widths of 64-column tiles and of a last 32-column one."""
    from kernels.cpu import _GELU_NATIVE

    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, k), dtype=np.float32)
    w = (rng.standard_normal((k, n)) / math.sqrt(k)).astype(np.float32)
    b = rng.standard_normal(n, dtype=np.float32)
    r = rng.standard_normal((rows, n), dtype=np.float32) if residual else None
    out = native.empty_aligned((rows, n))
    with products_of(kind):
        native.linear_bf16(x, native.pack_bf16(w), k, b, out, _GELU_NATIVE if gelu else None, r)
    ref = reference.linear(bf16(x), bf16(w), b, gelu=gelu, residual=r)
    assert np.abs(out - ref).max() <= 1e-5 * (1 + np.abs(ref).max())


def attention_on_bf16(qkv: np.ndarray, n_head: int) -> np.ndarray:
    """attention_bf16's formula in float64: scores of the bf16-rounded Q and K·scale, the softmax's
    numerators rounded to bf16 and summed as rounded, times the bf16-rounded V."""
    t, d_model = qkv.shape[0], qkv.shape[1] // 3
    d = d_model // n_head
    out = np.empty((t, d_model))
    for h in range(n_head):
        q, k, v = (qkv[:, i * d_model + h * d:i * d_model + (h + 1) * d] for i in range(3))
        s = bf16(q).astype(np.float64) @ bf16(k / math.sqrt(d)).astype(np.float64).T
        p = bf16(np.exp(s - s.max(axis=1, keepdims=True)).astype(np.float32)).astype(np.float64)
        out[:, h * d:(h + 1) * d] = p @ bf16(v) / p.sum(axis=1, keepdims=True)
    return out


@pytest.mark.parametrize("kind", KINDS)
@settings(max_examples=15, deadline=None)
@given(t=st.integers(1, 400), heads=st.sampled_from([1, 2, 6]), scale=st.sampled_from([0.5, 2.0, 6.0]),
       seed=st.integers(0, 2**16))
def test_attention_bf16_is_its_formula(kind, t, heads, scale, seed):
    """Every head, any length (partial 32-row and 32-key passes), spread-out and peaked scores. A bf16
    probability whose fp32 value lies within rounding of a bf16 boundary may round the other way here
    than in float64 (one step: 2^-8 of it), hence a bound of 1% of |V| on the worst element and a
    tight one on the mean."""
    from kernels.backends import get_backend

    be = get_backend("cpu-bf16")
    qkv = (scale * np.random.default_rng(seed).standard_normal((t, 3 * 64 * heads))).astype(np.float32)
    with products_of(kind), be.session():
        ours = be.attention(qkv, heads)
    ref = attention_on_bf16(qkv, heads)
    err, size = np.abs(ours - ref), np.abs(qkv).max()
    assert err.max() <= 1e-2 * size and err.mean() <= 1e-5 * size, (err.max(), err.mean())


@pytest.mark.parametrize("kind", KINDS)
def test_convolutions_read_overlapping_rows_in_place(kind):
    """The stem's convolutions hand the bf16 product overlapping patch rows (no im2col copy)."""
    from kernels.backends import get_backend

    be = get_backend("cpu-bf16")
    rng = np.random.default_rng(1)
    x, w, b = (rng.standard_normal((101, 80), dtype=np.float32), rng.standard_normal((240, 64), dtype=np.float32) / 16,
               rng.standard_normal(64, dtype=np.float32))
    for stride in (1, 2):
        with products_of(kind), be.session():
            ours = be.conv1d_k3(x, be.prepare_weight("conv1d_k3", w), b, stride=stride)
        ref = reference.conv1d_k3(bf16(x), bf16(w), b, stride=stride)
        assert ours.shape == ref.shape and np.abs(ours - ref).max() <= 1e-5 * (1 + np.abs(ref).max())


@pytest.mark.parametrize("kind", KINDS)
def test_it_names_itself_and_refuses_what_it_cannot_run(kind):
    from kernels.backends import get_backend

    be = get_backend("cpu-bf16")
    with products_of(kind):
        assert be.name == "cpu-bf16" and f"bf16 on {native.BF16_KINDS[kind][0]}" in be.describe()
        assert "fp32" in be.describe()
    with pytest.raises(AmanuensisError, match="multiple of 32"):
        be.prepare_weight("linear", np.ones((64, 48), np.float32))
    with pytest.raises(AmanuensisError, match="heads of 64, not 32"):
        be.attention(np.ones((10, 3 * 64), np.float32), 2)


def test_without_bf16_products_asking_for_them_is_an_error(monkeypatch):
    from kernels import backends

    monkeypatch.setattr(native, "BF16", None)
    monkeypatch.setattr(native, "BF16_UNAVAILABLE", "this CPU lacks AMX-BF16 (a test says so)")
    monkeypatch.setattr(backends, "_instances", {})
    with pytest.raises(AmanuensisError, match="device cpu-bf16: bf16 matrix products: this CPU lacks"):
        backends.get_backend("cpu-bf16")


def _bf16_kind_in_a_process(value: str) -> subprocess.CompletedProcess:
    code = "from kernels import native; print(native.BF16 and native.BF16.kind, '|', native.BF16_UNAVAILABLE)"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "AMANUENSIS_BF16_KERNELS": value})


@pytest.mark.parametrize("kind", KINDS)
def test_the_environment_picks_the_kind(kind):
    """AMANUENSIS_BF16_KERNELS=amx|avx512 runs that kind or none (never the other one); a wrong value
    is named in the reason cpu-bf16's error gives."""
    usable = native.load_bf16(kind)[0] is not None
    out = _bf16_kind_in_a_process(kind).stdout
    assert out.startswith(f"{kind} |") if usable else out.startswith("None |") and "lacks" in out, out
    wrong = _bf16_kind_in_a_process("tiles").stdout
    assert wrong.startswith("None |") and "AMANUENSIS_BF16_KERNELS must be one of auto, amx, avx512" in wrong


def test_auto_prefers_amx_tiles():
    """auto takes AMX tiles where they are usable, else AVX512-BF16, else none."""
    usable = [k for k in KINDS if native.load_bf16(k)[0] is not None]
    auto, _ = native.load_bf16("auto")
    assert KINDS[0] == "amx" and (auto.kind if auto else None) == (usable[0] if usable else None)


def test_the_cli_refuses_it_in_one_line_when_it_cannot_run(tmp_path):
    """With the native kernels switched off there are no bf16 products either: exit 2, one line."""
    env = {**os.environ, "AMANUENSIS_CPU_NATIVE": "0"}
    r = subprocess.run([sys.executable, "-m", "encoder.transcribe", "tests/data/hello.wav", "--device", "cpu-bf16",
                        "-o", str(tmp_path)], capture_output=True, text=True, env=env)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "device cpu-bf16" in r.stderr and "AMANUENSIS_CPU_NATIVE" in r.stderr
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.slow
def test_encoder_parity_and_transcripts_on_real_speech(kind, tiny, tiny_torch, speech):
    """Every layer within the bf16 bound of PyTorch fp32 (as emu), and the 18 clips' word error
    rate within half a point of the fp32 cpu backend's (measured equal, 4.9%), on each kind."""
    from encoder.model import WhisperModel

    with products_of(kind):
        _parity_and_transcripts(WhisperModel(tiny.converted, "cpu-bf16", decoder_precision="fp32"), tiny,
                                tiny_torch, speech)


def _parity_and_transcripts(model, fp32_model, torch_model, speech) -> None:
    from encoder.audio import load_audio
    from encoder.evaluation import score
    from encoder.layer_parity import MIN_COSINE_BF16, compare

    for clip in speech[:4]:
        rows = compare(model, load_audio(clip.path), torch_model)
        assert all(not r.fp32 and r.ok and r.diff.cosine >= MIN_COSINE_BF16 for r in rows), (clip.file, rows)
    errors, words = [0, 0], 0
    for clip in speech:
        for i, m in enumerate((model, fp32_model)):
            s = score(clip.text, m.transcribe(clip.path).text)
            errors[i] += s.errors
        words += s.words
    assert errors[0] <= errors[1] + 0.005 * words, (errors, words)


@pytest.mark.parametrize("kind", KINDS)
def test_a_transcription_reports_it_for_every_node(kind, tmp_path):
    skip_unless_usable(kind)
    r = subprocess.run([sys.executable, "-m", "encoder.transcribe", "tests/data/hello.wav", "--device", "cpu-bf16",
                        "-o", str(tmp_path), "-f", "json", "--verbose", "False"], capture_output=True, text=True,
                       env={**os.environ, "AMANUENSIS_BF16_KERNELS": kind})
    assert r.returncode == 0, r.stderr
    result = json.loads((tmp_path / "hello.json").read_text())
    assert set(sum(result["provenance"]["encoder_nodes"].values(), [])) == {"cpu-bf16"}
    assert f"in bf16 on {native.BF16_KINDS[kind][0]}" in r.stderr, r.stderr       # which products ran
