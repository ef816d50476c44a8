"""The transcription service: an ASGI app with one transcription worker and a bounded queue.

Endpoints: GET /health (no auth), GET /status, POST /transcribe, the OpenAI audio API's
POST /v1/audio/transcriptions (with stream=true: server-sent events), and the WebSocket /live
(encoder.live_socket). Every error is an OpenAI-style JSON body, and every request is logged in
one line (logger "amanuensis.server"). `python -m encoder.serve` runs it.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import hmac
import json
import logging
import re
import shutil
import statistics
import tempfile
import threading
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path

from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.routing import Route, WebSocketRoute

from decoder.options import BATCH_SIZE, DecodingOptions, TranscribeOptions, temperature_ladder
from encoder.live_socket import LiveLimits, serve_live
from encoder.results import Transcription
from encoder.transcription import Job
from encoder.version import VERSION
from encoder.writers import RENDER
from kernels.errors import AmanuensisError, BadAudio, BadOption, UndecodableAudio
from kernels.settings import parse_bool
from kernels.xrt import detect

CHUNK = 1 << 16
_SAFE_SUFFIX = re.compile(r"^\.[A-Za-z0-9]{1,5}$")
log = logging.getLogger("amanuensis.server")


@dataclass(frozen=True)
class ServerConfig:
    max_upload_bytes: int = 25 * 2**20
    queue_size: int = 32                 # requests waiting at most (16 concurrent clients all wait their turn)
    api_key: str | None = None
    timeout_s: float = 600.0
    batch_size: int = BATCH_SIZE         # requests run together
    live: LiveLimits = LiveLimits()


class ApiError(Exception):
    """An HTTP error with an OpenAI-style body."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", param=None, headers=None):
        super().__init__(message)
        self.status, self.message, self.kind, self.param, self.headers = status, message, kind, param, headers or {}

    def response(self) -> JSONResponse:
        body = {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.status}}
        return JSONResponse(body, status_code=self.status, headers=self.headers)


