"""Live transcription (encoder.streaming, encoder.live_audio, transcribe --live): committed text
against the offline transcript, bounded work, silence, the sources and the command line."""
import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from encoder.audio import load_audio
from encoder.evaluation import score
from encoder.live_audio import pcm_stream
from encoder.streaming import RUN_WORDS, LiveTranscriber, agreed_words, replay
from kernels.errors import BadAudio, BadOption
from kernels.frontend import SAMPLE_RATE

DATA = Path(__file__).parent / "data"
HELLO = DATA / "hello.wav"


@pytest.fixture(scope="module")
def model():
    from encoder.model import load_model

    return load_model("tiny.en", "cpu")            # the default decoder, as --live runs it


def test_committed_text_is_the_offline_text(model):
    """The project clip fed in 0.1 s steps: every word committed once, in order, as offline; a word is
    committed at most a few chunks after it is heard (audio time: no dependence on the machine)."""
    audio = load_audio(HELLO)
    result = replay(LiveTranscriber(model), audio)
    offline = model.transcribe(audio).text
    assert score(offline, result.text).wer <= 0.1, (result.text, offline)
    assert len(result.delays) == len(result.text.split())
    assert max(result.delays) <= 4.0 and np.median(result.delays) <= 2.0, result.delays
    assert result.work_seconds > 0 and result.seconds == pytest.approx(len(audio) / SAMPLE_RATE)


@pytest.mark.slow
def test_real_clips_live_within_two_points_of_offline(model, speech):
    """Each real clip streamed (1 s of silence after it): the committed words' WER against the
    references within 2 points of the offline transcripts' (measured: 4.4% against 4.9%)."""
    live_errors = offline_errors = words = 0
    for clip in speech:
        audio = np.concatenate([load_audio(clip.path), np.zeros(SAMPLE_RATE, np.float32)])
        live, offline = score(clip.text, replay(LiveTranscriber(model), audio).text), \
            score(clip.text, model.transcribe(clip.path).text)
        live_errors += live.substitutions + live.deletions + live.insertions
        offline_errors += offline.substitutions + offline.deletions + offline.insertions
        words += live.words
    assert words > 300 and live_errors / words <= offline_errors / words + 0.02, (live_errors, offline_errors)


