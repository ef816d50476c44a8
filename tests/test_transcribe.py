"""Transcription end to end: API, CLI and every output format, long audio, silence, bad input, WER."""
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile

from decoder.normalize import normalize, number_words
from decoder.spelling import AMERICAN
from encoder.evaluation import score
from kernels.errors import AmanuensisError

DATA = Path(__file__).parent / "data"
HELLO = DATA / "hello.wav"
HELLO_TEXT = (DATA / "hello.reference.txt").read_text()


def run(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", *map(str, args)], capture_output=True, text=True, cwd=cwd)


def test_api_transcribes_the_project_clip(tiny):
    result = tiny.transcribe(HELLO)
    assert score(HELLO_TEXT, result.text).wer <= 0.15, result.text
    ends = [s.end for s in result.segments]
    assert result.segments[0].start == 0.0 and ends == sorted(ends) and ends[-1] <= 9.7
    assert result.language == "en" and 9 < result.duration < 10 and result.processing_seconds > 0
    assert result.provenance.device == "cpu" and result.provenance.windows == 1 and not result.provenance.fallbacks


def test_beam_search_and_no_timestamps(tiny):
    beam = tiny.transcribe(HELLO, beam_size=5)
    plain = tiny.transcribe(HELLO, without_timestamps=True)
    for result in (beam, plain):
        assert score(HELLO_TEXT, result.text).wer <= 0.15, result.text
    assert len(plain.segments) == 1


def test_cli_writes_every_format(tmp_path):
    r = run("encoder.transcribe", HELLO, "--output-dir", tmp_path / "out", "--device", "cpu", "--profile")
    assert r.returncode == 0, r.stderr
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == [f"hello.{f}" for f in ("json", "srt", "tsv", "txt", "vtt")]
    result = json.loads((out / "hello.json").read_text())
    segments = result["segments"]
    assert score(HELLO_TEXT, result["text"]).wer <= 0.15
    assert set(result["provenance"]["encoder_nodes"]) >= {"conv1", "layers.3.fc2", "cross_kv.3"}
    assert all(b == ["cpu"] for b in result["provenance"]["encoder_nodes"].values())
    assert "encoder_profile" in result and "layers.0.self_attn" in r.stderr
    txt = (out / "hello.txt").read_text().splitlines()
    assert txt == [s["text"].strip() for s in segments]
    srt = (out / "hello.srt").read_text()
    assert re.fullmatch(r"(\d+\n\d\d:\d\d:\d\d,\d{3} --> \d\d:\d\d:\d\d,\d{3}\n[^\n]+\n\n)+", srt)
    assert srt.startswith("1\n00:00:00,000 --> ")
    vtt = (out / "hello.vtt").read_text()
    assert vtt.startswith("WEBVTT\n\n") and vtt.count(" --> ") == len(segments)
    tsv = (out / "hello.tsv").read_text().splitlines()
    assert tsv[0] == "start\tend\ttext" and len(tsv) == len(segments) + 1
    first = segments[0]
    assert [int(x) for x in tsv[1].split("\t")[:2]] == [round(1000 * first["start"]), round(1000 * first["end"])]
    for fmt in ("txt", "srt", "vtt", "tsv", "json"):
        single = tmp_path / fmt
        assert run("encoder.transcribe", HELLO, "-o", single, "-f", fmt, "--verbose", "False").returncode == 0
        assert [p.name for p in single.iterdir()] == [f"hello.{fmt}"]


def test_timestamps_format():
    from encoder.writers import timestamp

    assert timestamp(3723.0456, True, ",") == "01:02:03,046"
    assert timestamp(62.5, False, ".") == "01:02.500"


@pytest.mark.parametrize("kind", ["noise", "silence"])
def test_no_text_from_noise_or_silence(tiny, kind):
    rng = np.random.default_rng(1)
    samples = (0.1 * rng.standard_normal(30 * 16000)).astype(np.float32) if kind == "noise" \
        else np.zeros(30 * 16000, np.float32)
    assert tiny.transcribe(samples).text == ""


def test_long_audio_seeks_through_windows(tiny, tmp_path):
    """Two minutes: the clip four times, each followed by silence to fill 30 s. Every repeat is
    found once, in order, within the audio, by greedy decoding (no repetition to trigger fallback)."""
    speech, rate = soundfile.read(str(HELLO), dtype="float32")
    period = np.zeros(30 * rate, np.float32)
    period[:len(speech)] = speech
    long = np.concatenate([period] * 4)
    path = tmp_path / "long.flac"
    soundfile.write(str(path), long, rate)
    result = tiny.transcribe(path)
    starts = [s.start for s in result.segments]
    assert starts == sorted(starts) and result.segments[-1].end <= len(long) / rate + 0.5
    assert len({s.seek for s in result.segments}) == 4                            # one window per repeat
    assert normalize(result.text).count("lazy dog") == 4, result.text
    assert {s.temperature for s in result.segments} == {0.0}
    for k in range(4):                                                            # each repeat where it is
        assert any(30 * k <= s.start < 30 * k + 10 for s in result.segments), (k, starts)


def test_sampled_fallback_is_reproducible(tiny):
    """Temperature fallback samples with a fixed seed: the same input gives the same transcript."""
    from decoder.options import TranscribeOptions

    options = TranscribeOptions(compression_ratio_threshold=0.5)                # forces sampling
    first, second = tiny.transcribe(HELLO, options), tiny.transcribe(HELLO, options)
    assert first.segments[0].temperature > 0
    assert first.text == second.text and first.segments == second.segments


def test_audio_stream_memory_is_bounded(tmp_path):
    from encoder.audio import AudioStream

    rate = 8000
    path = tmp_path / "ten_minutes.wav"
    soundfile.write(str(path), (0.01 * np.sin(np.arange(600 * rate) / 7)).astype(np.float32), rate)
    stream = AudioStream(path)
    peak, start = 0, 0
    while True:
        window = stream.window(start, 480000)
        peak = max(peak, len(stream._buf))
        if len(window) < 480000:
            break
        start += 400000
    assert abs(start + len(window) - 600 * 16000) <= 16 and peak <= 480000 + 2 * AudioStream.CHUNK * 2


def test_fallback_climbs_the_temperature_ladder(tiny):
    from decoder.options import DecodingOptions, TranscribeOptions
    from encoder.audio import load_audio

    tr = tiny.transcriber
    cross, _ = tr.encode_window(load_audio(HELLO))
    rules = TranscribeOptions(compression_ratio_threshold=0.1, logprob_threshold=None, no_speech_threshold=None)
    result = tr.decoder.decode_with_fallback(cross, DecodingOptions(), rules)
    assert result.temperature == 1.0                         # every attempt "too repetitive": last rung
    assert tr.decoder.decode_with_fallback(cross, DecodingOptions(), TranscribeOptions()).temperature == 0.0


def test_bad_input_fails_clearly(tiny, tmp_path):
    with pytest.raises(AmanuensisError, match="too short to hold speech"):
        tiny.transcribe(np.zeros(800, np.float32))
    with pytest.raises(AmanuensisError, match="English-only"):
        tiny.transcribe(HELLO, language="de")
    with pytest.raises(AmanuensisError, match="multilingual"):
        tiny.transcribe(HELLO, task="translate")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    r = run("encoder.transcribe", HELLO, "-o", blocker / "sub")
    assert r.returncode == 2 and "cannot create the output directory" in r.stderr
    assert "device" not in r.stderr                          # failed before loading anything
    r = run("encoder.transcribe", tmp_path / "missing.mp3")
    assert r.returncode == 2 and "missing.mp3: file not found" in r.stderr and "Traceback" not in r.stderr
    short = tmp_path / "blip.wav"
    soundfile.write(str(short), np.zeros(400, np.float32), 8000)
    r = run("encoder.transcribe", short, "-o", tmp_path / "o")
    assert r.returncode == 2 and "too short" in r.stderr and not list((tmp_path / "o").iterdir())


def test_evaluate_cli_on_a_project_manifest(tmp_path):
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"id": "hello", "file": str(HELLO), "text": HELLO_TEXT}) + "\n")
    r = run("encoder.evaluate", manifest, "--json")
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert result["wer"] <= 0.15 and result["clips"][0]["words"] == 15
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"file": "x.wav"}\n')
    r = run("encoder.evaluate", bad)
    assert r.returncode == 2 and "bad.jsonl:1" in r.stderr


