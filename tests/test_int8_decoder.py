"""The int8 decoder (decoder-int8.onnx, the default): its quantizer, its graph, its accuracy against fp32."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from decoder.logits import log_softmax
from decoder.session import DecoderSession
from encoder.audio import load_audio
from encoder.evaluation import score
from kernels.errors import AmanuensisError
from weights_tools.quantize import BLOCK, ZERO_POINT, dequantize_blocks, quantize_blocks

DATA = Path(__file__).parent / "data"
HELLO = DATA / "hello.wav"


def test_quantize_blocks_is_within_half_a_step():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((48, 2 * BLOCK)).astype(np.float32)
    w[3, :BLOCK] = 0.0                           # an all-zero block must not divide by zero
    w[5, 7] = 40.0                               # an outlier sets its own block's scale only
    q, scale = quantize_blocks(w)
    assert q.dtype == np.uint8 and q.shape == (48, 2, BLOCK) and scale.shape == (48, 2)
    signed = q.astype(int) - ZERO_POINT
    assert np.abs(signed).max() == 127 and signed.min() >= -127
    err = np.abs(dequantize_blocks(q, scale, 2 * BLOCK) - w)
    assert np.all(err <= np.repeat(scale, BLOCK, axis=1) / 2 + 1e-6)
    assert np.all(signed[3, 0] == 0) and signed[5, 0, 7] == 127
    assert err[5, BLOCK:].max() < err[5, :BLOCK].max()        # blocks are scaled independently


def test_quantize_blocks_pads_to_whole_blocks():
    """Widths that are not a multiple of the block (random test models) are padded with zeros."""
    w = np.random.default_rng(1).standard_normal((4, 200)).astype(np.float32)
    q, scale = quantize_blocks(w)
    assert q.shape == (4, 2, BLOCK) and np.all(q[:, 1, 200 - BLOCK:] == ZERO_POINT)
    assert np.abs(dequantize_blocks(q, scale, 200) - w).max() <= scale.max() / 2 + 1e-6
    with pytest.raises(ValueError, match="2-D"):
        quantize_blocks(np.ones(BLOCK, np.float32))


def test_int8_graph_holds_8bit_weights(tiny):
    """Every linear layer and the output projection run as MatMulNBits on 8-bit blocks held in the
    graph (a quarter of fp32's bytes); the token embedding's rows, norms and positions stay fp32
    external data in decoder.safetensors."""
    import onnx

    path = tiny.converted.decoder_onnx("int8")
    model = onnx.load(str(path), load_external_data=False)
    nodes = [n for n in model.graph.node if n.op_type == "MatMulNBits"]
    d = tiny.dims
    assert len(nodes) == d.n_text_layer * 8 + 1 and "Gemm" not in {n.op_type for n in model.graph.node}
    attrs = {a.name: a.i for a in nodes[-1].attribute}
    assert attrs["bits"] == 8 and attrs["block_size"] == BLOCK and attrs["accuracy_level"] == 4
    assert attrs["N"] == d.n_vocab and attrs["K"] == d.n_text_state
    inline = [t for t in model.graph.initializer if t.data_location != onnx.TensorProto.EXTERNAL]
    uint8 = sum(int(np.prod(t.dims)) for t in inline if t.data_type == onnx.TensorProto.UINT8)
    # per layer: self-attention 4 d², cross-attention's query and output 2 d² (its K/V projections run
    # in the encoder), fc1 and fc2 8 d²
    assert uint8 == d.n_vocab * d.n_text_state + d.n_text_layer * 14 * d.n_text_state ** 2
    external = {t.name for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL}
    assert "decoder.embed_tokens.weight" in external
    assert path.stat().st_size < 1.1 * uint8


def test_int8_graph_runs_packed_kernels(tiny, capfd):
    """ONNX Runtime prepacks every MatMulNBits into its integer kernels. Where it has none for the
    combination it dequantizes B at every call instead, ~100 times slower, and logs that at INFO
    level: a step with every log line on must show none."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 0
    session = ort.InferenceSession(str(tiny.converted.decoder_onnx("int8")), options,
                                   providers=["CPUExecutionProvider"])
    feeds = {i.name: np.zeros([1 if isinstance(n, str) else n for n in i.shape], np.float32)
             for i in session.get_inputs()}
    feeds.update(input_ids=np.array([[tiny.transcriber.tokenizer.sot]]), offset=np.array(0), logits_from=np.array(0),
                 pad=np.zeros(1, np.int64))
    session.run(None, feeds)
    log = capfd.readouterr().err
    assert "MatMulNBits" in log                      # the log is ONNX Runtime's, captured
    assert "unpacked compute" not in log


def test_the_default_decoder_is_int8():
    from encoder.model import load_model
    from weights_tools.model_dir import DECODER_PRECISIONS, DEFAULT_DECODER_PRECISION

    assert DEFAULT_DECODER_PRECISION == DECODER_PRECISIONS[0] == "int8"
    assert load_model("tiny.en", "cpu").decoder_path.name == "decoder-int8.onnx"


@pytest.mark.slow
def test_int8_transcripts_equal_fp32_on_every_real_clip(tiny, speech):
    """The ground for making int8 the default: the same greedy transcript as fp32 on every real clip."""
    from encoder.model import WhisperModel

    int8 = WhisperModel(tiny.converted, "cpu", decoder_precision="int8")
    for clip in speech:
        assert int8.transcribe(clip.path).text == tiny.transcribe(clip.path).text, clip.file


def test_unknown_precision_is_refused(tiny):
    with pytest.raises(AmanuensisError, match="unknown decoder precision 'fp16'"):
        tiny.converted.decoder_onnx("fp16")


def test_int8_logits_agree_with_fp32(tiny):
    """Teacher-forced on the project clip: the same top token at every position, and the
    next-token distributions within 0.01 nats (KL) of fp32's."""
    tr = tiny.transcriber
    cross, _ = tr.encode_window(load_audio(HELLO))
    tok = tr.tokenizer
    tokens = np.array([[tok.sot, tok.no_timestamps] + tok.encode(
        " The quick brown fox jumps over the lazy dog. This computer turns speech into text.")])
    quantized = DecoderSession(tiny.converted.decoder_onnx("int8"), tiny.dims)
    ref = tr.session.step(tokens, tr.session.new_cache(1), cross)[0]
    ours = quantized.step(tokens, quantized.new_cache(1), cross)[0]

    lr, lo = log_softmax(ref), log_softmax(ours)
    assert np.array_equal(ref.argmax(-1), ours.argmax(-1))
    kl = (np.exp(lr) * (lr - lo)).sum(-1).max()
    assert kl <= 0.01, kl


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
    graph, built at conversion, gives the fp32 graph's logits to within 8-bit rounding."""
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
    quantized = DecoderSession(converted.decoder_onnx("int8"), dims)
    ours = quantized.step(tokens, quantized.new_cache(2), cross)
    assert ours.shape == ref.shape == (2, 7, dims.n_vocab) and np.isfinite(ours).all()
    assert np.corrcoef(ours.ravel(), ref.ravel())[0, 1] > 0.99
    assert np.abs(ours - ref).max() <= 0.1 * np.abs(ref).max()


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
