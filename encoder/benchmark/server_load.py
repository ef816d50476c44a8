"""Concurrent clients against a real server (`python -m encoder.serve`, default options).

One client first sends each clip once, one request after another: the transcripts of record and
the throughput of one client. Then `clients` clients each send `requests` clips at once (client c
sends clips c·requests, c·requests + 1, ... round the list), every request on its own connection
as the OpenAI clients do. Measured: failures (any status but 200), throughput (requests per second
of wall time) against one client's, each request's latency, and how many answers equal the one
client's transcript of the same clip (batched decoding rounds differently now and then).
"""
from __future__ import annotations

import statistics
import threading
import time
from pathlib import Path

from encoder.benchmark.server_process import ServerProcess
from encoder.server import percentile

SERVER_REQUESTS = 4            # requests per client in the concurrent run


def measure(model: str, clips: list[Path], clients: int = 16, requests: int = SERVER_REQUESTS,
            env: dict | None = None) -> dict:
    """The figures of one run, JSON-ready; `env`: the server's environment (its threads)."""
    server = ServerProcess("--model", model, env=env)
    try:
        server.transcribe(clips[0])                               # warm: first request loads the decoder
        start = time.perf_counter()
        alone = {clip: server.transcribe(clip) for clip in clips}
        one_client_s = time.perf_counter() - start
        work = [[clips[(c * requests + j) % len(clips)] for j in range(requests)] for c in range(clients)]
        answers: list[tuple[Path, str | None, float, str]] = []
        lock = threading.Lock()

        def client(own: list[Path]) -> None:
            for clip in own:
                began = time.perf_counter()
                try:
                    text, error = server.transcribe(clip), ""
                except (RuntimeError, OSError) as e:
                    text, error = None, str(e)
                with lock:
                    answers.append((clip, text, time.perf_counter() - began, error))

        threads_ = [threading.Thread(target=client, args=(own,)) for own in work]
        start = time.perf_counter()
        for t in threads_:
            t.start()
        for t in threads_:
            t.join()
        together_s = time.perf_counter() - start
        status = server.status()
    finally:
        server.stop()
    return _figures(alone, one_client_s, answers, together_s, clients, requests, status)


def _figures(alone: dict, one_client_s: float, answers: list, together_s: float, clients: int, requests: int,
             status: dict) -> dict:
    latencies = [a[2] for a in answers if a[1] is not None]
    one = len(alone) / one_client_s
    many = len(latencies) / together_s
    return {
        "clients": clients, "requests_per_client": requests, "clips": len(alone),
        "one_client": {"requests": len(alone), "wall_s": round(one_client_s, 2),
                       "requests_per_s": round(one, 3)},
        "concurrent": {"requests": len(answers), "wall_s": round(together_s, 2), "requests_per_s": round(many, 3),
                       "failures": sum(a[1] is None for a in answers),
                       "errors": sorted({a[3] for a in answers if a[3]})[:5],
                       "latency_s": {"p50": round(statistics.median(latencies), 2) if latencies else None,
                                     "p95": round(percentile(latencies, 0.95), 2) if latencies else None},
                       "same_as_one_client": sum(a[1] == alone[a[0]] for a in answers)},
        "throughput_ratio": round(many / one, 2),
        "server_queue": {k: status["queue"].get(k) for k in ("capacity", "batch", "rounds", "requests_per_round")},
    }