@pytest.mark.slow
def test_evaluate_real_speech(speech):
    from encoder.evaluation import evaluate, read_manifest
    from encoder.model import load_model

    result = evaluate(load_model("tiny.en", "cpu"), read_manifest(speech[0].path.parent / "manifest.jsonl"))
    assert len(result.clips) == 18 and result.wer < 0.08      # tiny.en: 4.1% (2026-12-04)


def test_normalizer():
    assert number_words(1961) == "one thousand nine hundred sixty one"
    assert normalize("Go forward 10 meters.") == "go forward ten meters"
    assert normalize("In 1961, he said: (laughs) \"it's 50%!\"") == "in nineteen sixty one he said it's fifty percent"
    assert normalize("the 15th century") == "the fifteenth century"
    assert normalize("HE HOPED THERE WOULD BE STEW") == "he hoped there would be stew"
    assert score("a b c d", "a x c").wer == 0.5


def test_normalizer_scores_british_and_american_spelling_alike():
    """The bench's varied text is in British spelling and tiny.en writes American: the same words."""
    british = "Dr. Okafor's harbour: 30 metres of grey fibre. Councillor Brandt travelled, organised, practising."
    american = "Doctor Okafor's harbor: thirty meters of gray fiber. Councilor Brandt traveled, organized, practicing."
    assert normalize(british) == normalize(american)
    assert score(british, american).errors == 0
    # words that only look like a family's: untouched
    for word in "four hours your tour flour emphasis analyses genre acre hollow controlled".split():
        assert normalize(word) == word
    # one spelling per word: no American form is itself rewritten, so normalising twice changes nothing
    assert not set(AMERICAN.values()) & set(AMERICAN)
    assert normalize(normalize(british)) == normalize(british)


