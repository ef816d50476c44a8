"""The npu backend's host logic, driven through a fake pyxrt (no NPU here; see tests/fake_pyxrt.py)."""
import sys

import numpy as np
import pytest

from encoder.audio import load_audio
from encoder.evaluation import score
from kernels import backends
from kernels.errors import AmanuensisError
from tests.fake_pyxrt import MIDDLE, FakeXRT, tiny_en_entries, tiny_en_op_entries, write_kernel_dir
from tests.helpers import run_concurrently

HELLO = "tests/data/hello.wav"
HELLO_TEXT = open("tests/data/hello.reference.txt").read()
FC1 = "linear_4_M1536_K384_N1536_geluTrue_residualFalse.xclbin"          # of tiny_en_op_entries
ATTENTION = "attention_1_T1500_H6.xclbin"
MIDDLE_CHAIN = f"chain_3_{__import__('hashlib').sha1((MIDDLE + '; linear 384 1152').encode()).hexdigest()[:10]}.xclbin"


@pytest.fixture
def npu_env(monkeypatch, tmp_path):
    """Install a fake NPU: returns a function (device name, faults, ...) -> the FakeXRT in use."""
    (tmp_path / "accel0").write_text("")
    monkeypatch.setenv("AMANUENSIS_ACCEL_GLOB", str(tmp_path / "accel*"))
    monkeypatch.setitem(backends._instances, "npu", None)
    backends._instances.pop("npu")

    def install(device_name="NPU Strix", faults=None, entries=None, insts_count="words", context_limit=16,
                shared=False):
        fake = FakeXRT(device_name, faults, context_limit)
        monkeypatch.setitem(sys.modules, "pyxrt", fake.module())
        entries = entries or tiny_en_entries(4 if "Phoenix" in device_name else 8)
        directory = write_kernel_dir(tmp_path / "npu-kernels", entries, insts_count,
                                     fake_insts_count="words", shared=shared)
        monkeypatch.setenv("AMANUENSIS_NPU_KERNELS", str(directory))
        backends._instances.pop("npu", None)
        return fake

    yield install
    backends._instances.pop("npu", None)


def npu_model(tiny, strict=False):
    from encoder.model import WhisperModel

    return WhisperModel(tiny.converted, "npu", strict)


def test_detection_names_the_generation_or_the_reason(npu_env, monkeypatch, tmp_path):
    from kernels.xrt import detect

    for name, generation in [("NPU Phoenix", "phoenix"), ("RyzenAI-npu1", "phoenix"), ("NPU Strix", "strix"),
                             ("RyzenAI-npu4", "strix"), ("NPU Krackan", "strix")]:
        npu_env(name)
        device, why = detect()
        assert device.generation == generation and not why
    npu_env("Some GPU")
    assert "unrecognised NPU 'Some GPU'" in detect()[1]
    monkeypatch.setitem(sys.modules, "pyxrt", None)
    assert "pyxrt" in detect()[1] and detect()[0] is None
    monkeypatch.setenv("AMANUENSIS_ACCEL_GLOB", str(tmp_path / "nothing*"))
    assert "no NPU device node" in detect()[1]


def test_encoder_on_npu_equals_the_emulator(npu_env, tiny):
    from encoder.model import WhisperModel

    fake = npu_env()
    model = npu_model(tiny)
    samples = load_audio(HELLO)                      # from the samples: the front end runs on the NPU too
    result = model.encode_with_cross(samples)
    ran = {r.node: r.backend for r in result.records}
    assert set(ran.values()) == {"npu"}, [(r.node, r.backend, r.fallback) for r in result.records if r.backend != "npu"]
    assert not any(r.fallback for r in result.records)
    emu = WhisperModel(tiny.converted, "emu").encode_with_cross(samples)
    np.testing.assert_array_equal(result.output, emu.output)
    np.testing.assert_array_equal(result.tensors["cross_kv.2"], emu.tensors["cross_kv.2"])
    assert fake.violations == []
    status = model.backend.status()
    assert status["generation"] == "strix" and all(k["state"] == "ready" for k in status["kernels"])
    dispatches = [r for r in result.records if r.backend == "npu" and not r.grouped]
    assert sum(k["calls"] for k in status["kernels"]) == len(dispatches) == 10    # mel, 1 + 4 chains, 4 attentions


