"""A server process (`python -m encoder.serve`) on a free port of 127.0.0.1, and a stdlib HTTP client
for it: what the load benches and the server tests start and talk to."""
from __future__ import annotations

import http.client
import json
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

READY_SECONDS = 180.0          # a first start converts the model


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    """Resident memory of process `pid` (Linux)."""
    status = Path(f"/proc/{pid}/status").read_text()
    return next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")) / 1024


def multipart(fields: dict, file: bytes | None, filename: str) -> tuple[bytes, str]:
    """(body, content type) of a multipart/form-data request: `fields` (a list value repeats the field)
    and the audio `file` as field "file"."""
    boundary = uuid.uuid4().hex
    parts = []
    for name, value in fields.items():
        for v in value if isinstance(value, list) else [value]:
            parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{v}\r\n'.encode())
    if file is not None:
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
                     f'Content-Type: application/octet-stream\r\n\r\n'.encode() + file + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


class ServerProcess:
    """The server started with `args`, ready (its /health answers) once constructed."""

    def __init__(self, *args: str, env: dict | None = None, output=subprocess.DEVNULL):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([sys.executable, "-m", "encoder.serve", "--port", str(self.port), *args],
                                     env=env, stdout=output, stderr=output, text=True)
        deadline = time.time() + READY_SECONDS
        while time.time() < deadline:
            if self.proc.poll() is not None:
                said = self.proc.stderr.read() if self.proc.stderr else ""
                raise RuntimeError(f"the server exited while starting: {said}".strip())
            try:
                if self.get("/health")[0] == 200:
                    return
            except OSError:
                time.sleep(0.3)
        self.stop()
        raise RuntimeError("the server did not become ready")

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
                timeout: float = 600) -> tuple[int, bytes, dict]:
        """(status, body, headers). Reads the response even when the server answers (e.g. 413) before
        the whole body is sent and closes the connection."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.putrequest(method, path)
            for name, value in {**(headers or {}), "Content-Length": str(len(body or b""))}.items():
                conn.putheader(name, value)
            conn.endheaders()
            try:
                if body:
                    conn.send(body)
            except (BrokenPipeError, ConnectionResetError):
                pass
            response = conn.getresponse()
            return response.status, response.read(), dict(response.getheaders())
        finally:
            conn.close()

    def get(self, path: str, key: str | None = None) -> tuple[int, bytes, dict]:
        return self.request("GET", path, headers={"Authorization": f"Bearer {key}"} if key else {})

    def post(self, path: str, fields: dict | None = None, file: bytes | None = None, key: str | None = None,
             filename: str = "clip.wav") -> tuple[int, bytes, dict]:
        body, ctype = multipart(fields or {}, file, filename)
        headers = {"Content-Type": ctype}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return self.request("POST", path, body, headers)

    def status(self, key: str | None = None) -> dict:
        return json.loads(self.get("/status", key)[1])

    def transcribe(self, path: Path, key: str | None = None) -> str:
        """The text of one /v1/audio/transcriptions request on the file at `path` (raises on a failure)."""
        code, body, _ = self.post("/v1/audio/transcriptions", {"model": "whisper-1"}, Path(path).read_bytes(),
                                  key, Path(path).name)
        if code != 200:
            raise RuntimeError(f"{path}: status {code}: {body[:200]!r}")
        return json.loads(body)["text"]

    def rss_mb(self) -> float:
        return rss_mb(self.proc.pid)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)
