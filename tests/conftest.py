import os
import tempfile
from pathlib import Path

import pytest

from tests.helpers import SPEECH

# Conversions go to a cache private to this test session, never the user's.
os.environ["AMANUENSIS_CACHE"] = tempfile.mkdtemp(prefix="amanuensis-test-cache-")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny():
    """tiny.en (the offline default) on the cpu backend."""
    from encoder import load_model

    return load_model("tiny.en", device="cpu")


@pytest.fixture(scope="session")
def tiny_torch(tiny):
    from encoder.parity import torch_encoder

    return torch_encoder(tiny.converted)


@pytest.fixture(scope="session")
def speech():
    """The real speech clips of ../shared/speech (skipped with a reason when absent)."""
    manifest = SPEECH / "manifest.jsonl"
    if not manifest.is_file():
        pytest.skip(f"real speech clips not found at {SPEECH} (the shared data folder beside the repo)")
    import json

    return [dict(json.loads(line), path=SPEECH / json.loads(line)["file"])
            for line in manifest.read_text().splitlines() if line.strip()]


@pytest.fixture
def workdir(tmp_path) -> Path:
    return tmp_path
