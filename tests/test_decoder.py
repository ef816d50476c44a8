"""The ONNX decoder against transformers: logits on the same encoder output, and greedy transcripts."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from decoder.options import DecodingOptions, TranscribeOptions  # noqa: E402
from encoder.audio import load_audio  # noqa: E402


@pytest.fixture(scope="module")
def hf_whisper(tiny):
    from encoder.torch_reference import torch_whisper

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


@pytest.mark.slow
def test_greedy_equals_transformers_on_every_clip(tiny, hf_whisper, speech):
    tr = tiny.transcriber
    for clip in speech:
        samples = load_audio(clip.path)[:480000]
        ours = [t for t in greedy_ours(tr, samples) if t < tr.tokenizer.eot]
        ref = greedy_reference(tiny, hf_whisper, samples)
        assert tr.tokenizer.decode(ours) == tr.tokenizer.decode(ref), clip.file


def test_greedy_equals_transformers_on_project_clip(tiny, hf_whisper):
    samples = load_audio("tests/data/hello.wav")
    tr = tiny.transcriber
    ours = [t for t in greedy_ours(tr, samples) if t < tr.tokenizer.eot]
    assert ours == greedy_reference(tiny, hf_whisper, samples)


def test_multilingual_prompt_and_language_detection_match_transformers(tmp_path):
    """A random multilingual model: language detection runs, and with a forced language and task
    our greedy tokens equal transformers' generate (same <|sot|> <|lang|> <|task|> prefix)."""
    import json

    from encoder.model import WhisperModel
    from encoder.torch_reference import torch_whisper
    from tests.helpers import hf_config, random_hf_tensors, tiny_random_dims, write_hf_model
    from weights_tools.convert import convert
    from weights_tools.model_dir import ConvertedModel

    dims = tiny_random_dims(51865)
    specials = {"sot": 50257, "de": 50260, "fr": 50264, "transcribe": 50358, "translate": 50357,
                "prev": 50360, "lm": 50359, "nocaptions": 50361, "notimestamps": 50362}
    config = {**hf_config(dims), "decoder_start_token_id": specials["sot"], "eos_token_id": 50256,
              "pad_token_id": 50256, "bos_token_id": 50256, "begin_suppress_tokens": [220, 50256],
              "suppress_tokens": [1, 2, 7, 8, 9, 10, 14, 25, 26] + [
                  specials[k] for k in ("sot", "transcribe", "translate", "prev", "lm", "nocaptions")]}
    src = write_hf_model(tmp_path / "hf", dims, random_hf_tensors(dims, seed=11), config=config)
    (src / "generation_config.json").write_text(json.dumps({
        "is_multilingual": True, "lang_to_id": {"<|de|>": specials["de"], "<|fr|>": specials["fr"]},
        "task_to_id": {"transcribe": specials["transcribe"], "translate": specials["translate"]},
        "no_timestamps_token_id": specials["notimestamps"], "alignment_heads": [[1, 0]],
        "suppress_tokens": config["suppress_tokens"], "begin_suppress_tokens": [220, 50256]}))
    model = WhisperModel(ConvertedModel.open(convert(src, tmp_path / "out")), "cpu", decoder_precision="fp32")
    tr = model.transcriber
    samples = load_audio("tests/data/hello.wav")
    cross, _ = tr.encode_window(samples)
    language, probs = tr.decoder.detect_language(cross)
    assert language in tr.tokenizer.language_tokens and abs(sum(probs.values()) - 1) < 1e-6
    hf = torch_whisper(model.converted)
    for task in ("transcribe", "translate"):
        options = DecodingOptions(language="de", task=task, without_timestamps=True, sample_len=8)
        prefix, _ = tr.decoder.initial_tokens(options)
        assert prefix == [specials["sot"], specials["de"], specials[task], specials["notimestamps"]]
        first = tr.session.step(np.array([prefix]), tr.session.new_cache(1), cross)[0, -1]
        with torch.no_grad():
            out = hf.generate(torch.from_numpy(model.mel(samples)[None]), language="de", task=task,
                              return_timestamps=False, max_new_tokens=8, return_dict_in_generate=True,
                              output_scores=True)
        scores = out.scores[0][0].numpy()                 # transformers' first step, after its own prefix
        finite = np.isfinite(scores)
        assert finite.sum() > 50000 and np.abs(first[finite] - scores[finite]).max() <= 1e-3, task
        ref = [t for t in out.sequences[0].tolist() if t < 50256]
        assert tr.decoder.decode(cross, options).tokens[:len(ref)] == ref, task
    # no language given: each file's first window is encoded at once and the language detected from
    # it, the rest as their batch binds them (with and without VAD chunks)
    short = TranscribeOptions(decoding=DecodingOptions(sample_len=8), temperatures=(0.0,))
    for vad in (False, True):
        results = dict(model.transcribe_many([samples, samples], short, batch_size=2, vad=vad))
        assert [r.language for r in results.values()] == [results[0].language] * 2, vad
        assert results[0].language in tr.tokenizer.language_tokens and (vad or results[0].language == language)
    # the bad-input matrix row "unknown language on a multilingual model", through the CLI
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "encoder.transcribe", "tests/data/hello.wav", "--model",
                        str(tmp_path / "out"), "--language", "xx", "-o", str(tmp_path / "t")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr and not (tmp_path / "t").exists(), r.stderr
    assert [line for line in r.stderr.splitlines() if line.startswith("error:")] == [
        "error: unknown language 'xx' for this model"], r.stderr

