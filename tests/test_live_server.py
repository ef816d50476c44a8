"""The server's live interfaces, called over the network: the /live WebSocket (real clips sent as
PCM frames, in real time where latency is checked) and stream=true on /v1/audio/transcriptions
(server-sent events); bad frames, limits and clients that leave."""
import json
import time
from pathlib import Path

import numpy as np
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from encoder.audio import load_audio
from encoder.evaluation import score
from kernels.frontend import SAMPLE_RATE
from tests.helpers import run_concurrently
from tests.server_process import KEY, Server, multipart

DATA = Path(__file__).parent / "data"
HELLO = DATA / "hello.wav"
LONG = Path(__file__).parents[1] / "encoder" / "benchmark" / "data" / "varied.ogg"     # 5 min of speech
FRAME_SECONDS = 0.1


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = Server(tmp_path_factory.mktemp("live-tmp"), "--api-key", KEY)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def strict(tmp_path_factory):
    """A server with small live limits (and no key)."""
    s = Server(tmp_path_factory.mktemp("strict-tmp"), "--live-streams", "1", "--live-max-seconds", "3",
               "--live-idle-seconds", "2")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def hello():
    return load_audio(HELLO)


@pytest.fixture(scope="module")
def offline(hello):
    """The command line's transcript of the project clip."""
    from encoder.model import load_model

    return load_model("tiny.en", device="cpu").transcribe(hello).text.strip()


