"""A transcription server started for real on 127.0.0.1 for a test, with the test key as default."""
import os
import subprocess
from pathlib import Path

from encoder.benchmark.server_process import ServerProcess, multipart  # noqa: F401 (the tests' multipart)

KEY = "test-key-123"


class Server(ServerProcess):
    """The server with `args`, its temporary files under `tmp`, its output kept for the test to read."""

    def __init__(self, tmp: Path, *args):
        self.tmp = tmp
        super().__init__(*args, env=dict(os.environ, TMPDIR=str(tmp)), output=subprocess.PIPE)

    def post(self, path, fields=None, file=None, key=KEY, filename="clip.wav"):
        return super().post(path, fields, file, key, filename)

    def healthy(self):
        return self.get("/health")[0] == 200 and self.get("/status", KEY)[0] == 200
