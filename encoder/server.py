"""The transcription service: an ASGI app with one transcription worker and a bounded queue.

Endpoints: GET /health (no auth), GET /status, POST /transcribe, and the OpenAI audio API's
POST /v1/audio/transcriptions. `python -m encoder.serve` runs it (see serve.py).
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import hmac
import os
import queue
import re
import shutil
import statistics
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass, replace
from pathlib import Path

from encoder.errors import AmanuensisError, UndecodableAudio

VERSION = "0.1.0"
CHUNK = 1 << 16
_SAFE_SUFFIX = re.compile(r"^\.[A-Za-z0-9]{1,5}$")


@dataclass(frozen=True)
class ServerConfig:
    max_upload_bytes: int = 25 * 2**20
    queue_size: int = 8
    api_key: str | None = None
    timeout_s: float = 600.0


class ApiError(Exception):
    """An HTTP error with an OpenAI-style body."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", param=None, headers=None):
        super().__init__(message)
        self.status, self.message, self.kind, self.param, self.headers = status, message, kind, param, headers or {}


class Worker:
    """One thread runs jobs from a bounded queue, so the model is used by one request at a time."""

    def __init__(self, size: int):
        self.jobs: queue.Queue = queue.Queue(maxsize=size)
        self.thread = threading.Thread(target=self._loop, name="amanuensis-worker", daemon=True)
        self.thread.start()

    def submit(self, fn) -> concurrent.futures.Future:
        future: concurrent.futures.Future = concurrent.futures.Future()
        try:
            self.jobs.put_nowait((fn, future))
        except queue.Full:
            raise ApiError(503, "the transcription queue is full; retry later", "server_busy",
                           headers={"Retry-After": "5"}) from None
        return future

    def _loop(self) -> None:
        while True:
            fn, future = self.jobs.get()
            if future.set_running_or_notify_cancel():          # skipped if the request timed out
                try:
                    future.set_result(fn())
                except BaseException as e:  # delivered to the waiting request, never kills the worker
                    future.set_exception(e)

    @property
    def depth(self) -> int:
        return self.jobs.qsize()


class Counters:
    """Request counters and realtime factors for /status."""

    def __init__(self):
        self.lock = threading.Lock()
        self.requests = self.failures = 0
        self.audio_seconds = 0.0
        self.rtf: deque = deque(maxlen=1000)       # audio seconds per processing second
        self.started = time.time()

    def done(self, audio_s: float, processing_s: float) -> None:
        with self.lock:
            self.audio_seconds += audio_s
            if processing_s > 0:
                self.rtf.append(audio_s / processing_s)

    def snapshot(self) -> dict:
        with self.lock:
            rtf = sorted(self.rtf)
            return {"requests": self.requests, "failures": self.failures, "audio_seconds": round(self.audio_seconds, 3),
                    "median_rtf": round(statistics.median(rtf), 2) if rtf else None,
                    "p95_rtf": round(rtf[min(len(rtf) - 1, int(0.95 * len(rtf)))], 2) if rtf else None}


def _limited(receive, limit: int):
    """Wrap an ASGI receive so a body over `limit` bytes stops being read (413), whatever it claims."""
    seen = 0

    async def inner():
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise ApiError(413, f"upload exceeds the {limit // 2**20} MiB limit", param="file")
        return message
    return inner


