"""The layer graph: structure from the dims, FLOPs, buffer plan, runner provenance."""
import numpy as np
import pytest

from encoder.network import INPUT, MEL, OUTPUT, build_encoder_graph
from kernels.cost import PRESETS, format_projection, project
from kernels.errors import AmanuensisError
from kernels.graph import format_graph
from tests.helpers import small_dims


@pytest.fixture(scope="module")
def tiny_graph(tiny):
    return build_encoder_graph(tiny.dims)


def test_nodes_follow_whisper_order(tiny_graph):
    kernels = [n.kernel for n in tiny_graph.nodes]
    block = ["layernorm", "linear", "attention", "linear", "layernorm", "linear", "linear"]
    assert kernels == ["log_mel", "conv1d_k3", "conv1d_k3"] + block * 4 + ["layernorm"]
    assert tiny_graph.node("layers.2.fc1").params == (("gelu", True),)
    embed = tiny_graph.node("embed")                  # conv2, its epilogue adding the positions
    assert embed.inputs == ("conv1",) and embed.weights[2] == "encoder.embed_positions.weight"
    assert embed.params == (("stride", 2), ("gelu", True))
    assert tiny_graph.node("layers.2.fc2").residual == "layers.2.self_attn.out_proj"
    assert tiny_graph.node("layers.2.self_attn.out_proj").residual == "layers.1.fc2"
    assert tiny_graph.shapes[INPUT] == (480000,) and tiny_graph.shapes[MEL] == (3000, 80)
    assert tiny_graph.shapes[OUTPUT] == (1500, 384)


def test_matmul_flops_of_tiny_en(tiny_graph):
    """36.9 GFLOP of matmuls per window past the front end, which adds 1.1 GFLOP of its own."""
    d, t = 384, 1500
    matmul = 2 * 3000 * 240 * d + 2 * t * 3 * d * d + 4 * (2 * t * d * (3 * d + d + 4 * d + 4 * d) + 4 * t * t * d)
    assert abs(matmul / 1e9 - 36.9) < 0.05
    total = sum(n.flops for n in tiny_graph.nodes if n.kernel != "log_mel")
    assert matmul < total < 1.02 * matmul
    mel = tiny_graph.node(MEL).flops                   # the DFT (400 x 402) and the mel filters, as matmuls
    assert 2 * 3000 * (400 * 402 + 201 * 80) < mel < 1.02 * 2 * 3000 * (400 * 402 + 201 * 80)


def test_graph_scales_with_dims():
    dims = small_dims()
    graph = build_encoder_graph(dims)
    assert len(graph.nodes) == 3 + 7 * 5 + 1
    assert graph.shapes[MEL] == (3000, 128) and graph.node(MEL).params == (("n_mels", 128),)
    assert graph.node("layers.4.self_attn").params == (("n_head", 8),)


def test_buffer_plan_never_overlaps_live_tensors(tiny_graph):
    plan = tiny_graph.buffer_plan()
    holder = {t: b.index for b in plan for t in b.tensors}
    sizes = {b.index: b.bytes for b in plan}
    last = tiny_graph.last_use()
    produced = {INPUT: -1, **{n.name: i for i, n in enumerate(tiny_graph.nodes)}}
    for t, b in holder.items():
        assert sizes[b] >= 4 * np.prod(tiny_graph.shapes[t])
    for a in holder:
        for c in holder:
            if a < c and holder[a] == holder[c]:
                # live ranges [produced, last use] must not intersect
                assert last[a] < produced[c] or last[c] < produced[a], (a, c)
    assert len(plan) <= 4


def test_format_lists_every_node_and_the_plan(tiny_graph):
    text = format_graph(tiny_graph, per="30 s window")
    for node in tiny_graph.nodes:
        assert node.name in text
    assert "buffer plan" in text and "GFLOP per 30 s window" in text


def test_runner_records_backend_and_time_for_every_node(tiny):
    mel = np.zeros((80, 3000), np.float32) - 1.0
    result = tiny.encode(mel, keep=["layers.0.fc1"])                 # from a log-mel: the front end is skipped
    assert [r.node for r in result.records] == [n.name for n in tiny.graph.nodes][1:]
    assert {r.backend for r in result.records} == {"cpu"}
    assert all(r.ms > 0 for r in result.records)
    assert result.tensors["layers.0.fc1"].shape == (1500, 1536)
    assert np.isfinite(result.output).all() and np.abs(result.output).max() > 0


def test_the_front_end_is_a_node_on_the_backend(tiny):
    samples = (0.1 * np.sin(np.arange(16000 * 4) / 9)).astype(np.float32)
    result = tiny.encode(samples, keep=[MEL])
    assert [r.node for r in result.records] == [n.name for n in tiny.graph.nodes]
    assert result.records[0].kernel == "log_mel" and result.records[0].backend == "cpu"
    np.testing.assert_array_equal(result.tensors[MEL], tiny.mel(samples).T)      # the host's float64 log-mel
    np.testing.assert_array_equal(result.output, tiny.encode(tiny.mel(samples)).output)