def test_an_encoder_layer_is_two_npu_dispatches(npu_env, tiny):
    """Each run of layernorms and linears is one dispatch of a chain kernel: per layer its attention and
    one chain (its out-projection through the next layer's QKV projection); the profile counts
    dispatches, not nodes."""
    npu_env()
    result = npu_model(tiny).transcribe(HELLO)
    assert score(HELLO_TEXT, result.text).wer <= 0.15
    assert result.profile.nodes_per_window() == {"npu": 10}    # mel, 1 + 4 chains, 4 attentions
    assert "per window: 10 npu dispatches" in result.profile.format()
    window = result.profile.runs[0]
    chained = [r.node for r in window if r.grouped]
    assert "layers.0.fc2" in chained and "layers.1.self_attn.qkv_proj" in chained and "cross_kv.3" in chained
    assert "embed" in chained and window[1].node == "conv1"           # the stem opens the first chain
    assert all(r.ms == 0 for r in window if r.grouped) and not any(r.fallback for r in window)


def test_one_xclbin_holds_the_encoder_in_one_hardware_context(npu_env, tiny):
    """The kernels encoder.npu_build appends to one xclbin open in one context, even on Phoenix (6
    contexts): every node runs on the NPU, equal to the emulator."""
    from encoder.model import WhisperModel

    fake = npu_env("NPU Phoenix", context_limit=6, shared=True)
    model = npu_model(tiny)
    status = model.backend.status()
    assert status["contexts"] == 1 and fake.contexts == 1
    assert all(k["state"] == "ready" for k in status["kernels"]) and len(status["kernels"]) == 6
    samples = load_audio(HELLO)
    result = model.encode_with_cross(samples)
    assert {r.backend for r in result.records} == {"npu"}
    np.testing.assert_array_equal(result.output, WhisperModel(tiny.converted, "emu").encode_with_cross(samples).output)
    assert fake.violations == []


def test_buffers_a_kernel_makes_start_as_zeros(npu_env):
    """A chain's scratch holds rows no design writes (the row of zeros a convolution reads before its
    input): the buffers a kernel makes are zeros, though the device's memory is not."""
    from kernels.emu import EmuBackend
    from kernels.npu import NpuBackend
    from kernels.npu_manifest import load_manifest
    from kernels.xrt import detect

    npu_env()
    device, _ = detect()
    entry = next(e for e in load_manifest() if e.op == "chain" and "window=" in e.shape["phases"])
    kernel = NpuBackend(device, [entry], EmuBackend()).kernels[entry.key]          # as the backend makes it
    assert all(device.pyxrt.bo(device.device, 64, 0, 0).read(64, 0))          # the fake's memory: not zeros
    made = [bos[3] for bos in kernel._sets if 3 in bos]               # its self-test's scratch
    assert made and all(not any(bo.read(2 * 384, 0)) for bo in made)  # the zero row before conv1's output


