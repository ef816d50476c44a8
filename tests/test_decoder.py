"""The ONNX decoder against transformers: logits on the same encoder output, and greedy transcripts."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from decoder.decoding import DecodingOptions  # noqa: E402
from encoder.audio import load_audio  # noqa: E402


@pytest.fixture(scope="module")
def hf_whisper(tiny):
    from encoder.parity import torch_whisper

    return torch_whisper(tiny.converted)


def _encode(tiny, samples):
    tr = tiny.transcriber
    cross, run = tr.encode_window(samples)
    return tr, cross, run


def test_logits_match_transformers(tiny, hf_whisper):
    samples = load_audio("tests/data/hello.wav")
    tr, cross, run = _encode(tiny, samples)
    tok = tr.tokenizer
    tokens = [tok.sot, tok.no_timestamps] + tok.encode(" The quick brown fox jumps over the lazy dog.")
    cache = tr.session.new_cache(1)
    prefill = tr.session.step(np.array([tokens[:5]]), cache, cross)        # several tokens at once
    steps = [tr.session.step(np.array([[t]]), cache, cross) for t in tokens[5:]]  # then one by one
    ours = np.concatenate([prefill] + steps, axis=1)[0]
    with torch.no_grad():
        ref = hf_whisper(encoder_outputs=(torch.from_numpy(run.output[None]),),
                         decoder_input_ids=torch.tensor([tokens])).logits[0].numpy()
    assert ours.shape == ref.shape
    assert np.abs(ours - ref).max() <= 1e-3


def test_cross_kv_from_the_encoder_backend(tiny, hf_whisper):
    """cross_kv.i nodes ran on the encoder's backend and equal the reference projections."""
    samples = load_audio("tests/data/hello.wav")
    tr, cross, run = _encode(tiny, samples)
    cross_nodes = [r for r in run.records if r.node.startswith("cross_kv.")]
    assert len(cross_nodes) == tiny.dims.n_text_layer and {r.backend for r in cross_nodes} == {"cpu"}
    layer = hf_whisper.model.decoder.layers[1].encoder_attn
    with torch.no_grad():
        k = layer.k_proj(torch.from_numpy(run.output)).numpy()
    ours = run.tensors["cross_kv.1"][:, :tiny.dims.n_text_state]
    assert np.abs(ours - k).max() <= 1e-4


def greedy_ours(tr, samples):
    cross, _ = tr.encode_window(samples)
    return tr.decoder.decode(cross, DecodingOptions(without_timestamps=True)).tokens


def greedy_reference(tiny, hf_whisper, samples):
    with torch.no_grad():
        out = hf_whisper.generate(torch.from_numpy(tiny.mel(samples)[None]), return_timestamps=False)
    tok = tiny.transcriber.tokenizer
    return [int(t) for t in out[0] if t < tok.eot]


def test_greedy_equals_transformers_on_every_clip(tiny, hf_whisper, speech):
    tr = tiny.transcriber
    for clip in speech:
        samples = load_audio(clip["path"])[:480000]
        ours = [t for t in greedy_ours(tr, samples) if t < tr.tokenizer.eot]
        ref = greedy_reference(tiny, hf_whisper, samples)
        assert tr.tokenizer.decode(ours) == tr.tokenizer.decode(ref), clip["file"]


def test_greedy_equals_transformers_on_project_clip(tiny, hf_whisper):
    samples = load_audio("tests/data/hello.wav")
    tr = tiny.transcriber
    ours = [t for t in greedy_ours(tr, samples) if t < tr.tokenizer.eot]
    assert ours == greedy_reference(tiny, hf_whisper, samples)
