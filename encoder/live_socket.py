"""The server's live endpoint: a WebSocket that takes raw PCM frames and answers with JSON events.

    ws://HOST:PORT/live?sample_rate=16000&encoding=pcm_s16le&language=en
    (header 'Authorization: Bearer KEY' when the server has a key)

The client sends binary frames of mono PCM (`encoding` pcm_s16le or pcm_f32le, any `sample_rate`
from 8000 to 48000; other rates than 16 kHz are resampled) and, to end, the text frame
{"type": "end"}. The server sends:

    {"type": "ready", ...}                       the stream's parameters and limits
    {"type": "partial", "text": ...}             the latest hypothesis past the committed text
    {"type": "committed", "text": ..., "words": [{"word", "start", "end", "probability"}], "received": s}
    {"type": "error", "message": ..., "param": ...}     then the socket is closed
    {"type": "end", "text": all committed text, "received": seconds of audio, "reason": ...}

Each stream is a LiveTranscriber (encoder.streaming) whose updates run on the server's worker
thread. While an update runs, frames keep arriving; the next update covers all of them, so a
busy server makes updates less often instead of queueing audio. No audio is dropped: "end" says
how much was received.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from dataclasses import dataclass

import numpy as np
import soxr
from starlette.websockets import WebSocketDisconnect

from decoder.options import DecodingOptions, TranscribeOptions
from encoder.streaming import LiveTranscriber, Update
from kernels.errors import AmanuensisError
from kernels.frontend import SAMPLE_RATE

ENCODINGS = {"pcm_s16le": ("<i2", 32768.0), "pcm_f32le": ("<f4", 1.0)}
RATES = (8000, 48000)                         # the sample rates a client may send, inclusive
log = logging.getLogger("amanuensis.server")

# close codes (RFC 6455)
NORMAL, UNSUPPORTED, INVALID, POLICY, TOO_BIG, INTERNAL, TRY_LATER = 1000, 1003, 1007, 1008, 1009, 1011, 1013


@dataclass(frozen=True)
class LiveLimits:
    streams: int = 4                          # live streams at once; more are refused (try later)
    max_seconds: float = 4 * 3600.0           # audio one stream may send; then it is ended
    idle_seconds: float = 30.0                # a stream without a frame this long is ended
    frame_bytes: int = 2**20                  # largest binary frame


class StreamError(Exception):
    """Ends a stream with an error event and a close code."""

    def __init__(self, message: str, code: int, param: str | None = None):
        super().__init__(message)
        self.message, self.code, self.param = message, code, param


@dataclass(frozen=True)
class StreamFormat:
    encoding: str
    sample_rate: int
    language: str | None

    @classmethod
    def parse(cls, query) -> StreamFormat:
        encoding = query.get("encoding", "pcm_s16le")
        if encoding not in ENCODINGS:
            raise StreamError(f"encoding must be {' or '.join(ENCODINGS)}, not {encoding!r}", POLICY, "encoding")
        rate = query.get("sample_rate", str(SAMPLE_RATE))
        if not rate.isdigit() or not RATES[0] <= int(rate) <= RATES[1]:
            raise StreamError(f"sample_rate must be a whole number of Hz from {RATES[0]} to {RATES[1]}, "
                              f"not {rate!r}", POLICY, "sample_rate")
        return cls(encoding, int(rate), query.get("language") or None)

    def samples(self, frame: bytes) -> np.ndarray:
        """The frame as float32 samples at its own rate; StreamError for a frame that is not whole
        samples or holds values that are not finite."""
        dtype, scale = ENCODINGS[self.encoding]
        width = np.dtype(dtype).itemsize
        if len(frame) % width:
            raise StreamError(f"a binary frame of {len(frame)} bytes is not whole {self.encoding} samples "
                              f"({width} bytes each)", INVALID)
        samples = np.frombuffer(frame, dtype).astype(np.float32) / scale
        if not np.isfinite(samples).all():
            raise StreamError("a pcm_f32le frame holds values that are not finite numbers", INVALID)
        return samples


class Resampler:
    """The stream at 16 kHz, whatever rate it arrives at (state kept across frames)."""

    def __init__(self, rate: int):
        self.stream = None
        if rate != SAMPLE_RATE:
            self.stream = soxr.ResampleStream(rate, SAMPLE_RATE, 1, dtype="float32")

    def __call__(self, samples: np.ndarray, last: bool = False) -> np.ndarray:
        return samples if self.stream is None else self.stream.resample_chunk(samples, last=last)


def _event(kind: str, **fields) -> str:
    return json.dumps({"type": kind, **fields})


def _committed(update: Update) -> str:
    words = [{"word": w.word, "start": round(w.start, 3), "end": round(w.end, 3),
              "probability": round(w.probability, 4)} for w in update.committed]
    return _event("committed", text="".join(w.word for w in update.committed), words=words,
                  received=round(update.received, 3))


class LiveStream:
    """One connection: frames in, updates on the worker, events out."""

    def __init__(self, socket, service, fmt: StreamFormat, limits: LiveLimits):
        self.socket, self.service, self.fmt, self.limits = socket, service, fmt, limits
        transcriber = service.model.transcriber
        options = transcriber.check_options(TranscribeOptions(decoding=DecodingOptions(language=fmt.language)))
        self.live = LiveTranscriber(service.model, options, vad=transcriber.vad)
        self.resample = Resampler(fmt.sample_rate)
        self.inbox: list[np.ndarray] = []          # 16 kHz samples not handed to the worker yet
        self.waiting = 0                           # their count
        self.received = 0.0                        # seconds of audio received, at the client's rate
        self.partial = ""

    async def run(self) -> str:
        """Serve the stream until it ends; returns why it ended."""
        receiving = asyncio.ensure_future(self.socket.receive())
        update: asyncio.Future | None = None
        last_frame = time.monotonic()
        try:
            while True:
                idle = self.limits.idle_seconds - (time.monotonic() - last_frame)
                done, _ = await asyncio.wait({receiving} | ({update} if update else set()), timeout=max(idle, 0),
                                             return_when=asyncio.FIRST_COMPLETED)
                if not done:
                    return await self._end(update, f"no audio for {self.limits.idle_seconds:g} s", POLICY)
                if update in done:
                    await self._send(update.result())
                    update = None
                if receiving in done:
                    message, last_frame = receiving.result(), time.monotonic()
                    if message["type"] == "websocket.disconnect":
                        return "the client disconnected"
                    ending = self._take(message)
                    if ending:
                        return await self._end(update, *ending)
                    receiving = asyncio.ensure_future(self.socket.receive())
                if update is None and self.waiting >= self.live.chunk_samples:
                    update = self._on_worker(self._handover())
        finally:
            receiving.cancel()

    def _take(self, message: dict) -> tuple[str, int] | None:
        """Take one frame; (reason, close code) when it ends the stream."""
        if message.get("bytes") is not None:
            frame = message["bytes"]
            if len(frame) > self.limits.frame_bytes:
                raise StreamError(f"a binary frame of {len(frame)} bytes exceeds the {self.limits.frame_bytes} "
                                  "byte limit", TOO_BIG)
            samples = self.fmt.samples(frame)
            self.received += len(samples) / self.fmt.sample_rate
            self._queue(self.resample(samples))
            if self.received >= self.limits.max_seconds - 1e-9:
                return f"the stream reached the {self.limits.max_seconds:g} s limit", POLICY
            return None
        try:
            control = json.loads(message.get("text") or "")
        except ValueError:
            control = None
        if not isinstance(control, dict) or control.get("type") != "end":
            raise StreamError('a text frame must be the JSON {"type": "end"}; audio goes in binary frames',
                              UNSUPPORTED)
        return "the client ended the stream", NORMAL

    def _queue(self, samples: np.ndarray) -> None:
        if len(samples):
            self.inbox.append(samples)
            self.waiting += len(samples)

    def _handover(self) -> np.ndarray:
        samples = np.concatenate(self.inbox) if self.inbox else np.zeros(0, np.float32)
        self.inbox, self.waiting = [], 0
        return samples

    def _on_worker(self, samples: np.ndarray, final: bool = False) -> asyncio.Future:
        """An update on the worker thread over the samples handed over (the last one: finish)."""
        live = self.live

        def work() -> Update:
            live.append(samples)
            return live.finish() if final else live.step()
        return asyncio.wrap_future(self.service.worker.call(work))

    async def _end(self, update: asyncio.Future | None, reason: str, code: int) -> str:
        """Commit what was heard and close with "end"."""
        if update is not None:
            await self._send(await update)
        self._queue(self.resample(np.zeros(0, np.float32), last=True))
        await self._send(await self._on_worker(self._handover(), final=True))
        await self.socket.send_text(_event("end", text=self.live.text, received=round(self.received, 3),
                                           reason=reason))
        await self.socket.close(code, reason[:120])
        return reason

    async def _send(self, update: Update) -> None:
        if update.committed:
            await self.socket.send_text(_committed(update))
        if update.partial != self.partial:
            self.partial = update.partial
            await self.socket.send_text(_event("partial", text=update.partial))


async def serve_live(socket, service, limits: LiveLimits) -> None:
    """The endpoint: authenticate, admit, run the stream, and always release what it held."""
    await socket.accept()
    stream_id, reason, stream = uuid.uuid4().hex[:12], "refused", None
    try:
        if not service.authorized(socket.headers):
            raise StreamError("missing or wrong API key (send 'Authorization: Bearer <key>')", POLICY)
        fmt = StreamFormat.parse(socket.query_params)
        if service.live_streams >= limits.streams:
            raise StreamError(f"{limits.streams} live streams are running, the server's limit; retry later",
                              TRY_LATER)
        stream = LiveStream(socket, service, fmt, limits)
        service.live_streams += 1
        await socket.send_text(_event("ready", sample_rate=fmt.sample_rate, encoding=fmt.encoding,
                                      chunk_seconds=stream.live.chunk_seconds, max_seconds=limits.max_seconds,
                                      idle_seconds=limits.idle_seconds, frame_bytes=limits.frame_bytes))
        reason = await stream.run()
    except WebSocketDisconnect:
        reason = "the client disconnected"
    except StreamError as e:
        reason = e.message
        await _close_with_error(socket, e)
    except AmanuensisError as e:
        reason = str(e)
        await _close_with_error(socket, StreamError(str(e), POLICY, getattr(e, "option", None)))
    except Exception as e:  # a bug: reported to the client, the server keeps serving
        reason = f"internal error: {type(e).__name__}"
        log.exception("live stream %s", stream_id)
        await _close_with_error(socket, StreamError(reason, INTERNAL))
    finally:
        received = stream.received if stream else 0.0
        if stream:
            service.live_streams -= 1
            service.counters.live_done(received)
        log.info("live %s %.2f s audio: %s", stream_id, received, reason)


async def _close_with_error(socket, error: StreamError) -> None:
    try:
        await socket.send_text(_event("error", message=error.message, param=error.param))
        await socket.close(error.code, error.message[:120])
    except Exception:  # the client is already gone
        pass