def test_cli_word_timestamps_in_json(tmp_path):
    r = run("encoder.transcribe", HELLO, "-o", tmp_path, "-f", "json", "--word-timestamps", "--verbose", "False")
    assert r.returncode == 0, r.stderr
    result = json.loads((tmp_path / "hello.json").read_text())
    words = [w for s in result["segments"] for w in s["words"]]
    assert "".join(w["word"] for w in words) == result["text"] and len(words) >= 12


def test_beam_of_one_is_greedy(tiny):
    from dataclasses import replace

    from decoder.options import DecodingOptions
    from encoder.audio import load_audio

    tr = tiny.transcriber
    cross, _ = tr.encode_window(load_audio(HELLO))
    for options in (DecodingOptions(), DecodingOptions(without_timestamps=True)):
        greedy = tr.decoder.decode(cross, options)
        beam = tr.decoder.decode(cross, replace(options, beam_size=1))
        assert beam.tokens == greedy.tokens and abs(beam.avg_logprob - greedy.avg_logprob) < 1e-6


def test_clipped_audio_still_transcribes(tiny):
    from encoder.audio import load_audio

    clipped = np.clip(5 * load_audio(HELLO), -1, 1)          # hard clipping: 4.6% of all samples at +-1
    assert np.mean(np.abs(clipped) == 1) > 0.04
    assert score(HELLO_TEXT, tiny.transcribe(clipped).text).wer <= 0.15


def test_transcription_keeps_blas_single_threaded_between_windows(tiny, monkeypatch):
    """The front end and the decoding run inside the backend's session: a multi-threaded BLAS call
    there leaves BLAS's threads spinning on the cores the next window's encoder needs."""
    from threadpoolctl import threadpool_info

    def blas_threads():
        return {i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"}

    def watched(fn, seen):
        return lambda *args, **kwargs: (seen.append(blas_threads()), fn(*args, **kwargs))[1]

    before, mel_calls, steps = blas_threads(), [], []
    monkeypatch.setattr(tiny.backend, "log_mel", watched(tiny.backend.log_mel, mel_calls))
    monkeypatch.setattr(tiny.transcriber.session, "step", watched(tiny.transcriber.session.step, steps))
    tiny.transcribe(HELLO)
    tiny.embed(HELLO)
    assert len(mel_calls) == 2 and all(s == {1} for s in mel_calls), mel_calls
    assert len(steps) > 10 and all(s == {1} for s in steps)
    assert blas_threads() == before                 # the caller's setting comes back
