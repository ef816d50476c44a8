"""Encoder-only embedding export: Python API and `python -m encoder.embed`."""
import json
import subprocess
import sys

import numpy as np
import pytest
import soundfile

from kernels.errors import AmanuensisError


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """13.3 s of a synthetic voiced sound at 22.05 kHz (the project makes its own audio)."""
    rate = 22050
    t = np.arange(int(13.3 * rate)) / rate
    wave = sum(np.sin(2 * np.pi * f * t) / k for k, f in enumerate((140, 280, 420, 700, 1100), 1))
    wave *= 0.2 * (1 + np.sin(2 * np.pi * 3 * t))
    path = tmp_path_factory.mktemp("audio") / "voiced.wav"
    soundfile.write(str(path), wave.astype(np.float32), rate)
    return path


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "encoder.embed", *map(str, args)], capture_output=True, text=True)


def test_states_equal_pytorch_hidden_states(tiny, tiny_torch, clip):
    import torch

    from encoder.audio import load_audio

    samples = load_audio(clip)
    emb = tiny.embed(samples, layer="all")
    assert emb.frames == 665 and emb.states.shape == (5, 665, 384)
    with torch.no_grad():
        out = tiny_torch(torch.from_numpy(tiny.mel(samples)[None]), output_hidden_states=True)
    for i, ref in enumerate(out.hidden_states):
        np.testing.assert_allclose(emb.states[i], ref[0, :665].numpy(), atol=1e-3, err_msg=f"layer {i}")
    final = tiny.embed(samples)
    np.testing.assert_array_equal(final.states, emb.states[-1])
    assert {r.backend for run in final.profile.runs for r in run} == {"cpu"} and len(final.profile.runs) == 1


def test_long_audio_is_encoded_window_by_window(tiny):
    samples = (0.05 * np.random.default_rng(0).standard_normal(int(47.5 * 16000))).astype(np.float32)
    emb = tiny.embed(samples, layer=2)
    assert emb.frames == 1500 + 875 and emb.states.shape == (2375, 384)
    second = tiny.embed(samples[480000:], layer=2)
    np.testing.assert_array_equal(emb.states[1500:], second.states)
    pooled = tiny.embed(samples, layer=2, pool="mean")
    np.testing.assert_allclose(pooled.states, emb.states.mean(axis=0), rtol=1e-5, atol=1e-6)


def test_api_rejects_bad_options(tiny):
    with pytest.raises(AmanuensisError, match="--layer 9 is out of range: this model has layers 0 to 4"):
        tiny.embed(np.zeros(16000, np.float32), layer=9)
    with pytest.raises(AmanuensisError, match="unknown pooling"):
        tiny.embed(np.zeros(16000, np.float32), pool="max")
    with pytest.raises(AmanuensisError, match="empty"):
        tiny.embed(np.zeros(0, np.float32))


def test_cli_safetensors_with_metadata(tiny, clip, tmp_path):
    from safetensors import safe_open

    out = tmp_path / "states.safetensors"
    r = run_cli(clip, clip.with_name("voiced.wav"), "--output", out, "--layer", "all", "--device", "cpu", "--profile")
    assert r.returncode == 0, r.stderr
    assert "layers.3.fc1" in r.stderr and "device cpu" in r.stderr
    with safe_open(str(out), "np") as f:
        meta = f.metadata()
        states = f.get_tensor(f.keys()[0])
    assert states.shape == (5, 665, 384)
    assert json.loads(meta["frame_rate"]) == 50 and json.loads(meta["layer"]) == "all"
    assert json.loads(meta["frames"]) == [665, 665] and json.loads(meta["model"]) == "tiny.en"
    np.testing.assert_allclose(states, tiny.embed(clip, layer="all").states, atol=1e-6)


def test_cli_npy_with_sidecar(clip, tmp_path):
    out = tmp_path / "pooled.npy"
    r = run_cli(clip, clip, "--output", out, "--pool", "mean", "--layer", "1")
    assert r.returncode == 0, r.stderr
    assert np.load(out).shape == (2, 384)
    meta = json.loads(out.with_name("pooled.npy.json").read_text())
    assert meta["layer"] == "1" and meta["pool"] == "mean" and meta["shape"] == [2, 384]


@pytest.mark.parametrize("args, message", [
    (["missing.wav", "--output", "{tmp}/a.npy"], "missing.wav: file not found"),
    (["{clip}", "--output", "{tmp}/a.txt"], "must end in .safetensors or .npy"),
    (["{clip}", "{clip}", "--output", "{tmp}/a.npy"], "a .npy file holds one array"),
    (["{clip}", "--output", "{tmp}/nodir/a.npy"], "output directory does not exist"),
    (["{clip}", "--output", "{tmp}/a.npy", "--model", "nonsense-model"], "unknown model 'nonsense-model'"),
    (["{clip}", "--output", "{tmp}/a.npy", "--layer", "7"], "--layer 7 is out of range"),
    (["{clip}", "--output", "{tmp}/a.npy", "--device", "npu"], "device npu: no NPU device node"),
])
def test_cli_bad_input_is_one_clear_line(clip, tmp_path, args, message):
    r = run_cli(*[a.format(tmp=tmp_path, clip=clip) for a in args])
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert __import__("re").search(message, r.stderr), r.stderr
    assert not list(tmp_path.glob("a.*")) and not list(tmp_path.glob(".*partial"))


def test_cli_never_overwrites_without_force(clip, tmp_path):
    out = tmp_path / "keep.npy"
    out.write_bytes(b"user data")
    r = run_cli(clip, "--output", out)
    assert r.returncode == 2 and "already exists" in r.stderr
    assert out.read_bytes() == b"user data"
    assert run_cli(clip, "--output", out, "--force").returncode == 0
    assert np.load(out).shape == (665, 384)


def test_undecodable_input_leaves_no_output(tmp_path):
    bad = tmp_path / "fake.flac"
    bad.write_text("not audio")
    r = run_cli(bad, "--output", tmp_path / "x.safetensors")
    assert r.returncode == 2 and "fake.flac: cannot decode audio" in r.stderr and "Traceback" not in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fake.flac"]


def test_outputs_get_ordinary_permissions(clip, tmp_path):
    import os
    import stat

    from weights_tools.fileio import umask_mode

    out = tmp_path / "perm.safetensors"
    assert run_cli(clip, "--output", out).returncode == 0
    assert stat.S_IMODE(os.stat(out).st_mode) == umask_mode()