def test_runner_rejects_bad_input(tiny):
    with pytest.raises(AmanuensisError, match=r"mel input has shape \(80, 100\)"):
        tiny.encode(np.zeros((80, 100), np.float32))
    with pytest.raises(AmanuensisError, match="no tensor named"):
        tiny.encode(np.zeros((80, 3000), np.float32), keep=["nope"])
    with pytest.raises(AmanuensisError, match=r"graph outputs \['layer_norm'\] cannot be computed from "
                                              r"\['layers.0.self_attn'\]"):
        tiny.runner.run({"layers.0.self_attn": np.zeros((1500, 384), np.float32)})   # its residual is missing


def test_npu_projection(tiny_graph):
    from dataclasses import replace

    phoenix = PRESETS["phoenix"]
    rows = project(tiny_graph, phoenix)
    by_node = {r.node: r for r in rows}
    assert by_node["layers.0.fc1"].bound == "compute" and by_node["embed"].bound == "compute"
    strix = {r.node: r for r in project(tiny_graph, PRESETS["strix"])}
    assert strix["layers.0.final_layer_norm"].bound == "memory"
    for r in rows:
        assert r.ms == max(r.compute_ms, r.memory_ms)
        assert r.bound == ("compute" if r.compute_ms >= r.memory_ms else "memory")
    assert by_node["layers.0.fc1"].tiles == 24 * 24
    # fc1: the matmul at 35% of 16 cores x 128 MAC x 2 x 1 GHz, bias + GELU at 35% of 16 x 16 vector ops
    node = tiny_graph.node("layers.0.fc1")
    mm = 2 * 1500 * 384 * 1536
    expected = mm / (16 * 128 * 2 * 1e9 * 0.35) + (node.flops - mm) / (16 * 16 * 1e9 * 0.35)
    assert abs(by_node["layers.0.fc1"].compute_ms - expected * 1e3) < 1e-6
    faster = sum(r.ms for r in project(tiny_graph, replace(phoenix, efficiency=0.7)))
    assert faster < sum(r.ms for r in rows)
    text = format_projection(tiny_graph, PRESETS["strix"])
    assert text.startswith("PROJECTION (not measured)") and "per 30 s window" in text


