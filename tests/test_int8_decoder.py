"""The int8 decoders: decoder-int8-vocab.onnx (the output projection in int8, the default) and
decoder-int8.onnx (every linear layer): their quantizer, their graphs, their accuracy against fp32."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from decoder.logits import log_softmax
from decoder.session import DecoderSession
from encoder.audio import load_audio
from encoder.evaluation import evaluate, score
from kernels.errors import AmanuensisError
from weights_tools.quantize import dequantize_int8, quantize_int8

DATA = Path(__file__).parent / "data"
HELLO = DATA / "hello.wav"


def test_quantize_int8_is_within_half_a_step():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((48, 40)).astype(np.float32)
    w[3] = 0.0                                   # an all-zero row must not divide by zero
    w[5, 7] = 40.0                               # an outlier sets its own row's scale only
    q, scale = quantize_int8(w)
    assert q.dtype == np.int8 and q.shape == (40, 48) and scale.shape == (48,)
    assert np.abs(q.astype(int)).max() == 127 and q.min() >= -127
    err = np.abs(dequantize_int8(q, scale) - w)
    assert np.all(err <= scale[:, None] / 2 + 1e-6)
    assert np.all(q[:, 3] == 0) and q[7, 5] == 127
    assert err[6].max() < err[5].max()          # rows are scaled independently


def test_quantize_int8_wants_a_matrix():
    with pytest.raises(ValueError, match="2-D"):
        quantize_int8(np.ones(4, np.float32))


def test_int8_graph_holds_int8_weights(tiny):
    """Every linear layer and the token embedding run as integer matmuls on int8 weights: the
    graph's fp32 initializers are only small (norms, biases, positions, scales)."""
    import onnx

    path = tiny.converted.decoder_onnx("int8")
    model = onnx.load(str(path))
    ops = {n.op_type for n in model.graph.node}
    assert "MatMulInteger" in ops and "Gemm" not in ops
    sizes = {}
    for t in model.graph.initializer:
        sizes.setdefault(t.data_type, 0)
        sizes[t.data_type] += int(np.prod(t.dims))
    d = tiny.dims
    assert sizes[onnx.TensorProto.INT8] >= d.n_vocab * d.n_text_state + d.n_text_layer * 12 * d.n_text_state ** 2
    assert sizes[onnx.TensorProto.FLOAT] < 0.05 * sizes[onnx.TensorProto.INT8]


