"""The host executor of the IRON designs (kernels/aie/iron_host.py): each design's data movement,
run with the host build of the kernels it places, against the same kernels called directly; and
the hardware limits the executor checks."""
from __future__ import annotations

import ctypes

import numpy as np
import pytest

from kernels.aie import iron_host
from kernels.aie.iron_host import DesignError
from kernels.emu import EmuBackend
from kernels.frontend import N_FRAMES, N_SAMPLES

ml_dtypes = pytest.importorskip("ml_dtypes")
TILE = 64
U16, F32 = ctypes.POINTER(ctypes.c_uint16), ctypes.POINTER(ctypes.c_float)


@pytest.fixture(scope="module")
def lib():
    if not __import__("shutil").which("g++"):
        pytest.skip("g++ is needed to build the kernels for the host")
    from kernels.aie import host

    return host.load()


def bf16(x) -> np.ndarray:
    return np.asarray(x, np.float32).astype(ml_dtypes.bfloat16)


def p(a: np.ndarray):
    return a.ctypes.data_as(F32 if a.dtype == np.float32 else U16)


def test_gelu_design_equals_the_kernel_called_directly(lib):
    program = iron_host.resolve(iron_host.design("gelu").amanuensis_gelu, 3 * 4096)
    x = bf16(np.random.default_rng(0).standard_normal(3 * 4096) * 3)
    y = np.zeros_like(x)
    report = program.run(x, y, lib=lib)
    direct = np.zeros_like(x)
    lib.gelu_bf16(p(x), p(direct), x.size)
    assert np.array_equal(y.view(np.uint16), direct.view(np.uint16))
    assert report.moved == {"x": 3, "y": 3}


@pytest.mark.parametrize("d", [384, 1280])
def test_whole_array_layernorm_equals_the_kernel(lib, d):
    """16 cores, row blocks split and joined in the memory tiles, gamma-beta broadcast: the same bits
    as the vectorised kernel over the whole tensor (kernels.aie.tiles.layernorm, which equals `emu`)."""
    from kernels.aie import tiles

    module = iron_host.design("layernorm")
    rows = 2 * 16 * module.rows_per_call(d)                       # two rounds of 16 cores
    program = iron_host.resolve(module.amanuensis_layernorm, rows, d)
    rng = np.random.default_rng(d)
    x = (rng.standard_normal((rows, d)) * 2 + 1).astype(np.float32)
    g, b = (1 + 0.1 * rng.standard_normal(d)).astype(np.float32), (0.1 * rng.standard_normal(d)).astype(np.float32)
    y = np.zeros((rows, d), ml_dtypes.bfloat16)
    report = program.run(tiles.bits(x).view(ml_dtypes.bfloat16),
                         tiles.bits(np.concatenate([g, b])).view(ml_dtypes.bfloat16), y, lib=lib)
    assert np.array_equal(y.view(np.uint16), tiles.bits(tiles.layernorm(lib, x, g, b)))
    assert report.workers == 16 and report.moved["gamma_beta_all"] == 1
    assert max(sum(b for _, b in core) for core in report.memory) <= iron_host.CORE_MEMORY


