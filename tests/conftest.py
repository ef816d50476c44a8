import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

# Conversions go to a cache private to this test session, never the user's (set before any import
# of the project reads it), and removed with it: a converted tiny.en is 250 MB.
os.environ["AMANUENSIS_CACHE"] = tempfile.mkdtemp(prefix="amanuensis-test-cache-")
atexit.register(shutil.rmtree, os.environ["AMANUENSIS_CACHE"], ignore_errors=True)
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from encoder import load_model  # noqa: E402
from encoder.evaluation import read_manifest  # noqa: E402
from encoder.torch_reference import torch_encoder  # noqa: E402
from tests.helpers import SPEECH  # noqa: E402


@pytest.fixture(scope="session")
def tiny():
    """tiny.en (the offline default) on the cpu backend, with the fp32 decoder: the configuration
    compared with transformers (the default decoder is int8)."""
    return load_model("tiny.en", device="cpu", decoder_precision="fp32")


@pytest.fixture(scope="session")
def tiny_torch(tiny):
    return torch_encoder(tiny.converted)


@pytest.fixture(scope="session")
def speech():
    """The real speech clips of ../shared/speech, as encoder.evaluation.Clip (skipped with a reason
    when absent)."""
    manifest = SPEECH / "manifest.jsonl"
    if not manifest.is_file():
        pytest.skip(f"real speech clips not found at {SPEECH} (the shared data folder beside the repo)")
    return read_manifest(manifest)


@pytest.fixture
def workdir(tmp_path) -> Path:
    return tmp_path