def test_npu_schedule_projection(tiny_graph):
    """The window projected from the whole-array designs' traced schedule: per dispatch (a chain of
    layernorms and linears, or an attention), each phase the longest of the busiest core's kernel
    calls at their cycle estimates, its busiest core channel and its DDR bytes, plus one dispatch."""
    from dataclasses import replace

    from kernels.aie import cycles
    from kernels.cost import format_schedule, project_schedule

    phoenix = PRESETS["phoenix"]
    rows = project_schedule(tiny_graph, phoenix)
    by_node = by_node_of(rows)
    first = by_node["conv1 .. layers.0.self_attn.qkv_proj"]            # the stem, layernorm, QKV
    conv1, conv2, *norm_qkv = first.parts
    m, d, n, bands = 1536, 384, 1152, 6
    # conv1, per core: 12 bands x 3 output tiles (a pair and a single: 12 tiles over 4 columns) of 4 K
    # chunks (3 x 80 = 240 values, rounded up to 256), GELU; its A channel: 2 passes of 4 tiles a band
    assert conv1.compute_ms == pytest.approx(12 * 3 * (4 * cycles.MATMUL_64x64x32 + cycles.ZERO_64x32
                                                       + cycles.BIAS_GELU_64x32 + cycles.ROUND_64x32) / 1e6)
    assert conv1.stream_ms == pytest.approx(12 * 2 * 4 * 8192 / 4 / 1e6)
    # conv2: 6 bands x 3 tiles of 18 K chunks (3 x 384), GELU, the positions added as the residual
    assert conv2.compute_ms == pytest.approx(6 * 3 * (18 * cycles.MATMUL_64x64x32 + cycles.ZERO_64x32
                                                      + cycles.BIAS_GELU_64x32 + cycles.ADD_ROUND_64x32) / 1e6)
    # the layernorm phase, per core and band: two statistics passes over the row block's 6 tiles, then
    # the chunks its column owns normalised (columns 0 and 1 own 2 of the 6: 4 output tiles)
    norm = bands * (6 * cycles.LN_SUM_64x64 + cycles.LN_MEAN_64 + 6 * cycles.LN_SQDEV_64x64 + cycles.LN_RSTD_64
                    + 4 * cycles.LN_NORM_64x32)
    norm_stream = bands * 3 * 6 * 8192                      # a core's A channel: 3 passes of 6 tiles of 8 KiB
    norm_ddr = 2 * (3 * m * d + bands * 6 * 2048 + m * d)   # A three times, gamma-beta per band, the output
    # the QKV phase, per core: 6 bands x 9 column tiles of 64 x 32 (4 rounds of pairs and a tail round of
    # single tiles: the 36 tiles over 4 columns), 6 K chunks each; per band a core's A channel carries
    # 5 passes of 6 tiles of 8 KiB, its W channel 9 tiles' 6 W objects and bias of 4 KiB: the busiest
    qkv = bands * 9 * (6 * cycles.MATMUL_64x64x32 + cycles.ZERO_64x32 + cycles.BIAS_64x32 + cycles.ROUND_64x32)
    qkv_stream = bands * 9 * 7 * 4096
    qkv_ddr = 2 * (5 * m * d + bands * n // 32 * (d // 64 + 1) * 2048 + m * n)
    assert sum(p.compute_ms for p in norm_qkv) == pytest.approx((norm + qkv) / 1e6)
    assert sum(p.ddr_mib for p in norm_qkv) == pytest.approx((norm_ddr + qkv_ddr) / 2**20)
    ddr_ms = [b / (phoenix.ddr_gbs * 1e9) * 1e3 for b in (norm_ddr, qkv_ddr)]
    expected = (max(norm / 1e6, norm_stream / 4 / 1e6, ddr_ms[0]) + max(qkv / 1e6, qkv_stream / 4 / 1e6, ddr_ms[1]))
    assert sum(p.ms for p in norm_qkv) == pytest.approx(expected)
    assert first.cores == 16 and first.ms == pytest.approx(sum(p.ms for p in first.parts) + phoenix.dispatch_ms)
    assert len(rows) == 10      # mel, the first chain (the stem opens it), 2 per layer
    # the mel design's busiest core (a column with 2 of the 7 bin groups and a mel chunk), per band:
    # 2 groups x 2 halves of 13 K chunks, then a chunk's 7 K chunks and its log10, then its finish
    mel = 12 * (4 * (cycles.MEL_ZERO_64x32 + 13 * cycles.MEL_MATMUL_64x32x32 + cycles.MEL_POWER_64x32)
                + cycles.MEL_ZERO_64x32 + 7 * cycles.MEL_MATMUL_64x32x32 + cycles.MEL_LOG10_MAX_64x32
                + cycles.MEL_FINISH_64x32) + 3 * cycles.MEL_MAXIMUM
    assert by_node["mel"].cores == 16 and by_node["mel"].compute_ms == pytest.approx(mel / 1e6)
    assert by_node["mel"].bound == "compute"
    text = format_schedule(tiny_graph, PRESETS["phoenix"])
    assert text.startswith("PROJECTION (not measured)") and "largest terms: attnv_step_64" in text
    # an attention step costs its fixed part and, per 4-row band that rescales, ATTN_RESCALE_BAND
    steps = {share: by_node_of(project_schedule(tiny_graph, replace(phoenix, attention_rescale=share)))
             ["layers.0.self_attn"].kernel_ms["attnv_step_64"] for share in (0.0, 1.0)}
    per_step = (steps[1.0] - steps[0.0]) / (16 * cycles.ATTN_RESCALE_BAND)      # ms per step and cycle
    assert steps[0.0] == pytest.approx(per_step * cycles.ATTN_STEP)
    assert by_node["layers.0.self_attn"].kernel_ms["attnv_step_64"] == pytest.approx(
        per_step * round(cycles.ATTN_STEP + 16 * cycles.ATTN_RESCALE_SHARE * cycles.ATTN_RESCALE_BAND))


def by_node_of(rows):
    """Projected rows by their node (a dispatch's nodes, for the schedule)."""
    return {r.node: r for r in rows}


def test_cycle_estimates_are_the_ones_the_sources_derive():
    from kernels.aie import cycles
    from kernels.aie.host import HERE

    sources = {"MATMUL_64x64x32": "matmul/mm_vec.cc", "ZERO_64x32": "matmul/mm_vec.cc",
               "BIAS_64x32": "matmul/mm_vec.cc", "BIAS_GELU_64x32": "matmul/mm_vec.cc",
               "ROUND_64x32": "matmul/mm_vec.cc", "ADD_ROUND_64x32": "matmul/mm_vec.cc",
               "ATTN_STEP": "attention/attention_vec.cc", "ATTN_RESCALE_BAND": "attention/attention_vec.cc",
               "ATTN_INIT": "attention/attention_vec.cc",
               "ATTN_FINISH": "attention/attention_vec.cc", "ATTN_V_LAYOUT": "attention/attention_vec.cc",
               "LAYERNORM_ROW_PER_16": "layernorm/layernorm_vec.cc", "LAYERNORM_ROW": "layernorm/layernorm_vec.cc",
               **{name: "matmul/mm_vec.cc" for name in ("LN_SUM_64x64", "LN_SQDEV_64x64", "LN_MEAN_64", "LN_RSTD_64",
                                                        "LN_NORM_64x32")},
               **{name: "mel/mel_vec.cc" for name in ("MEL_MATMUL_64x32x32", "MEL_ZERO_64x32", "MEL_POWER_64x32",
                                                      "MEL_LOG10_MAX_64x32", "MEL_MAXIMUM", "MEL_FINISH_64x32")}}
    for name, source in sources.items():
        value = getattr(cycles, name)
        text = (HERE / source).read_text()
        assert f"~{value}" in text or f"x {value} instructions" in text, f"{name} = {value} is not in {source}"
