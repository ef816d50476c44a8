"""python -m encoder.serve: the transcription service over HTTP (loopback by default).

GET /health, GET /status, POST /transcribe, the OpenAI-compatible
POST /v1/audio/transcriptions (stream=true for server-sent events) and the live
WebSocket /live (raw PCM in, JSON events out: see encoder/live_socket.py). The model
is loaded (and warmed up) before the server accepts connections, so it is ready when it answers.
"""
from __future__ import annotations

import argparse
import logging
import sys

import numpy as np
import uvicorn

from encoder.cli import add_decoder_precision, add_device, add_model, positive_int, report_device, run, say
from encoder.live_socket import LiveLimits
from encoder.model import load_model
from encoder.server import ServerConfig, TranscriptionService, create_app
from kernels.errors import AmanuensisError
from kernels.frontend import SAMPLE_RATE
from kernels.settings import api_key


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m encoder.serve", description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1, loopback only)")
    p.add_argument("--port", type=int, default=9004, help="port (default 9004)")
    add_model(p)
    add_device(p)
    add_decoder_precision(p)
    p.add_argument("--max-upload-mb", type=float, default=25.0, help="largest accepted upload (default 25 MiB)")
    p.add_argument("--queue", type=positive_int, default=ServerConfig.queue_size,
                   help="requests waiting at most; more get 503 (default %(default)s)")
    p.add_argument("--batch-size", type=positive_int, default=ServerConfig.batch_size,
                   help="waiting requests run together, their windows decoded in batches (default %(default)s)")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds a request may take (default 600)")
    p.add_argument("--live-streams", type=positive_int, default=LiveLimits.streams,
                   help="live WebSocket streams at once; more are refused (default %(default)s)")
    p.add_argument("--live-max-seconds", type=float, default=LiveLimits.max_seconds,
                   help="seconds of audio one live stream may send before it is ended (default %(default)g)")
    p.add_argument("--live-idle-seconds", type=float, default=LiveLimits.idle_seconds,
                   help="a live stream sending nothing this long is ended (default %(default)g)")
    p.add_argument("--api-key", default=None,
                   help="require 'Authorization: Bearer KEY' on every endpoint but /health "
                        "(or set AMANUENSIS_API_KEY)")
    return p


def _log_requests() -> None:
    """The service's one line per request, on stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("amanuensis: %(message)s"))
    logger = logging.getLogger("amanuensis.server")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if min(args.max_upload_mb, args.timeout, args.live_max_seconds, args.live_idle_seconds) <= 0:
        raise AmanuensisError("--max-upload-mb, --timeout, --live-max-seconds and --live-idle-seconds must be "
                              "positive")
    model = load_model(args.model, args.device, args.strict, args.decoder_precision)
    report_device(model, decoder=True)
    t = np.arange(SAMPLE_RATE) / SAMPLE_RATE
    model.transcribe((0.1 * np.sin(2 * np.pi * 440 * t)).astype(np.float32))     # warm up both halves
    live = LiveLimits(args.live_streams, args.live_max_seconds, args.live_idle_seconds)
    config = ServerConfig(int(args.max_upload_mb * 2**20), args.queue, api_key(args.api_key), args.timeout,
                          args.batch_size, live)
    app = create_app(TranscriptionService(model, config))
    _log_requests()
    say(f"serving {args.model} on http://{args.host}:{args.port} "
        f"({'API key required' if config.api_key else 'no API key'})")
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    run(main)