def test_weights_are_packed_once_per_graph(npu_env, tiny):
    """Each matrix is packed with its bias as the matmul design streams it, once; the CPU fallback gets
    the fp32 original back."""
    from kernels import reference
    from kernels.aie import tiles
    from kernels.npu import NpuWeight

    npu_env()
    model = npu_model(tiny)
    fc1 = model.runner.weights["encoder.layers.0.fc1.weight"]
    assert isinstance(fc1, NpuWeight) and fc1.dense.shape == fc1.shape == (384, 1536) and not fc1.q_cols
    b = np.ones(1536, np.float32)
    assert fc1.packed(b) is fc1.packed(b) and np.array_equal(fc1.packed(b), tiles.pack_linear(fc1.dense, b))
    assert fc1.packed(b).shape == (1536 // 64, 384 // 64 + 1, 2, 2048)          # pairs of 32-column tiles
    assert model.backend.prepare_weight("linear", fc1) is fc1                    # twice is once
    qkv = model.runner.weights["encoder.layers.0.self_attn.qkv_proj.weight"]
    assert qkv.q_head_dim == 64 and qkv.q_cols == 384                           # feeds attention: Q packed / 8
    conv1 = model.runner.weights["encoder.conv1.weight"]                         # K = 240, padded to 256
    assert conv1.packed(np.zeros(384, np.float32)).shape == (6, 5, 2, 2048)
    x = np.random.default_rng(3).standard_normal((5, 384)).astype(np.float32)
    out, ran, why = model.backend.run("linear", (x, fc1, b), {})
    assert ran == "cpu" and "no NPU kernel" in why                              # 5 rows: no kernel of that shape
    np.testing.assert_allclose(out, reference.linear(x, fc1.dense, b), atol=1e-4)


def test_activations_and_weights_stay_on_the_device(npu_env, tiny):
    """Between NPU ops the activations stay in device buffers (the next kernel reads the previous
    kernel's output buffer), and weights, biases and constants are written once: a second window
    writes only what comes from the host (the samples, and the log-mel in bf16 for the stem's chain)
    and reads back only what leaves the NPU (the log-mel, the encoder's outputs and the sanity check's
    first band of each output)."""
    from encoder.model import WhisperModel
    from encoder.network import build_encoder_graph

    fake = npu_env(shared=True)
    model = npu_model(tiny)
    rng = np.random.default_rng(9)
    windows = [(0.05 * rng.standard_normal(16000 * 20)).astype(np.float32) for _ in range(2)]
    model.encode_with_cross(windows[0])
    fake.written = fake.read = 0
    result = model.encode_with_cross(windows[1])
    assert {r.backend for r in result.records} == {"npu"}
    d, rows = 384, 1536
    host_inputs = 4 * 480000 + 2 * (1 + 3074) * 80          # samples; the log-mel after a row of zeros
    assert fake.written <= host_inputs + 4 * 1024 * 1024          # the samples reflect-padded (mel design's SAMPLES)
    weights = sum(w.packed(np.zeros(w.shape[1], np.float32)).nbytes for w in model.runner.weights.values()
                  if hasattr(w, "packed"))
    assert weights > 10 * 2**20 and fake.written < weights       # the ~20 MB of packed weights are not rewritten
    leaving = 4 * 3072 * 96 + 2 * rows * d + 4 * 2 * rows * 2 * d    # the log-mel, the outputs
    shapes = build_encoder_graph(tiny.dims, cross_kv=True).shapes
    checks = sum(64 * 2 * shapes[r.node][1] for r in result.records if r.backend == "npu")
    assert fake.read <= leaving + checks + 2**20                  # every op's whole output would be ~70 MB
    emu = WhisperModel(tiny.converted, "emu").encode_with_cross(windows[1])
    np.testing.assert_array_equal(result.output, emu.output)


def test_phoenix_context_limit_falls_back_visibly(npu_env, tiny):
    extra = [e for e in tiny_en_op_entries() if e[1].get("K") == 256 or e[1].get("N") == 768]   # unused by encode
    npu_env("NPU Phoenix", context_limit=6, entries=extra + tiny_en_entries(4))
    model = npu_model(tiny)
    states = [k for k in model.backend.status()["kernels"] if k["state"] == "disabled"]   # 8 xclbins: the last 2
    assert len(states) == 2 and all("hardware context limit (6)" in k["reason"] for k in states)
    result = model.encode(tiny.mel(load_audio(HELLO)))
    fell = [r for r in result.records if r.fallback]                 # the last chain's nodes, one by one
    assert [r.node for r in fell][:2] == ["layers.3.self_attn.out_proj", "layers.3.final_layer_norm"]
    assert all(r.backend == "cpu" and "context limit" in r.fallback for r in fell)
    with pytest.raises(AmanuensisError, match="--strict forbids"):
        npu_model(tiny, strict=True).encode(tiny.mel(load_audio(HELLO)))


SLOW = pytest.mark.slow                      # ~30 s each: the quick subset keeps two kinds of fault


@pytest.mark.parametrize("fault, reason", [
    pytest.param("ert_error", "ERT_CMD_STATE_ERROR", marks=SLOW), ("timeout", "ERT_CMD_STATE_TIMEOUT"),
    ("zeros", "all zeros"), pytest.param("garbage", "garbage (correlation", marks=SLOW),
    pytest.param("bitnoise", "non-finite values", marks=SLOW),
    pytest.param("context_fail", "load failed: RuntimeError: DRM_IOCTL", marks=SLOW),
])
def test_faulty_kernel_is_disabled_and_the_transcript_is_still_right(npu_env, tiny, fault, reason):
    npu_env(faults={FC1: fault}, entries=tiny_en_op_entries())
    model = npu_model(tiny)
    fc1 = next(k for k in model.backend.status()["kernels"] if k["kernel"].startswith("linear[M=1536,K=384,N=1536"))
    assert fc1["state"] == "disabled" and reason in fc1["reason"]
    result = model.transcribe(HELLO)
    assert score(HELLO_TEXT, result.text).wer <= 0.15
    fell = {r.node: r for run in result.profile.runs for r in run if r.fallback}
    assert set(fell) == {f"layers.{i}.fc1" for i in range(4)} and all(r.backend == "cpu" for r in fell.values())
    assert set(result.provenance.fallbacks) == set(fell)
    assert result.profile.nodes_per_window() == {"npu": 32, "cpu": 4}      # fc1 x 4 on the CPU
    assert "per window: 32 npu dispatches, 4 on cpu" in result.profile.format()
    with pytest.raises(AmanuensisError, match=r"node layers\.0\.fc1: .*disabled.*--strict"):
        npu_model(tiny, strict=True).transcribe(HELLO)


def test_missing_xclbin_is_reported(npu_env, tiny, tmp_path):
    npu_env(entries=tiny_en_op_entries())
    (tmp_path / "npu-kernels" / ATTENTION).unlink()
    model = npu_model(tiny)
    att = next(k for k in model.backend.status()["kernels"] if k["kernel"].startswith("attention"))
    assert att["state"] == "disabled" and "missing file" in att["reason"]


def test_kernel_failing_after_its_self_test_falls_back_at_run_time(npu_env, tiny):
    npu_env(faults={ATTENTION: "zeros_after:1"}, entries=tiny_en_op_entries())   # self-test passes, then zeros
    model = npu_model(tiny)
    result = model.encode(tiny.mel(load_audio(HELLO)))
    attention = [r for r in result.records if r.kernel == "attention"]
    assert "returned all zeros; disabled" in attention[0].fallback and attention[0].backend == "cpu"
    assert all(r.fallback and "disabled" in r.fallback for r in attention[1:])
    status = next(k for k in model.backend.status()["kernels"] if k["kernel"].startswith("attention"))
    assert status["state"] == "disabled" and status["failures"] == 1


def test_a_chain_failing_after_its_self_test_falls_back_node_by_node(npu_env, tiny):
    """A chain kernel that passes its self-test, then returns zeros, is disabled at its first run: its
    nodes and those of every later chain of that kernel run one by one on the CPU, each record saying
    why, and the transcript is still right; --strict refuses."""
    npu_env(faults={MIDDLE_CHAIN: "zeros_after:1"})
    model = npu_model(tiny)
    result = model.transcribe(HELLO)
    assert score(HELLO_TEXT, result.text).wer <= 0.15
    window = result.profile.runs[0]
    fell = {r.node: r for r in window if r.fallback}
    middles = {f"layers.{i}.{n}" for i in range(3)
               for n in ("self_attn.out_proj", "final_layer_norm", "fc1", "fc2")}
    assert middles | {f"layers.{i}.self_attn_layer_norm" for i in (1, 2, 3)} <= set(fell)
    first = fell["layers.0.self_attn.out_proj"].fallback
    assert first.startswith("chain[M=1536,cols=8,phases=linear 384 384")           # Strix: 8 columns
    assert "returned all zeros; disabled" in first
    assert "disabled (chain[" in fell["layers.1.fc1"].fallback and all(r.backend == "cpu" for r in fell.values())
    status = next(k for k in model.backend.status()["kernels"] if k["kernel"] == first.split(" returned")[0])
    assert status["state"] == "disabled" and status["failures"] == 1
    with pytest.raises(AmanuensisError, match=r"node layers\.0\.self_attn\.out_proj: chain\[.*--strict"):
        npu_model(tiny, strict=True).transcribe(HELLO)


def test_instruction_count_unit_is_checked(npu_env, tiny):
    fake = npu_env(insts_count="bytes")                   # the manifest says bytes, the designs want words
    with pytest.raises(AmanuensisError, match="no NPU kernel passed its self-test"):
        backends.get_backend("npu")
    assert fake.violations and all("instruction count" in v for v in fake.violations)


def test_auto_uses_the_npu_when_it_works_and_says_why_not(npu_env, tiny, monkeypatch, tmp_path):
    from kernels.backends import select_backend

    npu_env()
    backend, note = select_backend("auto")
    assert backend.name == "npu" and note == "auto: NPU found"
    backends._instances.pop("npu", None)
    monkeypatch.setenv("AMANUENSIS_ACCEL_GLOB", str(tmp_path / "none*"))
    backend, note = select_backend("auto")
    assert backend.name == "cpu" and "no NPU device node" in note


def test_transcribe_json_reports_npu_status(npu_env, tmp_path):
    """The CLI's JSON carries per-node backends, fallbacks and the kernels' states (in process:
    a subprocess would not see the fake pyxrt)."""
    import json

    from encoder.transcribe import main

    npu_env(faults={FC1: "garbage"}, entries=tiny_en_op_entries())
    assert main([HELLO, "--device", "npu", "-o", str(tmp_path), "-f", "json", "--verbose", "False"]) == 0
    prov = json.loads((tmp_path / "hello.json").read_text())["provenance"]
    assert prov["device"] == "npu" and "layers.0.fc1" in prov["fallbacks"]
    assert prov["encoder_nodes"]["layers.0.fc1"] == ["cpu"] and prov["encoder_nodes"]["layers.0.fc2"] == ["npu"]
    assert any(k["state"] == "disabled" and "garbage" in k["reason"] for k in prov["npu"]["kernels"])


@pytest.mark.slow
def test_concurrent_encodes_on_the_npu(npu_env, tiny):
    npu_env()
    model = npu_model(tiny)
    rng = np.random.default_rng(5)
    mels = [tiny.mel((0.05 * rng.standard_normal(16000 * (i + 2))).astype(np.float32)) for i in range(3)]
    expected = [model.encode(m).output for m in mels]
    got = [None] * 6

    def work(i):
        got[i] = model.encode(mels[i % 3]).output

    run_concurrently(work, 6)
    for i in range(6):
        np.testing.assert_allclose(got[i], expected[i % 3], atol=1e-4)


def test_a_manifest_for_other_designs_is_refused(tmp_path):
    """A version 1 manifest describes the single-core designs, whose buffers differ: refused with the reason."""
    import json

    from kernels.npu_manifest import load_manifest

    write_kernel_dir(tmp_path, tiny_en_op_entries())
    data = json.loads((tmp_path / "manifest.json").read_text())
    (tmp_path / "manifest.json").write_text(json.dumps({**data, "version": 1}))
    with pytest.raises(AmanuensisError, match="version 1: this release's designs need version 2"):
        load_manifest(tmp_path)


def test_the_build_plan_is_what_the_backend_asks_for(tiny):
    """encoder.npu_build builds exactly the kernels tiny.en's graph asks the npu backend for on Phoenix
    and on Strix (the fake's tiny_en_entries, with which every node runs on the NPU above)."""
    from encoder.network import build_encoder_graph
    from kernels.aie.design_runner import build_entries

    graphs = [build_encoder_graph(tiny.dims, cross_kv=True), build_encoder_graph(tiny.dims)]   # as npu_build
    as_set = lambda entries: {(op, tuple(sorted(shape.items()))) for op, shape in entries}   # noqa: E731
    for cols in (4, 8):
        planned = build_entries(graphs, cols)
        assert as_set((e.op, e.shape) for e in planned) == as_set(tiny_en_entries(cols))
        assert len({e.artifact for e in planned}) == len(planned)


def test_the_hardware_script_stops_with_the_reason_without_an_npu(tmp_path):
    """kernels/aie/run_on_npu.sh is for machines with an NPU: here it must stop at once, saying why,
    and install nothing."""
    import glob
    import subprocess

    if glob.glob("/dev/accel/accel*"):
        pytest.skip("this machine has an NPU device node: the script would install and run for real")
    r = subprocess.run(["bash", "kernels/aie/run_on_npu.sh", str(tmp_path / "report")], capture_output=True,
                       text=True, env={"PATH": "/usr/bin:/bin"})
    assert r.returncode == 2 and "no /dev/accel/accel*: is the amdxdna driver loaded?" in r.stderr
    assert not (tmp_path / "report" / "venv").exists()
