"""Layer-by-layer parity with PyTorch (transformers' WhisperEncoder on the same weights)."""
import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from encoder.layer_parity import FLAT_PEAK, MAX_ABS, MIN_COSINE, compare  # noqa: E402
from tests.helpers import random_hf_tensors, small_dims, write_hf_model  # noqa: E402


def assert_parity(rows, context, flat_except=()):
    """Every tensor within its bound (see encoder/layer_parity.py), and the flat 1e-3 for every tensor of
    magnitude <= 10 but `flat_except`: there the bound's floor term must not be what lets it pass."""
    names = [r.name for r in rows]
    assert names[0] == "mel" and "embed" in names and names[-1] == "layer_norm"
    for r in rows:
        assert r.fp32 and r.ok, (context, r)
        assert r.diff.cosine >= MIN_COSINE and r.diff.max_abs <= r.bound, (context, r)
        if r.diff.peak <= FLAT_PEAK and r.name not in flat_except:
            assert r.diff.max_abs <= MAX_ABS, (context, r)


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["native", "numpy"])
def test_tiny_en_on_real_speech(tiny, tiny_torch, speech, variant, monkeypatch):
    """Both variants of the cpu backend: the native kernels, and the numpy ones a machine without a
    C compiler at install runs."""
    from encoder.audio import load_audio
    from kernels import native
    from kernels.cpu import CpuBackend
    from kernels.runner import Runner

    if variant == "native" and native.LIBRARY is None:
        pytest.skip(f"native kernels {native.UNAVAILABLE}")
    backend = CpuBackend(native_kernels=variant == "native")     # with weights in its own layout
    monkeypatch.setattr(tiny, "runner", Runner(tiny.graph, tiny.converted.read_encoder_weights(), backend))
    for clip in speech:
        assert_parity(compare(tiny, load_audio(clip.path), tiny_torch), f"{clip.file} ({variant})")


def test_tiny_en_on_random_audio(tiny, tiny_torch):
    rng = np.random.default_rng(0)
    for seconds in (0.5, 12.0, 30.0):
        samples = (0.1 * rng.standard_normal(int(seconds * 16000))).astype(np.float32)
        # Loud white noise drives the final output where PyTorch fp32 itself misses 1e-3 against float64.
        assert_parity(compare(tiny, samples, tiny_torch), f"noise {seconds}s", ("layer_norm",))


@pytest.mark.parametrize("dims", [
    small_dims(),                                                              # 128 mels, 5 layers, 8 heads
    small_dims(n_mels=80, n_audio_state=192, n_audio_head=3, n_audio_layer=3, n_audio_mlp=768,
               n_text_state=192, n_text_head=3, n_text_mlp=768, n_vocab=51865),
], ids=["128mel-5L-8H", "80mel-3L-3H"])
def test_random_models_of_other_shapes(tmp_path, dims):
    from encoder.model import WhisperModel
    from weights_tools.convert import convert
    from weights_tools.model_dir import ConvertedModel

    src = write_hf_model(tmp_path / "hf", dims, random_hf_tensors(dims, seed=dims.n_audio_layer))
    model = WhisperModel(ConvertedModel.open(convert(src, tmp_path / "out")), "cpu")
    samples = (0.1 * np.random.default_rng(5).standard_normal(20 * 16000)).astype(np.float32)
    assert_parity(compare(model, samples), dims, flat_except=())