class TranscriptionService:
    """Model, worker, counters and the request handlers (framework-free core)."""

    def __init__(self, model, config: ServerConfig):
        from kernels.xrt import detect

        self.model, self.config = model, config
        self.worker = Worker(config.queue_size)
        self.counters = Counters()
        self.npu_available, self.npu_reason = False, ""
        device, why = detect()
        self.npu_available, self.npu_reason = device is not None, why
        self.last_backends: dict[str, list[str]] = {}

    # ---- shared steps ------------------------------------------------------------------------
    def check_auth(self, headers) -> None:
        if self.config.api_key is None:
            return
        given = headers.get("authorization", "")
        expected = f"Bearer {self.config.api_key}"
        if not hmac.compare_digest(given.encode(), expected.encode()):
            raise ApiError(401, "missing or wrong API key (send 'Authorization: Bearer <key>')",
                           "authentication_error")

    async def read_upload(self, request) -> tuple[dict, Path]:
        """(form fields, path of the uploaded file in a fresh temp dir). The caller removes the dir."""
        from starlette.requests import Request

        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > self.config.max_upload_bytes:
            raise ApiError(413, f"upload exceeds the {self.config.max_upload_bytes // 2**20} MiB limit", param="file")
        limited = Request(request.scope, _limited(request.receive, self.config.max_upload_bytes))
        try:
            form = await limited.form(max_part_size=self.config.max_upload_bytes)
        except ApiError:
            raise
        except Exception as e:  # malformed multipart bodies raise assorted parser errors
            raise ApiError(400, f"could not read the multipart form ({type(e).__name__}: {e})") from None
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            await form.close()
            raise ApiError(400, "multipart field 'file' (the audio) is required", param="file")
        suffix = Path(upload.filename or "").suffix
        directory = Path(tempfile.mkdtemp(prefix="amanuensis-upload-"))
        path = directory / ("upload" + (suffix.lower() if _SAFE_SUFFIX.match(suffix) else ""))
        try:
            with open(path, "wb") as out:
                while chunk := await upload.read(CHUNK):
                    out.write(chunk)
            fields = {k: v for k, v in form.multi_items() if isinstance(v, str)}
            fields["timestamp_granularities"] = [v for k, v in form.multi_items() if k == "timestamp_granularities[]"]
        finally:
            await form.close()
        if path.stat().st_size == 0:
            shutil.rmtree(directory, ignore_errors=True)
            raise ApiError(400, "the uploaded file is empty", param="file")
        return fields, path

    async def transcribe(self, path: Path, options) -> dict:
        """Run one transcription on the worker, with the per-request timeout."""
        def job():
            return self.model.transcribe(path, options)

        future = self.worker.submit(job)
        started = time.perf_counter()
        try:
            result = await asyncio.wait_for(asyncio.wrap_future(future), self.config.timeout_s)
        except asyncio.TimeoutError:
            future.cancel()
            raise ApiError(504, f"transcription took longer than {self.config.timeout_s:g} s", "timeout") from None
        except UndecodableAudio as e:
            raise ApiError(415, f"not decodable audio: {_strip_path(str(e))}", param="file") from None
        except AmanuensisError as e:
            raise ApiError(400, _strip_path(str(e)), param="file") from None
        self.counters.done(result.get("duration", 0.0), time.perf_counter() - started)
        self.last_backends = _backends(result)
        return result

    def status(self) -> dict:
        backend = self.model.backend
        return {
            "status": "ready", "version": VERSION, "uptime_s": round(time.time() - self.counters.started, 1),
            "model": {"name": self.model.spec, "path": str(self.model.converted.path), "dims": self.model.dims.as_dict()},
            "device": {"backend": backend.name, "description": backend.describe(), "note": self.model.device_note,
                       "npu_available": self.npu_available, "npu_reason": self.npu_reason,
                       "npu": backend.status() if hasattr(backend, "status") else None},
            "decoder": self.model.describe_decoder(),
            "graph_backends": self.last_backends or {n.name: [backend.name] for n in self.model.graph.nodes},
            "counters": self.counters.snapshot(),
            "queue": {"depth": self.worker.depth, "capacity": self.config.queue_size},
        }


def _strip_path(message: str) -> str:
    """Errors name the server's temp file: say 'upload' instead."""
    return re.sub(r"[^\s'\"]*amanuensis-upload-[^/\s]*/upload(\.\w+)?", "upload", message)


def _backends(result: dict) -> dict:
    nodes: dict[str, set] = {}
    for window in result.get("encoder_profile", []):
        for row in window:
            nodes.setdefault(row["node"], set()).add(row["backend"])
    return {n: sorted(b) for n, b in nodes.items()}


def _error_body(e: ApiError) -> dict:
    return {"error": {"message": e.message, "type": e.kind, "param": e.param, "code": e.status}}


def _bool(value, name: str) -> bool:
    if value is None:
        return False
    if str(value).lower() in ("1", "true", "yes"):
        return True
    if str(value).lower() in ("0", "false", "no", ""):
        return False
    raise ApiError(400, f"{name} must be true or false", param=name)