def s16(samples: np.ndarray) -> bytes:
    return (np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes()


def frames(data: bytes, seconds: float, bytes_per_second: int) -> list[bytes]:
    step = round(seconds * bytes_per_second)
    return [data[i:i + step] for i in range(0, len(data), step)]


class Stream:
    """A /live client: the events it got and how the server closed."""

    def __init__(self, server: Server, query: str = "", key: str | None = KEY):
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.connection = connect(f"ws://127.0.0.1:{server.port}/live{query}", additional_headers=headers,
                                  open_timeout=30, max_size=None)
        self.events: list[dict] = []
        self.code = self.reason = None

    def __enter__(self) -> "Stream":
        self.socket = self.connection.__enter__()
        return self

    def __exit__(self, *exc):
        return self.connection.__exit__(*exc)

    def send(self, payloads, pace: float = 0.0, end: bool = True) -> "Stream":
        """Send binary payloads (one each `pace` seconds, 0: at once), then the end message."""
        start = time.monotonic()
        try:
            for i, payload in enumerate(payloads):
                self.socket.send(payload)
                if pace:
                    time.sleep(max(0.0, start + (i + 1) * pace - time.monotonic()))
            if end:
                self.socket.send(json.dumps({"type": "end"}))
        except ConnectionClosed:
            pass                                        # the server closed first: its events say why
        return self

    def drain(self, timeout: float = 120) -> "Stream":
        """Every event until the server closes."""
        try:
            while True:
                self.events.append(json.loads(self.socket.recv(timeout=timeout)))
        except ConnectionClosed as e:
            self.code, self.reason = (e.rcvd.code, e.rcvd.reason) if e.rcvd else (None, None)
        return self

    def of(self, kind: str) -> list[dict]:
        return [e for e in self.events if e["type"] == kind]


def check_stream(stream: Stream, expected_text: str, seconds: float) -> None:
    """A whole stream: ready first, end last with every committed word and all the audio sent."""
    assert stream.events[0]["type"] == "ready" and stream.events[-1]["type"] == "end", stream.events
    end = stream.events[-1]
    assert end["reason"] == "the client ended the stream" and stream.code == 1000
    assert end["received"] == pytest.approx(seconds, abs=1e-3)                    # no audio dropped
    committed = "".join(e["text"] for e in stream.of("committed")).strip()
    assert committed == end["text"] and score(expected_text, committed).wer <= 0.1, (committed, expected_text)
    starts = [w["start"] for e in stream.of("committed") for w in e["words"]]
    assert starts == sorted(starts) and not stream.of("error")


def errors(reference: str, text: str) -> int:
    s = score(reference, text)
    return s.substitutions + s.deletions + s.insertions


def live_status(server: Server, key=None) -> dict:
    return json.loads(server.get("/status", key)[1])["live"]


def test_a_clip_streamed_in_real_time(server, hello, offline):
    """The project clip at real-time pace in 0.1 s frames: every word committed once, in order, as
    offline, most of them while the audio is still arriving (how soon depends on the machine's
    speed: a slower one makes fewer, longer updates)."""
    with Stream(server) as stream:
        stream.send(frames(s16(hello), FRAME_SECONDS, 2 * SAMPLE_RATE), pace=FRAME_SECONDS).drain()
    seconds = len(hello) / SAMPLE_RATE
    check_stream(stream, offline, seconds)
    delays = [e["received"] - w["end"] for e in stream.of("committed") for w in e["words"]]
    early = [e for e in stream.of("committed") if e["received"] < seconds - 1.0]
    assert early and np.median(delays) <= 4.0, delays
    assert any(e["text"] for e in stream.of("partial"))
    status = live_status(server, KEY)
    assert status["streams"] == 0 and status["ended"] >= 1 and status["audio_seconds"] >= 9


def test_other_rates_and_float_samples(server, hello, offline):
    """48 kHz float32 frames are resampled: the same words; the audio received is counted at the
    client's rate."""
    import soxr

    at48 = soxr.resample(hello, SAMPLE_RATE, 48000).astype("<f4")
    with Stream(server, "?sample_rate=48000&encoding=pcm_f32le") as stream:
        stream.send(frames(at48.tobytes(), 0.25, 4 * 48000)).drain()
    assert stream.events[0]["sample_rate"] == 48000
    check_stream(stream, offline, len(at48) / 48000)


@pytest.mark.parametrize("query, key, payloads, code, words, param", [
    ("", KEY, [b"\x01\x02\x03"], 1007, "not whole pcm_s16le samples", None),
    ("?encoding=pcm_f32le", KEY, [np.array([0.1, np.nan], "<f4").tobytes()], 1007, "not finite", None),
    ("", KEY, ["hello"], 1003, "a text frame must be", None),
    ("", KEY, [json.dumps({"type": "pause"})], 1003, "a text frame must be", None),
    ("", KEY, [b"\0" * (2**20 + 2)], 1009, "exceeds the 1048576 byte limit", None),
    ("?encoding=mp3", KEY, [], 1008, "encoding must be", "encoding"),
    ("?sample_rate=4000", KEY, [], 1008, "sample_rate must be", "sample_rate"),
    ("?language=klingon", KEY, [], 1008, "klingon", "language"),
    ("", "wrong-key", [], 1008, "API key", None),
    ("", None, [], 1008, "API key", None),
])
def test_bad_streams_get_an_error_event_and_a_clean_close(server, query, key, payloads, code, words, param):
    with Stream(server, query, key) as stream:
        stream.send(payloads, end=False).drain()
    errors = stream.of("error")
    assert len(errors) == 1 and words in errors[0]["message"] and errors[0]["param"] == param, stream.events
    assert stream.events[-1]["type"] == "error" and stream.code == code
    assert server.healthy() and live_status(server, KEY)["streams"] == 0


def test_limits_end_a_stream_with_a_reason(strict, hello):
    """Past the audio limit the stream is ended: what was heard is committed, the reason is said."""
    with Stream(strict, key=None) as stream:
        stream.send(frames(s16(hello), FRAME_SECONDS, 2 * SAMPLE_RATE), end=False).drain()
    end = stream.events[-1]
    assert end["type"] == "end" and "reached the 3 s limit" in end["reason"] and stream.code == 1008
    assert 3.0 <= end["received"] <= 3.0 + FRAME_SECONDS + 1e-6
    assert end["text"].split()[:2] == ["The", "quick"], end

    with Stream(strict, key=None) as idle:
        idle.send(frames(s16(hello[:SAMPLE_RATE]), FRAME_SECONDS, 2 * SAMPLE_RATE), end=False).drain()
    assert idle.events[-1]["type"] == "end" and "no audio for 2 s" in idle.events[-1]["reason"]
    assert idle.events[-1]["received"] == pytest.approx(1.0) and idle.code == 1008


def test_stream_count_limit_and_clients_that_leave(strict, hello):
    """One stream at a time: a second is refused with 'retry later' (1013); a client that vanishes
    mid-stream frees its place."""
    with Stream(strict, key=None) as first:
        first.send(frames(s16(hello[:2 * SAMPLE_RATE]), FRAME_SECONDS, 2 * SAMPLE_RATE), end=False)
        assert json.loads(first.socket.recv(timeout=30))["type"] == "ready"
        with Stream(strict, key=None) as second:
            second.drain()
        assert "retry later" in second.of("error")[0]["message"] and second.code == 1013
        ended = live_status(strict)["ended"]
        first.socket.socket.close()                    # gone without a close handshake
    deadline = time.time() + 60
    while live_status(strict)["streams"] and time.time() < deadline:
        time.sleep(0.2)
    assert live_status(strict) | {"audio_seconds": 0} == {"streams": 0, "capacity": 1, "ended": ended + 1,
                                                          "audio_seconds": 0}
    with Stream(strict, key=None) as third:
        third.send(frames(s16(hello[:2 * SAMPLE_RATE]), 0.5, 2 * SAMPLE_RATE)).drain()
    assert third.events[-1]["type"] == "end" and third.code == 1000
    assert strict.healthy()


def sse_events(body: bytes) -> list[dict]:
    lines = body.decode().split("\n\n")
    assert all(not chunk or chunk.startswith("data: ") for chunk in lines), body[:200]
    return [json.loads(chunk[len("data: "):]) for chunk in lines if chunk]


def test_openai_streaming_events(server, offline):
    """stream=true: transcript.text.delta events that add up to transcript.text.done's text, which is
    the text of the same request without stream."""
    code, body, headers = server.post("/v1/audio/transcriptions", {"model": "whisper-1", "stream": "true"},
                                      HELLO.read_bytes())
    assert code == 200 and headers["content-type"].startswith("text/event-stream")
    events = sse_events(body)
    deltas, done = events[:-1], events[-1]
    assert deltas and all(e["type"] == "transcript.text.delta" for e in deltas)
    assert done["type"] == "transcript.text.done" and done["text"] == offline
    assert "".join(e["delta"] for e in deltas).strip() == done["text"]
    assert done["usage"] == {"type": "duration", "seconds": pytest.approx(9.623, abs=0.01)}
    plain = json.loads(server.post("/v1/audio/transcriptions", {"model": "whisper-1"}, HELLO.read_bytes())[1])
    assert plain["text"] == done["text"]


def test_openai_streaming_long_audio_with_vad(server):
    """Several deltas over minutes of speech, in order, with and without VAD."""
    texts = []
    for vad in ("false", "true"):
        code, body, _ = server.post("/v1/audio/transcriptions", {"stream": "true", "vad": vad}, LONG.read_bytes())
        events = sse_events(body)
        assert code == 200 and len(events) >= 3 and events[-1]["type"] == "transcript.text.done"
        assert "".join(e["delta"] for e in events[:-1]).strip() == events[-1]["text"]
        texts.append(events[-1]["text"])
    assert len(texts[0].split()) > 500 and score(texts[0], texts[1]).wer <= 0.1


def test_openai_streaming_refusals_are_plain_errors(server):
    """Problems found before the first event are the usual JSON errors with their status."""
    code, body, _ = server.post("/v1/audio/transcriptions", {"stream": "true", "response_format": "srt"},
                                HELLO.read_bytes())
    assert code == 400 and json.loads(body)["error"]["param"] == "stream"
    code, body, _ = server.post("/v1/audio/transcriptions", {"stream": "true"}, b"not audio\n" * 100, filename="a.mp3")
    assert code == 415 and json.loads(body)["error"]["param"] == "file"
    code, body, _ = server.post("/v1/audio/transcriptions", {"stream": "maybe"}, HELLO.read_bytes())
    assert code == 400 and json.loads(body)["error"]["param"] == "stream"
    assert server.post("/v1/audio/transcriptions", {"stream": "true"}, HELLO.read_bytes(), key=None)[0] == 401
    assert not list(server.tmp.glob("amanuensis-upload-*"))


def test_a_client_that_leaves_a_streamed_transcription_ends_it(server):
    """Minutes of audio streamed; the client reads the first delta and hangs up: the transcription
    stops at its next window (counted as abandoned), the upload is removed, the server serves on."""
    import http.client

    before = json.loads(server.get("/status", KEY)[1])["counters"]["abandoned"]
    body, ctype = multipart({"stream": "true"}, LONG.read_bytes(), "long.ogg")
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
    conn.request("POST", "/v1/audio/transcriptions", body, {"Content-Type": ctype, "Authorization": f"Bearer {KEY}"})
    response = conn.getresponse()
    assert response.status == 200 and response.readline().startswith(b"data: ")
    conn.sock.close()
    conn.close()
    deadline = time.time() + 120
    while json.loads(server.get("/status", KEY)[1])["counters"]["abandoned"] == before and time.time() < deadline:
        time.sleep(0.2)
    assert json.loads(server.get("/status", KEY)[1])["counters"]["abandoned"] == before + 1
    assert not list(server.tmp.glob("amanuensis-upload-*")) and server.healthy()


@pytest.mark.slow
def test_four_streams_at_once_in_real_time(server, speech):
    """Four real clips streamed at once, each at real-time pace: each stream's committed text within
    2 points of WER of the clip's offline transcript, and no audio dropped."""
    from encoder.model import load_model

    model = load_model("tiny.en", device="cpu")
    clips = speech[:4]
    results = {}

    def client(i):
        audio = load_audio(clips[i].path)
        with Stream(server) as stream:
            stream.send(frames(s16(audio), FRAME_SECONDS, 2 * SAMPLE_RATE), pace=FRAME_SECONDS).drain()
        results[i] = (stream, len(audio) / SAMPLE_RATE)

    run_concurrently(client, 4)
    live = offline = words = 0
    for i, clip in enumerate(clips):
        stream, seconds = results[i]
        end = stream.events[-1]
        assert end["type"] == "end" and end["received"] == pytest.approx(seconds, abs=1e-3), end
        live += errors(clip.text, end["text"])
        offline += errors(clip.text, model.transcribe(clip.path).text)
        words += score(clip.text, end["text"]).words
    assert live / words <= offline / words + 0.02, (live, offline, words)
    assert live_status(server, KEY)["streams"] == 0