@pytest.mark.parametrize("m, k, n, gelu, residual, cols", [
    (256, 192, 256, True, False, 4),          # fc1-like: GELU, two 128-column passes per core
    (512, 128, 128, False, True, 4),          # out_proj/fc2-like: residual, two 256-row bands
    (256, 64, 256, False, True, 8),           # Strix: 8 columns
    (256, 128, 384, True, True, 8),           # 6 pairs of column tiles on 8 columns: 2 columns idle
    (256, 128, 640, False, True, 8),          # 10 pairs on 8 columns: 2 of them take a second
    (512, 64, 192, False, False, 4),          # 3 pairs on 4 columns: one column idle
    (1536, 384, 384, False, True, 4),         # tiny.en's out_proj at its real shape
])
def test_whole_array_matmul_equals_the_tiled_kernels(lib, m, k, n, gelu, residual, cols):
    """4 rows x cols cores, A broadcast along rows and W (with bias and residual) down columns, C joined
    in the memory tiles: the same bits as kernels.aie.tiles.linear (which equals `emu`), and every
    core's buffers within its 64 KiB."""
    from kernels.aie import tiles

    rng = np.random.default_rng(m + k + n)
    x, w = rng.standard_normal((m, k)).astype(np.float32), (rng.standard_normal((k, n)) / 8).astype(np.float32)
    b = rng.standard_normal(n).astype(np.float32)
    res = rng.standard_normal((m, n)).astype(np.float32) if residual else None
    program = iron_host.resolve(iron_host.design("matmul").amanuensis_matmul, m, k, n, gelu, residual, cols)
    out = np.zeros((m, n), ml_dtypes.bfloat16)
    r = tiles.bits(res) if residual else np.zeros((m, n), np.uint16)
    report = program.run(tiles.bits(x).view(ml_dtypes.bfloat16), tiles.pack_linear(w, b).view(ml_dtypes.bfloat16),
                         r.view(ml_dtypes.bfloat16), out, lib=lib)
    assert np.array_equal(out.view(np.uint16), tiles.bits(tiles.linear(lib, x, w, b, gelu, res)))
    assert report.workers == 4 * cols
    assert max(sum(b for _, b in core) for core in report.memory) <= 50 * 1024
    assert report.moved["a0_in"] == m // 256 * -(-n // (64 * cols)) * k // 64      # A once per round of pairs


def test_whole_array_matmul_refuses_shapes_it_does_not_tile():
    with pytest.raises(AssertionError, match="N of 64"):
        iron_host.resolve(iron_host.design("matmul").amanuensis_matmul, 256, 64, 80, False, False, 4)
    with pytest.raises(AssertionError, match="multiple of 256"):
        iron_host.resolve(iron_host.design("matmul").amanuensis_matmul, 200, 64, 64, False, False, 4)