class Worker:
    """One thread does all the model work. Each round first runs the waiting calls (live streams'
    updates: short, and late when they wait), then takes every waiting request (up to `batch`) and
    runs them together, their windows decoded in batches (encoder.batching), answering each request
    as its own transcription ends; whatever arrives meanwhile waits for the next round."""

    def __init__(self, size: int, batch: int, run_many):
        self.size, self.batch, self.run_many = size, batch, run_many
        self.ready = threading.Condition()
        self.jobs: deque = deque()                 # (job, future), at most `size`
        self.calls: deque = deque()                # (function, future): at most one per live stream
        self.busy_seconds = 0.0                    # time spent running rounds
        self.rounds = self.run = 0                 # rounds, and requests they ran
        self.thread = threading.Thread(target=self._loop, name="amanuensis-worker", daemon=True)
        self.thread.start()

    def submit(self, job) -> concurrent.futures.Future:
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self.ready:
            if len(self.jobs) >= self.size:
                raise ApiError(503, "the transcription queue is full; retry later", "server_busy",
                               headers={"Retry-After": "5"})
            self.jobs.append((job, future))
            self.ready.notify()
        return future

    def call(self, function) -> concurrent.futures.Future:
        """Run `function()` on the worker thread, before the next round of requests."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self.ready:
            self.calls.append((function, future))
            self.ready.notify()
        return future

    def _loop(self) -> None:
        while True:
            with self.ready:
                self.ready.wait_for(lambda: self.jobs or self.calls)
                calls = [self.calls.popleft() for _ in range(len(self.calls))]
                waiting = [self.jobs.popleft() for _ in range(min(self.batch, len(self.jobs)))]
            started = time.perf_counter()
            for function, future in calls:
                if future.set_running_or_notify_cancel():
                    _settle(future, function)
            live = [(job, f) for job, f in waiting if f.set_running_or_notify_cancel()]   # timed out: skipped
            if live:
                self._round(live)
                self.rounds, self.run = self.rounds + 1, self.run + len(live)
            self.busy_seconds += time.perf_counter() - started

    def _round(self, live: list) -> None:
        try:
            for i, result in self.run_many([job for job, _ in live]):
                if isinstance(result, BaseException):
                    live[i][1].set_exception(result)
                else:
                    live[i][1].set_result(result)
        except BaseException as e:  # delivered to the waiting requests, never kills the worker
            for _, future in live:
                if not future.done():
                    future.set_exception(e)

    @property
    def depth(self) -> int:
        return len(self.jobs)


def _settle(future: concurrent.futures.Future, function) -> None:
    try:
        future.set_result(function())
    except BaseException as e:  # delivered to the caller, never kills the worker
        future.set_exception(e)


def percentile(values, q: float) -> float | None:
    """The q-quantile of `values` (the median for 0.5: the mean of the middle two of an even count)."""
    ordered = sorted(values)
    if not ordered:
        return None
    return round(statistics.median(ordered) if q == 0.5 else ordered[min(len(ordered) - 1, int(q * len(ordered)))], 4)


class Counters:
    """Request counters, realtime factors, latencies and throughput for /status (the last 1000 requests)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.requests = self.failures = 0
        self.abandoned = 0                         # streamed transcriptions ended early: client gone, timed out
        self.audio_seconds = 0.0
        self.rtf: deque = deque(maxlen=1000)       # seconds of transcription per second of audio
        self.latency: deque = deque(maxlen=1000)   # seconds from submission to answer (waiting included)
        self.started = time.time()
        self.live_streams = 0
        self.live_seconds = 0.0                    # audio received by ended live streams

    def live_done(self, seconds: float) -> None:
        with self.lock:
            self.live_streams += 1
            self.live_seconds += seconds

    def done(self, audio_s: float, latency_s: float, processing_s: float | None = None) -> None:
        with self.lock:
            self.audio_seconds += audio_s
            self.latency.append(latency_s)
            if audio_s > 0:
                self.rtf.append((latency_s if processing_s is None else processing_s) / audio_s)

    def failed(self) -> None:
        with self.lock:
            self.failures += 1

    def snapshot(self, busy_seconds: float = 0.0) -> dict:
        with self.lock:
            return {"requests": self.requests, "failures": self.failures, "abandoned": self.abandoned,
                    "audio_seconds": round(self.audio_seconds, 3),
                    "realtime_factor": {
                        "definition": "seconds of processing per second of audio (below 1: faster than real time); "
                                      "requests run together share their processing time",
                        "median": percentile(self.rtf, 0.5), "p95": percentile(self.rtf, 0.95)},
                    "latency_seconds": {"definition": "from the request's submission to its answer, waiting included",
                                        "p50": percentile(self.latency, 0.5), "p95": percentile(self.latency, 0.95)},
                    "throughput": {"definition": "seconds of audio transcribed per second the worker was busy",
                                   "audio_seconds_per_second": round(self.audio_seconds / busy_seconds, 3)
                                   if busy_seconds > 0 else None}}


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