@pytest.mark.slow
def test_a_long_stream_keeps_its_buffer_short(model, speech):
    """Minutes of speech: the buffer is cut at committed segment ends, so it never grows past twice
    the trim length (and the work per update stays bounded)."""
    audio = np.concatenate([np.concatenate([load_audio(c.path), np.zeros(SAMPLE_RATE // 2, np.float32)])
                            for c in speech[:8]])
    live, longest = LiveTranscriber(model, trim_seconds=10.0), 0.0
    for i in range(0, len(audio), SAMPLE_RATE // 2):
        live.feed(audio[i:i + SAMPLE_RATE // 2])
        longest = max(longest, live.buffer.end - live.buffer.start)
    live.finish()
    assert len(audio) / SAMPLE_RATE > 60 and longest <= 2 * 10.0 + 1.0, longest
    reference = " ".join(c.text for c in speech[:8])
    assert score(reference, live.text).wer <= 0.15, live.text


def test_silence_costs_no_transcription(model):
    """Silence and faint noise: no text, and no update runs the model (the VAD gate)."""
    rng = np.random.default_rng(0)
    audio = np.concatenate([np.zeros(4 * SAMPLE_RATE, np.float32),
                            (0.003 * rng.standard_normal(6 * SAMPLE_RATE)).astype(np.float32)])
    live = LiveTranscriber(model)
    updates = live.feed(audio) + [live.finish()]
    assert len(updates) == 11 and all(u.work_seconds == 0 and not u.committed for u in updates)
    assert live.text == "" and live.buffer.end == pytest.approx(10.0)


def test_silence_after_speech_costs_no_transcription(model):
    """Once the words before a pause are committed, the pause's updates do not run the model, and
    what was said stays committed."""
    audio = np.concatenate([load_audio(HELLO), np.zeros(6 * SAMPLE_RATE, np.float32)])
    live = LiveTranscriber(model)
    updates = live.feed(audio)
    assert live.text and updates[-1].work_seconds == 0 and updates[-2].work_seconds == 0
    assert not live.finish().committed
    assert score(model.transcribe(load_audio(HELLO)).text, live.text).wer <= 0.1


def test_bad_chunking_is_refused(model):
    with pytest.raises(BadOption, match="chunk must be positive"):
        LiveTranscriber(model, chunk_seconds=0)
    with pytest.raises(BadOption, match="no longer than the trim length"):
        LiveTranscriber(model, chunk_seconds=5, trim_seconds=2)


def test_pcm_stream_reads_s16le_across_odd_reads():
    samples = (np.arange(-1000, 1000, 7) * 16).astype("<i2")

    class Dribble(io.RawIOBase):                   # hands over 3 bytes at a time: samples split across reads
        def __init__(self, data):
            self.data = data

        def read(self, n):
            out, self.data = self.data[:3], self.data[3:]
            return out

    got = np.concatenate(list(pcm_stream(Dribble(samples.tobytes()))))
    assert np.array_equal(got, samples.astype(np.float32) / 32768.0)
    with pytest.raises(BadAudio, match="middle of a 16-bit sample"):
        list(pcm_stream(io.BytesIO(b"abc")))


def _cli(*args, stdin: bytes | None = None):
    return subprocess.run([sys.executable, "-m", "encoder.transcribe", *args], input=stdin, capture_output=True)


def test_cli_live_from_a_file_and_from_stdin():
    reference = (DATA / "hello.reference.txt").read_text()
    r = _cli("--live", "--live-speed", "0", str(HELLO))
    assert r.returncode == 0, r.stderr.decode()
    assert score(reference, r.stdout.decode()).wer <= 0.15, r.stdout
    pcm = (np.clip(load_audio(HELLO), -1, 1) * 32767).astype("<i2").tobytes()
    s = _cli("--live", "-", stdin=pcm)
    assert s.returncode == 0, s.stderr.decode()
    assert score(reference, s.stdout.decode()).wer <= 0.15, s.stdout


@pytest.mark.parametrize("args, stdin, message", [
    (["--live", "a.wav", "b.wav"], None, "--live takes one source, got 2"),
    (["--live", "--live-speed", "-1", str(HELLO)], None, "--live-speed -1.0: must be 0 or more"),
    (["--live", "missing.wav"], None, "missing.wav: file not found"),
    (["--live", "-"], b"abc", "middle of a 16-bit sample"),
    ([], None, "no audio given"),
])
def test_cli_live_bad_input(args, stdin, message):
    r = _cli(*args, stdin=stdin)
    err = r.stderr.decode()
    assert r.returncode == 2 and message in err and "Traceback" not in err, err


def test_cli_live_without_a_microphone_package():
    import importlib.util

    if importlib.util.find_spec("sounddevice") is not None:
        pytest.skip("sounddevice is installed: the microphone path would open a device")
    r = _cli("--live")
    err = r.stderr.decode()
    assert r.returncode == 2 and "needs the sounddevice package" in err and "Traceback" not in err
    assert "device cpu" not in err                 # refused before any model loads


def test_the_prompt_holds_the_committed_words_before_the_buffer():
    """A cut falls at a segment end, which can be a little before the end time of the segment's
    last word: that word belongs to the prompt (a prompt ending mid-sentence, with its last word
    missing, made the decoder hallucinate one word per update and commit nothing more)."""
    from types import SimpleNamespace

    from encoder.results import Word

    class Recorder:
        prompts = []

        def transcribe(self, samples, options, **changes):
            self.prompts.append(changes["initial_prompt"])
            return SimpleNamespace(segments=[], decoded={})

    live = LiveTranscriber(Recorder(), vad=object())
    words = [Word(" behind", 10.2, 10.6, 1.0), Word(" its", 10.6, 10.9, 1.0), Word(" timetable.", 10.9, 11.68, 1.0),
             Word(" Margaret", 12.1, 12.6, 1.0)]
    live.committed, live._said = list(words), [w.word for w in words]
    live.buffer.start, live.buffer.samples = 11.6, np.zeros(4 * SAMPLE_RATE, np.float32)
    live._transcribe()
    assert Recorder.prompts == ["behind its timetable."]


def test_words_far_behind_the_audio_are_committed_without_agreement():
    """Updates seconds apart (a busy server) agree less often: a word that ended MAX_DELAY_SECONDS
    before the audio received is committed from the latest hypothesis, which bounds the buffer."""
    from encoder.results import Word
    from encoder.streaming import MAX_DELAY_SECONDS

    live = LiveTranscriber(object(), vad=object())                # no model work here
    live.hypothesis = [Word(" a", 0.0, 1.0, 1.0), Word(" bee", 1.0, 2.0, 1.0)]
    words = [Word(" a", 0.0, 1.0, 1.0), Word(" be", 1.0, 2.0, 1.0), Word(" sea", 2.0, 4.0, 1.0),
             Word(" dee", 4.0, 9.0, 1.0)]
    assert [w.word for w in live._agreed(words, received=3.0)] == [" a"]                 # agreement only
    assert [w.word for w in live._agreed(words, received=4.0 + MAX_DELAY_SECONDS)] == [" a", " be", " sea"]


def test_a_run_of_agreed_words_commits_the_disputed_word_before_it():
    """LocalAgreement's common prefix, extended: a run of RUN_WORDS words the older hypothesis holds at
    most one word earlier or later commits the newer hypothesis up to the run's end."""
    assert RUN_WORDS == 3
    assert agreed_words(["a", "b", "c", "d"], ["a", "b", "x"]) == 2                       # the prefix
    assert agreed_words(["listen", "poured", "two", "cup", "some"], ["liesen", "poured", "two", "cup"]) == 4
    assert agreed_words(["met", "tuesday", "in", "late", "october"], ["tuesday", "in", "late", "october"]) == 5
    assert agreed_words(["in", "late", "october"], ["met", "tuesday", "in", "late", "october"]) == 0   # 2 apart
    assert agreed_words(["q", "b", "c"], ["p", "b", "c"]) == 0                             # a run too short
    assert agreed_words(["a", "b", "c", "x", "y"], ["a", "b", "c", "z", "y"]) == 3


def test_a_growing_buffer_is_decoded_from_the_last_hypothesis_as_draft(model):
    """Each update of a buffer that only grew hands the decoder the last transcription's tokens as its
    draft; once the buffer is cut, the next update starts without one. The text is the same either way."""
    drafts = []
    real = model.transcribe

    class Spy:
        def transcribe(self, samples, options, **changes):
            drafts.append(changes["draft"])
            return real(samples, options, **changes)

    clip = load_audio(HELLO)
    live = LiveTranscriber(Spy(), vad=LiveTranscriber(model).vad)
    r = replay(live, clip)
    assert drafts[0] == () and all(drafts[1:3])             # the first has none; the next ones the last's
    assert score(model.transcribe(clip).text, r.text).wer <= 0.1
    live.buffer.samples, live.buffer.start = clip, live._draft_start + 1.0   # a cut: the last one no longer fits
    live._transcribe()
    assert drafts[-1] == ()
