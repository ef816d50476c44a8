"""A transcription server started for real on 127.0.0.1, and a stdlib HTTP client for it."""
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

KEY = "test-key-123"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, tmp: Path, *args):
        self.port, self.tmp = free_port(), tmp
        self.url = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ, TMPDIR=str(tmp))
        self.proc = subprocess.Popen([sys.executable, "-m", "encoder.serve", "--port", str(self.port), *args],
                                     env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 120
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.proc.stderr.read()}")
            try:
                if self.get("/health")[0] == 200:
                    return
            except OSError:
                time.sleep(0.3)
        raise RuntimeError("server did not become ready")

    def request(self, method, path, body=None, headers=None):
        """(status, body, headers). Reads the response even when the server answers (e.g. 413)
        before the whole body is sent and closes the connection."""
        import http.client

        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
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

    def get(self, path, key=None):
        return self.request("GET", path, headers={"Authorization": f"Bearer {key}"} if key else {})

    def post(self, path, fields=None, file=None, key=KEY, filename="clip.wav"):
        body, ctype = multipart(fields or {}, file, filename)
        headers = {"Content-Type": ctype}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return self.request("POST", path, body, headers)

    def healthy(self):
        return self.get("/health")[0] == 200 and self.get("/status", KEY)[0] == 200

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=30)


def multipart(fields: dict, file: bytes | None, filename: str) -> tuple[bytes, str]:
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