class RequestLog:
    """ASGI middleware: a request id on every answer (X-Request-Id) and one log line per request:
    id, method and path, status, audio seconds (where there was audio) and processing seconds."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        request_id, status, started = uuid.uuid4().hex[:12], 500, time.perf_counter()
        state = scope.setdefault("state", {})

        async def send_with_id(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            audio = state.get("audio_seconds")
            log.info("request %s %s %s %d audio %s processing %.3f s", request_id, scope["method"], scope["path"],
                     status, "-" if audio is None else f"{audio:.2f} s", time.perf_counter() - started)


class TranscriptionService:
    """Model, worker, counters and the request handlers (framework-free core)."""

    def __init__(self, model, config: ServerConfig):
        self.model, self.config = model, config
        self.worker = Worker(config.queue_size, config.batch_size, model.transcriber.transcribe_many)
        self.counters = Counters()
        device, why = detect()
        self.npu_available, self.npu_reason = device is not None, why
        self.last_backends: dict[str, list[str]] = {}
        self.live_streams = 0                      # live streams running (changed on the event loop only)

    # ---- shared steps ------------------------------------------------------------------------
    def authorized(self, headers) -> bool:
        if self.config.api_key is None:
            return True
        given = headers.get("authorization", "")
        return hmac.compare_digest(given.encode(), f"Bearer {self.config.api_key}".encode())

    def check_auth(self, headers) -> None:
        if not self.authorized(headers):
            raise ApiError(401, "missing or wrong API key (send 'Authorization: Bearer <key>')",
                           "authentication_error")

    async def read_upload(self, request: Request) -> tuple[dict, Path]:
        """(form fields, path of the uploaded file in a fresh temp dir). The caller removes the dir."""
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

    async def transcribe(self, path: Path, options: TranscribeOptions) -> Transcription:
        """Run one transcription on the worker, with the per-request timeout."""
        future = self.worker.submit((path, options))
        started = time.perf_counter()
        try:
            result = await asyncio.wait_for(asyncio.wrap_future(future), self.config.timeout_s)
        except asyncio.TimeoutError:
            future.cancel()
            raise ApiError(504, f"transcription took longer than {self.config.timeout_s:g} s", "timeout") from None
        except AmanuensisError as e:
            raise _api_error(e) from None
        self.counters.done(result.duration, time.perf_counter() - started, result.processing_seconds)
        self.last_backends = result.provenance.encoder_nodes
        return result

    async def transcription_events(self, path: Path, options: TranscribeOptions) -> AsyncIterator[dict]:
        """The transcription as OpenAI's streaming events: a transcript.text.delta per group of segments
        as they become final, then transcript.text.done. A failure before the first event raises
        ApiError (the request gets its usual error answer); the per-request timeout holds throughout;
        closing the iterator (the client went away) ends the transcription at its next window."""
        loop = asyncio.get_running_loop()
        segments = _SegmentFeed(loop)
        future = self.worker.submit(Job(path, options, segments))
        future.add_done_callback(lambda _: loop.call_soon_threadsafe(segments.queue.put_nowait, None))
        future.add_done_callback(self._count_abandoned)
        started, said = time.perf_counter(), ""
        try:
            while (texts := await self._next(segments.queue, started)) is not None:
                delta = "".join(texts)
                delta = delta.lstrip() if not said else delta
                if delta:
                    said += delta
                    yield {"type": "transcript.text.delta", "delta": delta}
            try:
                result = future.result()
            except AmanuensisError as e:
                raise _api_error(e) from None
            self.counters.done(result.duration, time.perf_counter() - started, result.processing_seconds)
            self.last_backends = result.provenance.encoder_nodes
            yield {"type": "transcript.text.done", "text": result.text.strip(),
                   "usage": {"type": "duration", "seconds": result.duration}}
        finally:
            segments.closed = True
            future.cancel()

    def _count_abandoned(self, future) -> None:
        if not future.cancelled() and isinstance(future.exception(), StreamClosed):
            with self.counters.lock:
                self.counters.abandoned += 1

    async def _next(self, queue: asyncio.Queue, started: float) -> list[str] | None:
        try:
            return await asyncio.wait_for(queue.get(), self.config.timeout_s - (time.perf_counter() - started))
        except asyncio.TimeoutError:
            raise ApiError(504, f"transcription took longer than {self.config.timeout_s:g} s", "timeout") from None

    def status(self) -> dict:
        backend, w = self.model.backend, self.worker
        return {
            "status": "ready", "version": VERSION, "uptime_s": round(time.time() - self.counters.started, 1),
            "model": {"name": self.model.spec, "path": str(self.model.converted.path),
                      "dims": self.model.dims.as_dict()},
            "device": {"backend": backend.name, "description": backend.describe(), "note": self.model.device_note,
                       "npu_available": self.npu_available, "npu_reason": self.npu_reason, "npu": backend.status()},
            "decoder": self.model.describe_decoder(),
            "graph_backends": self.last_backends or {n.name: [backend.name] for n in self.model.graph.nodes},
            "counters": self.counters.snapshot(self.worker.busy_seconds),
            "queue": {"depth": self.worker.depth, "capacity": self.config.queue_size,
                      "batch": self.config.batch_size, "rounds": w.rounds, "busy_seconds": round(w.busy_seconds, 3),
                      "requests_per_round": round(w.run / w.rounds, 2) if w.rounds else None},
            "live": {"streams": self.live_streams, "capacity": self.config.live.streams,
                     "ended": self.counters.live_streams, "audio_seconds": round(self.counters.live_seconds, 3)},
        }


class StreamClosed(AmanuensisError):
    """The client of a streamed transcription went away."""


class _SegmentFeed:
    """Job.on_segments of a streamed transcription: hands segment texts from the worker thread to
    the event loop; once `closed`, ends the transcription."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop, self.queue, self.closed = loop, asyncio.Queue(), False

    def __call__(self, segments) -> None:
        if self.closed:
            raise StreamClosed("the client closed the stream")
        if segments:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, [s.text for s in segments])