@pytest.mark.parametrize("seq, heads, cols", [(100, 2, 4), (300, 6, 4), (300, 6, 8)])
def test_whole_array_attention_equals_the_tiled_kernels(lib, seq, heads, cols):
    """Heads over the columns, query tiles over the rows, K and V on one broadcast stream: the same bits
    as kernels.aie.tiles.attention (which equals `emu`), from the QKV projection's output as it stands
    (Q pre-scaled by 1/8), within every limit the executor checks."""
    from kernels.aie import tiles

    module = iron_host.design("attention")
    rows, d = module.padded_rows(seq), heads * TILE
    qkv = tiles.from_bits(tiles.bits(np.random.default_rng(seq).standard_normal((seq, 3 * d)).astype(np.float32)))
    device = np.zeros((rows, 3 * d), np.float32)
    device[:seq] = qkv
    device[:, :d] *= 0.125
    out = np.zeros((rows, d), ml_dtypes.bfloat16)
    report = iron_host.resolve(module.amanuensis_attention, seq, heads, cols).run(
        tiles.bits(device).view(ml_dtypes.bfloat16), out, lib=lib)
    assert np.array_equal(out.view(np.uint16)[:seq], tiles.bits(tiles.attention(lib, qkv, heads)))
    assert report.workers == 4 * min(cols, heads * rows // 256)        # items of (head, 256 rows) over columns
    assert max(sum(b for _, b in core) for core in report.memory) == 59904      # 58.5 KiB of 64


@pytest.mark.parametrize("n_mels, cols", [(80, 4), pytest.param(128, 8, marks=pytest.mark.slow)])
def test_the_whole_array_mel_front_end_equals_the_emulator(lib, n_mels, cols):
    """The log-mel of a 30 s window in three phases of one dispatch (spectrum and power; mel energies,
    log10 and each core's maximum; the window's maximum and the finish) through the host executor:
    the same bits as `emu`, within a core's 64 KiB."""
    from kernels.aie import tiles

    module = iron_host.design("mel")
    samples = (0.1 * np.random.default_rng(n_mels).standard_normal(N_SAMPLES)).astype(np.float32)
    samples[:16000] = 0                                    # a silent second: the floor at max - 8
    out = np.zeros((module.FRAMES_PADDED, module.mel_columns(n_mels)), np.float32)
    program = iron_host.resolve(module.amanuensis_mel, n_mels, cols)
    report = program.run(tiles.mel_samples(samples, module.SAMPLES), tiles.pack_mel(n_mels).view(ml_dtypes.bfloat16),
                         np.zeros(module.scratch_layout(n_mels)[2], np.float32), out.reshape(-1), lib=lib)
    np.testing.assert_array_equal(out[:N_FRAMES, :n_mels], EmuBackend().log_mel(samples, n_mels))
    assert report.workers == 4 * cols
    assert max(sum(b for _, b in core) for core in report.memory) == 54400        # 53.1 KiB of 64


def _chain_operands(phases, m, rng):
    """Random weights for each phase of a chain, and its params blob (chain_layout's order)."""
    from kernels.aie import tiles

    weights, blobs = [], []
    for ph in phases:
        if hasattr(ph, "n"):
            w = (rng.standard_normal((ph.k, ph.n)) / 8).astype(np.float32)
            b = rng.standard_normal(ph.n).astype(np.float32)
            weights.append((w, b))
            blobs.append(tiles.pack_linear(w, b).reshape(-1))
        else:
            g = (1 + 0.1 * rng.standard_normal(ph.d)).astype(np.float32)
            b = rng.standard_normal(ph.d).astype(np.float32)
            weights.append((g, b))
            blobs.append(tiles.pack_norm(g, b).reshape(-1))
    return weights, np.concatenate(blobs)


@pytest.mark.parametrize("m, d, cols", [(256, 128, 4), (512, 256, 8), (256, 384, 8)])
def test_a_chain_of_phases_equals_the_kernels_one_op_at_a_time(lib, m, d, cols):
    """An encoder layer's MLP half as one dispatch (out-projection + residual, layernorm, fc1 + GELU,
    fc2 + residual of the out-projection's output) and its first dispatch (layernorm, QKV): the same
    bits as the ops one at a time through kernels.aie.tiles (which equal `emu`); columns without a K
    chunk of the layernorm to normalise (d 128 on 4 columns, 256 and 384 on 8) only pass its tiles on,
    and so do columns without an output tile in a partial round (N 384 on 8 columns)."""
    from kernels.aie import tiles

    module = iron_host.design("matmul")
    Linear, Norm = module.Linear, module.Norm
    rng = np.random.default_rng(d)
    x = (rng.standard_normal((m, d)) * 2 + 1).astype(np.float32)
    attn = rng.standard_normal((m, d)).astype(np.float32)
    mlp = [Linear(d, d, residual="side"), Norm(d), Linear(d, 2 * d, gelu=True), Linear(2 * d, d, residual="p0")]
    weights, params = _chain_operands(mlp, m, rng)
    _, _, _, scratch_size = module.chain_layout(m, mlp)
    program = iron_host.resolve(module.amanuensis_chain, m, mlp, cols)
    out = np.zeros(m * d, np.uint16)
    report = program.run(*(a.view(ml_dtypes.bfloat16) for a in (
        tiles.bits(attn).reshape(-1), tiles.bits(x).reshape(-1), params, np.zeros(scratch_size, np.uint16), out)),
        lib=lib)
    h1 = tiles.linear(lib, attn, *weights[0], False, x)
    h2 = tiles.linear(lib, tiles.layernorm(lib, h1, *weights[1]), *weights[2], True, None)
    assert np.array_equal(out, tiles.bits(tiles.linear(lib, h2, *weights[3], False, h1)).reshape(-1))
    assert max(sum(b for _, b in core) for core in report.memory) <= 54 * 1024

    first = [Norm(d), Linear(d, 3 * d)]
    weights, params = _chain_operands(first, m, rng)
    _, _, _, scratch_size = module.chain_layout(m, first)
    out = np.zeros(m * first[1].n, np.uint16)
    iron_host.resolve(module.amanuensis_chain, m, first, cols).run(*(a.view(ml_dtypes.bfloat16) for a in (
        tiles.bits(x).reshape(-1), np.zeros(1, np.uint16), params, np.zeros(scratch_size, np.uint16), out)), lib=lib)
    expected = tiles.linear(lib, tiles.layernorm(lib, x, *weights[0]), *weights[1], False, None)
    assert np.array_equal(out, tiles.bits(expected).reshape(-1))


def test_an_access_pattern_deeper_than_the_dma_is_refused():
    tap = iron_host.TensorAccessPattern((4, 4, 4, 4, 4), 0, [4] * 5, [256, 64, 16, 4, 1])
    with pytest.raises(DesignError, match="at most 4"):
        tap.indices()
    assert list(iron_host.TensorAccessPattern((8, 8), 2, [2, 2], [8, 1]).indices()) == [2, 3, 10, 11]


def test_the_whole_array_designs_stay_within_the_dma(lib):
    """Every design at its encoder shapes passes the DMA check: channels per core, memory tile and
    shim tile, buffer descriptors in flight, access patterns (tiny.en and large-v3; Phoenix and Strix)."""
    for cols in (4, 8):
        for d in (384, 1280):
            iron_host.resolve(iron_host.design("layernorm").amanuensis_layernorm, 1536, d, cols=cols).check_dma()


LARGE_V3 = dict(n_mels=128, n_audio_ctx=1500, n_audio_state=1280, n_audio_head=20, n_audio_layer=32,
                n_audio_mlp=5120, n_vocab=51866, n_text_ctx=448, n_text_state=1280, n_text_head=20,
                n_text_layer=32, n_text_mlp=5120)


@pytest.mark.parametrize("size", ["tiny", "large-v3"])
@pytest.mark.parametrize("cols", [4, 8])
def test_the_encoder_is_two_dispatches_a_layer_within_the_hardware(tiny, size, cols):
    """The schedule of a whole encoder (with the decoder's cross-attention K/V projections): per layer
    one attention and one chain (its out-projection through the next layer's QKV projection), plus
    the convolutions and the first chain; every design in it within a core's memory, a memory tile's
    and the DMA's limits."""
    from encoder.network import ModelDimensions, build_encoder_graph
    from kernels.aie.design_runner import Dispatch, plan_dispatches

    dims = tiny.dims if size == "tiny" else ModelDimensions(**LARGE_V3)
    graph = build_encoder_graph(dims, cross_kv=True)
    plan = plan_dispatches(graph.nodes, graph.shapes, dims.n_audio_ctx, cols)
    dispatches = [d for d in plan if isinstance(d, Dispatch)]
    assert [d.kernel for d in dispatches].count("attention") == dims.n_audio_layer
    assert [d.kernel for d in dispatches].count("chain") == dims.n_audio_layer + 1
    assert len(dispatches) == 2 * dims.n_audio_layer + 2      # + mel, and the stem in the first chain
    assert [n for n in plan if not isinstance(n, Dispatch)] == []
    last = dispatches[-1]
    tail = [f"layers.{dims.n_audio_layer - 1}.fc2", "layer_norm", *(f"cross_kv.{i}" for i in range(dims.n_text_layer))]
    assert [n.name for n in last.nodes][-len(tail):] == tail
    for kernel, shape in {(d.kernel, d.shape) for d in dispatches}:
        program = iron_host.resolve_design(kernel, *shape)
        program.check_memory()
        program.check_dma()


@pytest.mark.parametrize("sizes, strides, message", [
    ([4, 2048], [2048, 1], "innermost dimension is 1024 words: a shim tile DMA takes at most 1023"),
    ([65, 2, 4, 64], [0, 64, 128, 1], r"iteration\) has size 65: a DMA iterates at most 64"),
    ([2, 64, 64], [64, 4096, 2], "innermost stride is 2: below 32-bit data it must be 1"),
    ([64, 3], [3, 1], "moves 6 bytes, not a multiple of 4"),
    ([2, 2, 64, 64], [0, 1 << 22, 64, 1], "a stride of 2097152 words: a shim tile DMA's largest is 1048576"),
])
def test_access_patterns_beyond_the_dma_are_refused(sizes, strides, message):
    with iron_host.iron_modules():
        from aie.iron import ObjectFifo, Program, Runtime

        n = int(np.prod(sizes))
        of = ObjectFifo(np.ndarray[(n,), np.dtype[ml_dtypes.bfloat16]], name="x")
        rt = Runtime()
        with rt.sequence(np.ndarray[(1 << 24,), np.dtype[ml_dtypes.bfloat16]]) as (x,):
            rt.fill(of.prod(), x, iron_host.TensorAccessPattern((1 << 24,), 0, sizes, strides))
        program = Program(None, rt).resolve_program()
    with pytest.raises(DesignError, match=message):
        program.check_dma()


def test_channels_and_buffer_descriptors_beyond_the_hardware_are_refused():
    with iron_host.iron_modules():
        from aie.iron import ObjectFifo, Program, Runtime, Worker
        from aie.iron.device import Tile

        ins = [ObjectFifo(_f32(4), name=f"in{i}") for i in range(3)]
        out = ObjectFifo(_f32(4), name="out")
        rt = Runtime()
        with rt.sequence(_f32(4), _f32(4)) as (x, y):
            rt.start(Worker(lambda *a: None, [i.cons() for i in ins] + [out.prod()]))
            for i in ins:
                rt.fill(i.prod(), x, placement=Tile(0, 0))
            for _ in range(17):
                rt.drain(out.cons(), y, placement=Tile(1, 0))
        program = Program(None, rt).resolve_program()
    with pytest.raises(DesignError, match=r"worker 0 has 3 input fifos \(in0, in1, in2\): a core has 2"):
        program.check_dma()
    program.workers[0].fn_args = program.workers[0].fn_args[1:]
    with pytest.raises(DesignError, match=r"shim tile \(0, 0\) fills 3 fifos .*: it has 2 DMA channels"):
        program.check_dma()
    program.runtime.tasks = [t for t in program.runtime.tasks if t.kind != "fill"]
    with pytest.raises(DesignError, match=r"17 transfers on the shim tile \(1, 0\) at once: it has 16 buffer"):
        program.check_dma()


def _tiny_design(produced: int, consumed: int, depth: int = 2):
    """A worker that consumes `consumed` objects of a fifo that a fill feeds `produced`."""
    from aie.iron import ObjectFifo, Program, Runtime, Worker

    obj = np.ndarray[(4,), np.dtype[np.float32]]
    of_in, of_out = ObjectFifo(obj, name="in", depth=depth), ObjectFifo(obj, name="out", depth=depth)

    def core(i, o):
        for _ in range(consumed):
            a, b = i.acquire(1), o.acquire(1)
            b[:] = a * 2
            i.release(1)
            o.release(1)

    worker = Worker(core, [of_in.cons(), of_out.prod()], while_true=False)
    rt = Runtime()
    with rt.sequence(np.ndarray[(4 * produced,), np.dtype[np.float32]],
                     np.ndarray[(4 * consumed,), np.dtype[np.float32]]) as (x, y):
        rt.start(worker)
        rt.fill(of_in.prod(), x)
        rt.drain(of_out.cons(), y, wait=True)
    return Program(None, rt).resolve_program()


def test_a_design_that_waits_forever_is_reported(monkeypatch):
    monkeypatch.setattr(iron_host, "TIMEOUT", 1.0)
    with iron_host.iron_modules():
        ok = _tiny_design(3, 3)
        x, y = np.arange(12, dtype=np.float32), np.zeros(12, np.float32)
        ok.run(x, y, lib=object())
        assert np.array_equal(y, 2 * x)
        stuck = _tiny_design(10, 3)               # more objects than the buffers on the way hold
        with pytest.raises(DesignError, match="no progress .* in: prod .*cons 2 full, 0 free of 2"):
            stuck.run(np.zeros(40, np.float32), np.zeros(12, np.float32), lib=object())


def _f32(*shape):
    return np.ndarray[shape, np.dtype[np.float32]]


def test_links_broadcast_and_stream_order():
    """forward with dims_to_stream (a transpose on the way), split to two workers, join back, and a
    broadcast to a third worker: the data arrive where IRON says they do."""
    with iron_host.iron_modules():
        from aie.iron import ObjectFifo, Program, Runtime, Worker
        from aie.iron.device import Tile

        of_in = ObjectFifo(_f32(4, 4), name="in")
        # the memory tile sends each 4 x 4 object column by column: the consumer receives its transpose
        of_t = of_in.cons().forward(Tile(0, 1), name="t", dims_to_stream=[(4, 1), (4, 4)])
        halves = of_t.cons().split([0, 8], Tile(0, 1), obj_types=[_f32(8), _f32(8)], names=["h0", "h1"])
        of_out = ObjectFifo(_f32(16), name="out")
        parts = of_out.prod().join([0, 8], Tile(0, 1), obj_types=[_f32(8), _f32(8)], names=["p0", "p1"])
        of_seen = ObjectFifo(_f32(8), name="seen")

        def add(src, dst, amount):
            a, b = src.acquire(1), dst.acquire(1)
            b[:] = a + amount
            src.release(1)
            dst.release(1)

        def copy(src, dst):
            add(src, dst, 0.0)

        workers = [Worker(add, [halves[i].cons(), parts[i].prod(), 100.0 * (i + 1)], while_true=True)
                   for i in range(2)]
        workers.append(Worker(copy, [halves[0].cons(), of_seen.prod()], while_true=True))      # broadcast
        rt = Runtime()
        with rt.sequence(_f32(32), _f32(32), _f32(16)) as (x, y, seen):
            rt.start(*workers)
            rt.fill(of_in.prod(), x)
            rt.drain(of_out.cons(), y, wait=True)
            rt.drain(of_seen.cons(), seen, wait=True)
        program = Program(None, rt).resolve_program()
    x = np.arange(32, dtype=np.float32)
    y, seen = np.zeros(32, np.float32), np.zeros(16, np.float32)
    report = program.run(x, y, seen, lib={})
    expected = np.concatenate([m.reshape(4, 4).T.reshape(-1) for m in (x[:16], x[16:])])
    expected = expected + np.tile(np.repeat([100.0, 200.0], 8), 2)
    np.testing.assert_array_equal(y, expected)
    np.testing.assert_array_equal(seen, np.concatenate([x[:16].reshape(4, 4).T.reshape(-1)[:8],
                                                        x[16:].reshape(4, 4).T.reshape(-1)[:8]]))
    assert report.moved["in"] == 2 and report.moved["h0"] == 2


def test_a_memory_tile_over_its_size_is_refused():
    with iron_host.iron_modules():
        from aie.iron import ObjectFifo, Program, Runtime
        from aie.iron.device import Tile

        big = ObjectFifo(_f32(64 * 1024), depth=3, name="big")     # three 256 KiB objects
        out = big.cons().forward(Tile(0, 1), name="big_out")
        rt = Runtime()
        with rt.sequence(_f32(64 * 1024), _f32(64 * 1024)) as (x, y):
            rt.fill(big.prod(), x)
            rt.drain(out.cons(), y, wait=True)
        program = Program(None, rt).resolve_program()
    with pytest.raises(DesignError, match="holds 786432 bytes of linked fifos, it has 524288"):
        program.check_memory()


def _copy_design(drains_call_cons: bool, dims_to_stream=None):
    """A worker copies 4-element objects; two fills and two drains of half the data each, the drains
    issued (wait=True) before the fills, as mlir-aie's own designs do."""
    from aie.iron import ObjectFifo, Program, Runtime, Worker

    obj = _f32(4)
    of_in = ObjectFifo(obj, name="in", dims_to_stream=dims_to_stream)
    of_out = ObjectFifo(obj, name="out")

    def core(i, o):
        a, b = i.acquire(1), o.acquire(1)
        b[:] = a
        i.release(1)
        o.release(1)

    rt = Runtime()
    with rt.sequence(_f32(16), _f32(16)) as (x, y):
        rt.start(Worker(core, [of_in.cons(), of_out.prod()]))
        out = None if drains_call_cons else of_out.cons()
        group = rt.task_group()
        for half in range(2):
            tap = iron_host.TensorAccessPattern((16,), 8 * half, [1, 8], [0, 1])
            rt.drain(of_out.cons() if drains_call_cons else out, y, tap, wait=True, task_group=group)
        for half in range(2):
            rt.fill(of_in.prod(), x, iron_host.TensorAccessPattern((16,), 8 * half, [1, 8], [0, 1]), task_group=group)
        rt.finish_task_group(group)
    return Program(None, rt).resolve_program()


@pytest.mark.parametrize("drains_call_cons", [False, True])
def test_transfers_run_in_turn_and_are_awaited_with_their_group(drains_call_cons):
    """Drains waited on before the fills that feed them do not block the sequence; each endpoint's
    transfers keep their order; drains that each call cons() share one consumer (IRON merges them)."""
    with iron_host.iron_modules():
        program = _copy_design(drains_call_cons)
    x, y = np.arange(16, dtype=np.float32), np.zeros(16, np.float32)
    program.run(x, y, lib={})
    np.testing.assert_array_equal(y, x)


def test_a_stream_pattern_shorter_than_the_object_repeats():
    """dims_to_stream covering part of an object repeats its outermost dimension over the whole object."""
    with iron_host.iron_modules():
        program = _copy_design(False, dims_to_stream=[(1, 2), (2, 1)])        # pairs, repeated twice
    x, y = np.arange(16, dtype=np.float32), np.zeros(16, np.float32)
    program.run(x, y, lib={})
    np.testing.assert_array_equal(y, x)
    with iron_host.iron_modules():
        swapped = _copy_design(False, dims_to_stream=[(1, 1), (2, 2)])        # 0 2 | 1 3 within each object
    swapped.run(x, y, lib={})
    np.testing.assert_array_equal(y, x.reshape(-1, 2, 2).transpose(0, 2, 1).reshape(-1))


@pytest.mark.slow
@pytest.mark.parametrize("cols", [4, 8])
def test_the_stem_reads_its_windows_through_the_dma_and_equals_emu(lib, tiny, speech, cols):
    """tiny.en's stem on a real clip's log-mel through one chain: conv1 (3072 rows) and conv2 (stride 2,
    the positions its residual) read their input's rows 3 at a time from a buffer with a row of zeros
    before it (no patches made: the A stream's rows overlap), then layer 0's layernorm and QKV
    projection; every node equals `emu` bit for bit, in one dispatch, on Phoenix's 4 columns and Strix's 8."""
    from encoder.audio import load_audio
    from kernels.aie.design_runner import DesignRunner
    from kernels.emu import EmuBackend

    clip = next(c for c in speech if "LJ001-0001" in c.file)
    mel = tiny.encode(load_audio(clip.path)[:480000], keep=["mel"]).tensors["mel"]    # (3000, 80)
    weights = tiny.converted.read_encoder_weights()
    nodes = tiny.graph.nodes[1:5]                                    # conv1, embed, layernorm, QKV
    assert [n.kernel for n in nodes] == ["conv1d_k3", "conv1d_k3", "layernorm", "linear"]
    runner = DesignRunner(lib, cols)
    ours = runner.run_nodes(nodes, mel, 1500, weights)
    emu, theirs = EmuBackend(), {"mel": mel}
    for node in nodes:
        theirs[node.name] = getattr(emu, node.kernel)(*[theirs[t] for t in node.inputs],
                                                      *[weights[w] for w in node.weights], **dict(node.params))
    for node in nodes:                               # (no attention after the QKV here: Q as it stands)
        np.testing.assert_array_equal(ours[node.name], theirs[node.name], err_msg=node.name)
    assert ours["conv1"].shape == (3000, 384) and runner.dispatches == 1


def test_encoder_blocks_through_the_designs_equal_emu(lib, tiny, speech):
    """Blocks 0 and 1 of tiny.en on a real clip's activations, through the whole-array designs on the
    host executor, equal the `emu` backend bit for bit at every node. 5 dispatches: layernorm + QKV;
    attention; block 0's out-projection through block 1's QKV projection as one chain (block 1's
    out-projection then takes its residual from that chain's scratch); attention; block 1's
    out-projection .. fc2. Every tensor is kept as the device keeps it; the device holds Q pre-scaled
    by 1/8 (through the packed weights): exactly 1/8 of emu's."""
    from encoder.audio import load_audio
    from kernels.aie.design_runner import DesignRunner
    from kernels.emu import EmuBackend

    clip = next(c for c in speech if "LJ001-0001" in c.file)
    values = tiny.encode(load_audio(clip.path)[:480000], keep="all").tensors
    weights = tiny.converted.read_encoder_weights()
    first = [n.name for n in tiny.graph.nodes].index("layers.0.self_attn_layer_norm")
    nodes = tiny.graph.nodes[first:first + 14]                       # layers.0 and 1: norm, qkv, attention, ..., fc2
    x = values[nodes[0].inputs[0]]
    runner = DesignRunner(lib)
    ours = runner.run_nodes(nodes, x, x.shape[0], weights)
    emu, theirs = EmuBackend(), {nodes[0].inputs[0]: x}
    for node in nodes:
        kw = dict(node.params, **({"residual": theirs[node.residual]} if node.residual else {}))
        theirs[node.name] = getattr(emu, node.kernel)(*[theirs[t] for t in node.inputs],
                                                      *[weights[w] for w in node.weights], **kw)
    d = x.shape[1]
    for node, after in zip(nodes, nodes[1:] + [None]):
        got = ours[node.name]
        if after is not None and after.kernel == "attention":
            got = np.concatenate([got[:, :d] * 8, got[:, d:]], axis=1)
        np.testing.assert_array_equal(got, theirs[node.name], err_msg=node.name)
    assert runner.dispatches == 5


def test_a_chain_breaks_where_it_would_need_a_second_outside_residual_or_another_row_count():
    """plan_dispatches joins consecutive layernorms and linears while each reads the chain's input or an
    output made in it, the rows agree and at most one residual comes from outside (the side input)."""
    from kernels.aie.design_runner import Dispatch, plan_dispatches
    from kernels.graph import Node

    def node(name, kernel, source, rows=256, residual=None, weights=("w", "b")):
        return Node(name, kernel, (source,), weights, (rows, 128), 0, residual=residual)

    nodes = [node("n1", "layernorm", "x"), node("l1", "linear", "n1", residual="x"),
             node("l0", "linear", "l1", residual="z"),                   # x is the chain's input: z may join
             node("l2", "linear", "l0", residual="y"),                   # a second outside residual: breaks
             node("l3", "linear", "l2", residual="l2"),
             node("l4", "linear", "l3", rows=512),                       # other rows: breaks
             node("l5", "linear", "q")]                                  # an input from outside: breaks
    shapes = {"x": (256, 128), "y": (256, 128), "z": (256, 128), "q": (512, 128),
              **{n.name: n.shape for n in nodes}}
    plan = plan_dispatches(nodes, shapes, 256, 4)
    assert [[n.name for n in d.nodes] for d in plan] == [["n1", "l1", "l0"], ["l2", "l3"], ["l4"], ["l5"]]
    assert all(isinstance(d, Dispatch) and d.kernel == "chain" for d in plan)
    assert [d.side for d in plan] == ["z", "y", None, None]
    assert [getattr(ph, "residual", None) for ph in plan[0].shape[1]] == [None, "inp", "side"]   # l1: the input
    phases = plan[1].shape[1]
    assert phases[0].residual == "side" and phases[1].residual == "p0" and phases[1].source is None
