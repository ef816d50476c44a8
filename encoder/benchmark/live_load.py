"""Several live streams at once against a real server, each sent at real-time pace.

A server process is started for the run (`python -m encoder.serve`); N clients each stream minutes
of speech (data/varied.ogg, each from a different starting point, wrapping round) over the /live
WebSocket in 0.1 s frames, timed as a microphone would deliver them. Measured per stream: the
audio the server says it received against what was sent, each committed word's latency (wall
time from the moment its end was sent to the arrival of the event committing it, queueing on a
busy server included), and the committed text's WER against the offline transcript of the same
audio (the server's /v1/audio/transcriptions). Measured on the server: resident memory every few
seconds, and the worker's busy time per second of audio.
"""
from __future__ import annotations

import json
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile
from websockets.sync.client import connect

from encoder.audio import load_audio
from encoder.benchmark.server_process import ServerProcess
from encoder.evaluation import score
from encoder.server import percentile
from kernels.frontend import SAMPLE_RATE

VARIED = Path(__file__).parent / "data" / "varied.ogg"
FRAME_SECONDS = 0.1
RSS_EVERY_SECONDS = 5.0


@dataclass
class StreamResult:
    sent_seconds: float
    received_seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    word_ends: list[float] = field(default_factory=list)     # seconds into the stream, as latencies
    text: str = ""
    offline: str = ""
    reason: str = ""
    errors: list[str] = field(default_factory=list)


def _stream(port: int, samples: np.ndarray, result: StreamResult) -> None:
    """Send `samples` at real-time pace; collect the events on a second thread."""
    pcm = (np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes()
    step = round(FRAME_SECONDS * SAMPLE_RATE) * 2
    with connect(f"ws://127.0.0.1:{port}/live", open_timeout=60, max_size=None) as ws:
        json.loads(ws.recv(timeout=60))                      # ready
        start = time.monotonic()

        def receive():
            for message in ws:
                event, now = json.loads(message), time.monotonic()
                if event["type"] == "committed":
                    result.latencies += [now - start - w["end"] for w in event["words"]]
                    result.word_ends += [w["end"] for w in event["words"]]
                elif event["type"] == "end":
                    result.text, result.received_seconds, result.reason = \
                        event["text"], event["received"], event["reason"]
                elif event["type"] == "error":
                    result.errors.append(event["message"])

        receiver = threading.Thread(target=receive)
        receiver.start()
        for i in range(0, len(pcm), step):
            ws.send(pcm[i:i + step])
            time.sleep(max(0.0, start + (i + step) / 2 / SAMPLE_RATE - time.monotonic()))
        ws.send(json.dumps({"type": "end"}))
        receiver.join()


def measure(model: str = "tiny.en", streams: int = 4, minutes: float = 5.0) -> dict:
    """Run the streams; the figures as one JSON-ready dict."""
    audio = load_audio(VARIED)
    n = round(minutes * 60 * SAMPLE_RATE)
    inputs = [np.resize(np.roll(audio, -i * len(audio) // streams), n) for i in range(streams)]
    server = ServerProcess("--model", model, "--live-streams", str(streams))
    try:
        results = [StreamResult(n / SAMPLE_RATE) for _ in range(streams)]
        rss, stop = [], threading.Event()

        def sample_rss():
            while not stop.wait(RSS_EVERY_SECONDS):
                rss.append(round(server.rss_mb(), 1))
        sampler = threading.Thread(target=sample_rss)
        rss0, busy0 = server.rss_mb(), server.status()["queue"]["busy_seconds"]
        sampler.start()
        clients = [threading.Thread(target=_stream, args=(server.port, x, r)) for x, r in zip(inputs, results)]
        for c in clients:
            c.start()
        for c in clients:
            c.join()
        stop.set()
        sampler.join()
        status = server.status()
        with tempfile.TemporaryDirectory() as tmp:
            for i, (x, r) in enumerate(zip(inputs, results)):
                path = Path(tmp) / f"stream{i}.wav"
                soundfile.write(str(path), x, SAMPLE_RATE)
                r.offline = server.transcribe(path)
    finally:
        server.stop()
    return _figures(results, rss0, rss, status, busy0, streams, minutes)


def _by_minute(results: list[StreamResult]) -> list[float]:
    """The median latency of the words spoken in each minute of the streams (is it steady?)."""
    minutes: dict[int, list[float]] = {}
    for r in results:
        for end, latency in zip(r.word_ends, r.latencies):
            minutes.setdefault(int(end // 60), []).append(latency)
    return [round(statistics.median(minutes[m]), 2) for m in sorted(minutes)]


def _figures(results: list[StreamResult], rss0: float, rss: list[float], status: dict, busy0: float,
             streams: int, minutes: float) -> dict:
    latencies = [x for r in results for x in r.latencies]
    wer = [round(score(r.offline, r.text).wer * 100, 2) for r in results]
    third = max(1, len(rss) // 3)
    return {
        "streams": streams, "minutes": minutes, "frame_seconds": FRAME_SECONDS,
        "received_equals_sent": all(abs(r.received_seconds - r.sent_seconds) < 1e-3 for r in results),
        "sent_seconds": [r.sent_seconds for r in results], "received_seconds": [r.received_seconds for r in results],
        "errors": [e for r in results for e in r.errors], "end_reasons": sorted({r.reason for r in results}),
        "latency_s": {"median": round(statistics.median(latencies), 2), "p95": round(percentile(latencies, 0.95), 2),
                      "max": round(max(latencies), 2),
                      "per_stream_p95": [round(percentile(r.latencies, 0.95), 2) for r in results],
                      "median_by_minute": _by_minute(results)},
        "wer_against_offline_pct": wer,
        "server_rss_mb": {"before": round(rss0, 1), "first_third_max": max(rss[:third], default=None),
                          "last_third_max": max(rss[-third:], default=None), "max": max(rss, default=None),
                          "samples": rss},
        "work_per_audio_second": round((status["queue"]["busy_seconds"] - busy0)
                                       / sum(r.received_seconds for r in results), 3),
    }