def _sse(events: AsyncIterator[dict], first: dict, request: Request, upload: Path) -> StreamingResponse:
    """Server-sent events: `first`, then the rest; an error after the first is sent as an error event.
    The upload's directory is removed when the stream ends, however it ends."""
    def remove():
        shutil.rmtree(upload, ignore_errors=True)

    async def body():
        try:
            yield f"data: {json.dumps(first)}\n\n"
            async for event in events:
                if event["type"] == "transcript.text.done":
                    request.state.audio_seconds = event["usage"]["seconds"]
                yield f"data: {json.dumps(event)}\n\n"
        except ApiError as e:
            yield _error_event(e)
        except Exception as e:  # a bug: reported in the stream, the server keeps serving
            log.exception("internal error in a streamed transcription")
            yield _error_event(ApiError(500, f"internal error: {type(e).__name__}", "server_error"))
        finally:
            await events.aclose()
            remove()
    return StreamingResponse(body(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"},
                             background=BackgroundTask(remove))


def _error_event(error: ApiError) -> str:
    return f"data: {json.dumps({'type': 'error', 'error': json.loads(error.response().body)['error']})}\n\n"


def _strip_path(message: str) -> str:
    """Errors name the server's temp file: say 'upload' instead."""
    return re.sub(r"[^\s'\"]*amanuensis-upload-[^/\s]*/upload(\.\w+)?", "upload", message)


def _api_error(e: AmanuensisError) -> ApiError:
    """The HTTP answer to a user error: the option it names, the audio, or (anything else, such as
    --strict refusing a fallback) the server's own failure."""
    message = _strip_path(str(e))
    if isinstance(e, BadOption):
        return ApiError(400, message, param=e.option)
    if isinstance(e, UndecodableAudio):
        return ApiError(415, f"not decodable audio: {message}", param="file")
    if isinstance(e, BadAudio):
        return ApiError(400, message, param="file")
    return ApiError(500, message, "server_error")


def _bool(fields: dict, name: str) -> bool:
    try:
        return parse_bool(fields.get(name) or "")
    except ValueError:
        raise ApiError(400, f"{name} must be true or false", param=name) from None


def _options(fields: dict, *, prompt=None, temperature=None, words=False) -> TranscribeOptions:
    vad = _bool(fields, "vad") if fields.get("vad") else TranscribeOptions.vad
    try:
        options = TranscribeOptions(decoding=DecodingOptions(language=fields.get("language") or None),
                                    initial_prompt=prompt, word_timestamps=words, vad=vad)
        if temperature is None:
            return options
        try:
            first = float(temperature)
        except ValueError:
            raise BadOption("temperature", "temperature must be a number") from None
        return replace(options, temperatures=temperature_ladder(first))
    except BadOption as e:
        raise _api_error(e) from None


def _verbose_json(result: Transcription, words: bool) -> dict:
    keys = ("id", "seek", "start", "end", "text", "tokens", "temperature", "avg_logprob", "compression_ratio",
            "no_speech_prob")
    body = {"task": "transcribe", "language": result.language, "duration": result.duration,
            "text": result.text.strip(), "segments": [{k: getattr(s, k) for k in keys} for s in result.segments]}
    if words:
        body["words"] = [{"word": w.word.strip(), "start": w.start, "end": w.end} for w in result.words]
    return body


def create_app(service: TranscriptionService) -> Starlette:
    """The Starlette application around `service`."""

    async def guarded(request, handler, needs_auth=True):
        try:
            if needs_auth:
                service.check_auth(request.headers)
            return await handler(request)
        except ApiError as e:
            if e.status >= 500 or e.status in (400, 415):
                service.counters.failed()
            return e.response()
        except Exception as e:  # a bug: report it as JSON, keep serving
            service.counters.failed()
            log.exception("internal error")
            return ApiError(500, f"internal error: {type(e).__name__}", "server_error").response()

    async def with_upload(request, respond):
        with service.counters.lock:
            service.counters.requests += 1
        fields, path = await service.read_upload(request)
        result = None
        try:
            result = await respond(fields, path)
        finally:
            if not isinstance(result, StreamingResponse):          # a stream removes it when it ends
                shutil.rmtree(path.parent, ignore_errors=True)
        return result

    async def transcribed(request, path, options) -> Transcription:
        result = await service.transcribe(path, options)
        request.state.audio_seconds = result.duration
        return result

    async def health(request):
        return JSONResponse({"status": "ok"})

    async def status(request):
        async def respond(_):
            return JSONResponse(service.status())
        return await guarded(request, respond)

    async def transcribe(request):
        async def respond(fields, path):
            fmt = fields.get("response_format", "json")
            if fmt not in ("json", "text", "srt", "vtt", "tsv"):
                raise ApiError(400, f"unknown response_format {fmt!r}", param="response_format")
            words = _bool(fields, "word_timestamps")
            result = await transcribed(request, path, _options(fields, words=words))
            if fmt != "json":
                return PlainTextResponse(RENDER["txt" if fmt == "text" else fmt](result))
            return JSONResponse({"text": result.text.strip(), "language": result.language,
                                 "duration": result.duration, "processing_seconds": result.processing_seconds,
                                 "segments": [s.to_dict() for s in result.segments],
                                 "backends": result.provenance.encoder_nodes})
        return await guarded(request, lambda r: with_upload(r, respond))

    async def openai_transcriptions(request):
        async def respond(fields, path):
            fmt = fields.get("response_format", "json")
            if fmt not in ("json", "text", "srt", "vtt", "verbose_json"):
                raise ApiError(400, f"response_format must be json, text, srt, vtt or verbose_json, not {fmt!r}",
                               param="response_format")
            words = "word" in fields["timestamp_granularities"]
            options = _options(fields, prompt=fields.get("prompt") or None, temperature=fields.get("temperature"),
                               words=words)
            if _bool(fields, "stream"):
                if fmt not in ("json", "text"):
                    raise ApiError(400, f"stream=true answers with events: response_format must be json or text, "
                                        f"not {fmt!r}", param="stream")
                events = service.transcription_events(path, options)
                return _sse(events, await anext(events), request, path.parent)
            result = await transcribed(request, path, options)
            text = result.text.strip()
            if fmt == "json":
                return JSONResponse({"text": text})
            if fmt == "text":
                return PlainTextResponse(text + "\n")
            if fmt in ("srt", "vtt"):
                return PlainTextResponse(RENDER[fmt](result))
            return JSONResponse(_verbose_json(result, words))
        return await guarded(request, lambda r: with_upload(r, respond))

    async def http_error(request, exc: HTTPException):
        """404, 405 and the like as the OpenAI-style JSON every other error is."""
        error = ApiError(exc.status_code, f"{exc.detail}: {request.method} {request.url.path}", headers=exc.headers)
        return error.response()

    return Starlette(routes=[
        Route("/health", health, methods=["GET"]),
        Route("/status", status, methods=["GET"]),
        Route("/transcribe", transcribe, methods=["POST"]),
        Route("/v1/audio/transcriptions", openai_transcriptions, methods=["POST"]),
        WebSocketRoute("/live", lambda socket: serve_live(socket, service, service.config.live)),
    ], middleware=[Middleware(RequestLog)], exception_handlers={HTTPException: http_error})