def test_int8_vocab_graph_quantizes_the_output_projection_only(tiny):
    """One integer matmul, onto the vocabulary, from an int8 copy of the token embedding held in the
    graph; every other weight (the embedding's fp32 rows included) is external data in decoder.safetensors."""
    import onnx

    path = tiny.converted.decoder_onnx("int8-vocab")
    model = onnx.load(str(path), load_external_data=False)
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("MatMulInteger") == 1 and ops.count("Gemm") == tiny.dims.n_text_layer * 8
    inline = {t.name: t for t in model.graph.initializer if t.data_location != onnx.TensorProto.EXTERNAL}
    int8 = [t for t in inline.values() if t.data_type == onnx.TensorProto.INT8]
    assert [list(t.dims) for t in int8] == [[tiny.dims.n_text_state, tiny.dims.n_vocab]]
    external = [t.name for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    assert "decoder.embed_tokens.weight" in external and len(external) > 40
    assert path.stat().st_size < 1.1 * tiny.dims.n_vocab * tiny.dims.n_text_state


def test_the_default_decoder_is_int8_vocab():
    from encoder.model import load_model
    from weights_tools.model_dir import DECODER_PRECISIONS, DEFAULT_DECODER_PRECISION

    assert DEFAULT_DECODER_PRECISION == DECODER_PRECISIONS[0] == "int8-vocab"
    assert load_model("tiny.en", "cpu").decoder_path.name == "decoder-int8-vocab.onnx"


@pytest.mark.slow
def test_int8_vocab_transcripts_equal_fp32_on_every_real_clip(tiny, speech):
    """The ground for making int8-vocab the default: the same greedy transcript as fp32 on every real
    clip (all-int8 changes three of the 18)."""
    from encoder.model import WhisperModel

    vocab = WhisperModel(tiny.converted, "cpu", decoder_precision="int8-vocab")
    for clip in speech:
        assert vocab.transcribe(clip.path).text == tiny.transcribe(clip.path).text, clip.file


def test_unknown_precision_is_refused(tiny):
    with pytest.raises(AmanuensisError, match="unknown decoder precision 'fp16'"):
        tiny.converted.decoder_onnx("fp16")


@pytest.mark.parametrize("precision, max_kl", [("int8", 0.05), ("int8-vocab", 0.03)])
def test_int8_logits_agree_with_fp32(tiny, precision, max_kl):
    """Teacher-forced on the project clip: the same top token at every position, and the
    next-token distributions within max_kl nats (KL) of fp32's; measured 0.008-0.011 (int8), 0.007 (int8-vocab)."""
    tr = tiny.transcriber
    cross, _ = tr.encode_window(load_audio(HELLO))
    tok = tr.tokenizer
    tokens = np.array([[tok.sot, tok.no_timestamps] + tok.encode(
        " The quick brown fox jumps over the lazy dog. This computer turns speech into text.")])
    quantized = DecoderSession(tiny.converted.decoder_onnx(precision), tiny.dims)
    ref = tr.session.step(tokens, tr.session.new_cache(1), cross)[0]
    ours = quantized.step(tokens, quantized.new_cache(1), cross)[0]

    lr, lo = log_softmax(ref), log_softmax(ours)
    assert np.array_equal(ref.argmax(-1), ours.argmax(-1))
    assert (np.exp(lr) * (lr - lo)).sum(-1).max() <= max_kl


@pytest.mark.slow
def test_int8_word_error_rate_on_real_speech(tiny, speech):
    """Over every real clip, int8 makes at most 2 points more word errors than fp32 (measured:
    5.5% against 4.9%, 344 words)."""
    from encoder.model import WhisperModel

    int8 = WhisperModel(tiny.converted, "cpu", decoder_precision="int8")
    fp32, q8 = evaluate(tiny, speech), evaluate(int8, speech)
    assert q8.words == fp32.words > 300
    assert q8.wer <= fp32.wer + 0.02, (q8.wer, fp32.wer)


def test_cli_decoder_precision(tmp_path):
    r = subprocess.run([sys.executable, "-m", "encoder.transcribe", str(HELLO), "-o", str(tmp_path), "-f", "json",
                        "--decoder-precision", "int8", "--verbose", "False"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "decoder onnxruntime cpu, int8 weights (decoder-int8.onnx)" in r.stderr
    result = json.loads((tmp_path / "hello.json").read_text())
    assert result["provenance"]["decoder"].startswith("onnxruntime cpu, int8")
    assert score((DATA / "hello.reference.txt").read_text(), result["text"]).wer <= 0.15
    bad = subprocess.run([sys.executable, "-m", "encoder.transcribe", str(HELLO), "--decoder-precision", "fp16"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "--decoder-precision" in bad.stderr and "fp16" in bad.stderr


def test_int8_beam_search_and_word_timestamps(tiny):
    """The int8 graph serves every decoding path: beam search, and word timestamps (its
    alignment-head output)."""
    from decoder.options import DecodingOptions, TranscribeOptions
    from encoder.model import WhisperModel

    int8 = WhisperModel(tiny.converted, "cpu", decoder_precision="int8")
    assert int8.transcriber.session.has_alignment
    result = int8.transcribe(HELLO, TranscribeOptions(DecodingOptions(beam_size=5), word_timestamps=True))
    assert score((DATA / "hello.reference.txt").read_text(), result.text).wer <= 0.15, result.text
    words = result.words
    starts = [w.start for w in words]
    assert len(words) >= 12 and starts == sorted(starts) and all(w.end >= w.start for w in words)
    assert words[-1].end <= 9.7


def test_int8_graphs_of_other_dims_track_fp32(tmp_path):
    """A random model of other dims (2 layers, 2 heads, d 128, multilingual vocabulary): its int8
    graphs, built at conversion, give the fp32 graph's logits to within int8 rounding."""
    from tests.helpers import random_hf_tensors, tiny_random_dims, write_hf_model
    from weights_tools.convert import convert
    from weights_tools.model_dir import ConvertedModel

    dims = tiny_random_dims(51865)
    converted = ConvertedModel.open(convert(write_hf_model(tmp_path / "hf", dims, random_hf_tensors(dims, seed=5)),
                                            tmp_path / "out"))
    fp32 = DecoderSession(converted.decoder_onnx("fp32"), dims)
    rng = np.random.default_rng(1)
    cross = fp32.bind_cross([rng.standard_normal((dims.n_audio_ctx, 2 * dims.n_text_state), dtype=np.float32)
                             for _ in range(dims.n_text_layer)])       # each layer's [K | V], (T, 2d)
    tokens = rng.integers(0, 50000, (2, 7))
    ref = fp32.step(tokens, fp32.new_cache(2), cross)
    for precision in ("int8", "int8-vocab"):
        quantized = DecoderSession(converted.decoder_onnx(precision), dims)
        ours = quantized.step(tokens, quantized.new_cache(2), cross)
        assert ours.shape == ref.shape == (2, 7, dims.n_vocab) and np.isfinite(ours).all()
        assert np.corrcoef(ours.ravel(), ref.ravel())[0, 1] > 0.99, precision
        assert np.abs(ours - ref).max() <= 0.1 * np.abs(ref).max(), precision


def test_int8_caveat_names_cpus_without_vnni(tmp_path, monkeypatch):
    """On x86 without VNNI, the int8 decoder's description says its products may saturate."""
    import platform

    from decoder.session import int8_caveat

    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    avx2 = tmp_path / "avx2"
    avx2.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma\n")
    vnni = tmp_path / "vnni"
    vnni.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx avx2 avx512f avx512_vnni\n")
    assert "no VNNI" in int8_caveat(str(avx2))
    assert int8_caveat(str(vnni)) is None and int8_caveat(str(tmp_path / "missing")) is None
    monkeypatch.setattr(platform, "machine", lambda: "aarch64")
    assert int8_caveat(str(avx2)) is None