def _options(fields: dict, *, prompt=None, temperature=None, words=False):
    from decoder.decoding import DecodingOptions
    from decoder.pipeline import TranscribeOptions

    language = fields.get("language") or None
    options = TranscribeOptions(decoding=DecodingOptions(language=language), initial_prompt=prompt, word_timestamps=words)
    if temperature is not None:
        try:
            t = float(temperature)
        except ValueError:
            raise ApiError(400, "temperature must be a number", param="temperature") from None
        if not 0 <= t <= 1:
            raise ApiError(400, "temperature must be between 0 and 1", param="temperature")
        steps = tuple(round(t + 0.2 * i, 2) for i in range(6) if t + 0.2 * i <= 1.0 + 1e-9)
        options = replace(options, temperatures=steps)
    return options


def create_app(service: TranscriptionService):
    """The Starlette application around `service`."""
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse, PlainTextResponse
    from starlette.routing import Route

    from encoder.writers import RENDER

    async def guarded(request, handler, needs_auth=True):
        try:
            if needs_auth:
                service.check_auth(request.headers)
            return await handler(request)
        except ApiError as e:
            if e.status >= 500 or e.status == 415 or e.status == 400:
                with service.counters.lock:
                    service.counters.failures += 1
            return JSONResponse(_error_body(e), status_code=e.status, headers=e.headers)
        except Exception as e:  # a bug: report it as JSON, keep serving
            with service.counters.lock:
                service.counters.failures += 1
            return JSONResponse(_error_body(ApiError(500, f"internal error: {type(e).__name__}", "server_error")),
                                status_code=500)

    async def with_upload(request, respond):
        with service.counters.lock:
            service.counters.requests += 1
        fields, path = await service.read_upload(request)
        try:
            return await respond(fields, path)
        finally:
            shutil.rmtree(path.parent, ignore_errors=True)

    async def health(request):
        return JSONResponse({"status": "ok"})

    async def status(request):
        return await guarded(request, lambda r: _json(service.status()))

    async def transcribe(request):
        async def respond(fields, path):
            fmt = fields.get("response_format", "json")
            if fmt not in ("json", "text", "srt", "vtt", "tsv"):
                raise ApiError(400, f"unknown response_format {fmt!r}", param="response_format")
            result = await service.transcribe(path, _options(fields, words=_bool(fields.get("word_timestamps"),
                                                                                   "word_timestamps")))
            if fmt != "json":
                return PlainTextResponse(RENDER["txt" if fmt == "text" else fmt](result))
            return JSONResponse({"text": result["text"].strip(), "language": result["language"],
                                 "duration": result["duration"], "processing_seconds": result["processing_seconds"],
                                 "segments": result["segments"], "backends": _backends(result)})
        return await guarded(request, lambda r: with_upload(r, respond))

    async def openai_transcriptions(request):
        async def respond(fields, path):
            fmt = fields.get("response_format", "json")
            if fmt not in ("json", "text", "srt", "vtt", "verbose_json"):
                raise ApiError(400, f"response_format must be json, text, srt, vtt or verbose_json, not {fmt!r}",
                               param="response_format")
            words = "word" in fields["timestamp_granularities"]
            result = await service.transcribe(path, _options(fields, prompt=fields.get("prompt") or None,
                                                              temperature=fields.get("temperature"), words=words))
            text = result["text"].strip()
            if fmt == "json":
                return JSONResponse({"text": text})
            if fmt == "text":
                return PlainTextResponse(text + "\n")
            if fmt in ("srt", "vtt"):
                return PlainTextResponse(RENDER[fmt](result))
            body = {"task": "transcribe", "language": result["language"], "duration": result["duration"], "text": text,
                    "segments": [{k: s[k] for k in ("id", "seek", "start", "end", "text", "tokens", "temperature",
                                                     "avg_logprob", "compression_ratio", "no_speech_prob")}
                                 for s in result["segments"]]}
            if words:
                body["words"] = [{"word": w["word"].strip(), "start": w["start"], "end": w["end"]}
                                 for s in result["segments"] for w in s.get("words", [])]
            return JSONResponse(body)
        return await guarded(request, lambda r: with_upload(r, respond))

    async def _json(body):
        return JSONResponse(body)

    return Starlette(routes=[
        Route("/health", health, methods=["GET"]),
        Route("/status", status, methods=["GET"]),
        Route("/transcribe", transcribe, methods=["POST"]),
        Route("/v1/audio/transcriptions", openai_transcriptions, methods=["POST"]),
    ])


def api_key_from_env(value: str | None) -> str | None:
    return value or os.environ.get("AMANUENSIS_API_KEY") or None
