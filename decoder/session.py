"""The ONNX decoder under ONNX Runtime, with a KV cache bound by IO binding.

Each layer's self-attention cache is one (B, H, capacity, d_head) numpy buffer
per K and V, wrapped as an OrtValue (which shares the memory). A step feeds
only the new tokens; the graph returns their keys/values and the host writes them
into the cache at `offset`: no step copies the whole cache. The capacity grows by
GROW_SLOTS as tokens come (up to n_text_ctx): a step's attention reads every
allocated slot, so a short cache makes a cheap step, which matters most when a
batch holds many rows.
"""
from __future__ import annotations

import platform
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kernels import settings
from kernels.errors import AmanuensisError
from weights_tools import decoder_io as io
from weights_tools.dims import ModelDimensions


def int8_caveat(cpuinfo: str = "/proc/cpuinfo") -> str | None:
    """Why int8 results may differ on this CPU, or None. Without VNNI, ONNX Runtime's x86 int8
    kernels multiply unsigned by signed bytes with VPMADDUBSW, which sums pairs of products in int16
    and saturates when both are large (its documented limitation). Our accuracy figures are from
    VNNI machines. Unknown CPUs (no /proc/cpuinfo) and non-x86 ones get no caveat."""
    if platform.machine().lower() not in ("x86_64", "amd64", "i686", "x86"):
        return None
    try:
        flags = next((line.split(":", 1)[1].split() for line in Path(cpuinfo).read_text().splitlines()
                      if line.startswith("flags")), None)
    except OSError:
        return None
    if flags is None or {"avx512_vnni", "avx_vnni"} & set(flags):
        return None
    return "this CPU has no VNNI, so ONNX Runtime's int8 products may saturate (see docs/performance.md)"


# Slots a cache grows by: a step's self-attention reads every allocated slot (masked beyond the filled
# ones), so the cache holds the filled slots and at most this many more.
GROW_SLOTS = 64


@dataclass
class KVCache:
    keys: list[np.ndarray]                 # per layer (B, H, capacity, d_head)
    values: list[np.ndarray]
    pad: np.ndarray                        # (B,) int64: each row's first slots that are padding
    length: int = 0                        # slots filled
    _bound: list = field(default_factory=list)
    _io: object = None                     # the IOBinding of the last step (see DecoderSession._binding)
    _io_cross: object = None
    _io_alignment: bool = False
    _io_names: list = field(default_factory=list)

    @property
    def batch(self) -> int:
        return self.keys[0].shape[0]

    @property
    def capacity(self) -> int:
        return self.keys[0].shape[2]

    def reorder(self, rows) -> None:
        """Keep batch rows `rows` (beam search), in place so the bound OrtValues stay valid."""
        rows = np.asarray(rows)
        for buf in self.keys + self.values + [self.pad]:
            buf[:] = buf[rows]


class CrossInputs:
    """The cross-attention keys and values of W windows as the graph takes them: per decoder layer K and V
    (W, H, n_audio_ctx, d_head), and OrtValues sharing their memory."""

    def __init__(self, arrays: list[tuple[np.ndarray, np.ndarray]], ort):
        value = ort.OrtValue.ortvalue_from_numpy
        self.arrays, self._ort = arrays, ort
        self.bound = [(value(k), value(v)) for k, v in arrays]

    @property
    def windows(self) -> int:
        return self.arrays[0][0].shape[0]

    def part(self, start: int, stop: int) -> CrossInputs:
        """Windows start .. stop - 1 of these, sharing their memory: never a copy (a batch's inputs are
        18 MB a window for tiny.en, and the whole batch stays alive until its replies are used)."""
        return CrossInputs([(k[start:stop], v[start:stop]) for k, v in self.arrays], self._ort)


class DecoderSession:
    """Runs decoder.onnx step by step."""

    def __init__(self, path: Path, dims: ModelDimensions, threads: int | None = None):
        import onnxruntime as ort  # only where something decodes: embed and convert do without it

        if not Path(path).is_file():
            raise AmanuensisError(f"{path}: the decoder graph is missing: convert the model again")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or settings.threads()
        options.inter_op_num_threads = 1
        # No arena: it grows in power-of-two chunks for the prefill's peak and keeps them. Measured on
        # 5 min of speech: peak resident memory 518 -> 470 MB, time within noise (+1%).
        options.enable_cpu_mem_arena = False
        self._ort = ort
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as e:          # ONNX Runtime's own exception types: a corrupt or foreign file
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise AmanuensisError(f"{path}: ONNX Runtime cannot load this decoder graph ({reason}): "
                                  "convert the model again") from None
        self.dims = dims
        self.has_alignment = any(o.name == io.ALIGNMENT for o in self.session.get_outputs())

    def new_cache(self, batch: int, capacity: int = GROW_SLOTS) -> KVCache:
        d = self.dims
        shape = (batch, d.n_text_head, min(capacity, d.n_text_ctx), d.n_text_state // d.n_text_head)
        cache = KVCache([np.zeros(shape, np.float32) for _ in range(d.n_text_layer)],
                        [np.zeros(shape, np.float32) for _ in range(d.n_text_layer)], np.zeros(batch, np.int64))
        cache._bound = [(self._ort.OrtValue.ortvalue_from_numpy(k), self._ort.OrtValue.ortvalue_from_numpy(v))
                        for k, v in zip(cache.keys, cache.values)]
        return cache

    def widen(self, cache: KVCache, group: int) -> KVCache:
        """A cache of `group` rows for each row of `cache`, copies of it, a row's copies together."""
        if group == 1:
            return cache
        return self.select_rows(cache, np.repeat(np.arange(cache.batch), group))

    def select_rows(self, cache: KVCache, rows, capacity: int | None = None) -> KVCache:
        """A new cache of `cache`'s rows `rows` (repeats allowed), with `capacity` slots (default: as many)."""
        out = self.new_cache(len(rows), capacity or cache.capacity)
        for src, dst in zip(cache.keys + cache.values, out.keys + out.values):
            dst[:, :, :cache.length] = src[np.asarray(rows), :, :cache.length]
        out.pad[:], out.length = cache.pad[np.asarray(rows)], cache.length
        return out

    def _make_room(self, cache: KVCache, slots: int) -> None:
        """Grow `cache` in place to hold `slots` (in steps of GROW_SLOTS): new buffers, the filled slots
        copied, the binding made again at the next step."""
        if slots <= cache.capacity:
            return
        grown = self.select_rows(cache, np.arange(cache.batch), -(-slots // GROW_SLOTS) * GROW_SLOTS)
        cache.keys, cache.values, cache._bound, cache._io = grown.keys, grown.values, grown._bound, None
        cache.pad = grown.pad

    def step(self, tokens: np.ndarray, cache: KVCache, cross: CrossInputs, alignment: bool = False,
             logits_from: int = 0):
        """Run the new `tokens` (B, S); returns logits (B, S - logits_from, V) of the positions from
        `logits_from` on [and alignment (B, n_heads, S, T)]."""
        tokens = np.ascontiguousarray(tokens, dtype=np.int64)
        b, s = tokens.shape
        if cache.length + s > self.dims.n_text_ctx:
            raise AmanuensisError(f"decoder context full: {cache.length} + {s} tokens > {self.dims.n_text_ctx}")
        self._make_room(cache, cache.length + s)
        binding, names = self._binding(cache, cross, alignment and self.has_alignment)
        binding.bind_cpu_input(io.INPUT_IDS, tokens)
        binding.bind_cpu_input(io.OFFSET, np.array(cache.length, np.int64))
        binding.bind_cpu_input(io.PAD, cache.pad)
        binding.bind_cpu_input(io.LOGITS_FROM, np.array(logits_from, np.int64))
        binding.clear_binding_outputs()             # last step's outputs would be taken as preallocated
        for name in names:
            binding.bind_output(name)
        self.session.run_with_iobinding(binding)
        outs = dict(zip(names, binding.copy_outputs_to_cpu()))
        for i in range(self.dims.n_text_layer):
            cache.keys[i][:, :, cache.length:cache.length + s] = outs[io.new_key(i)]
            cache.values[i][:, :, cache.length:cache.length + s] = outs[io.new_value(i)]
        cache.length += s
        return (outs[io.LOGITS], outs.get(io.ALIGNMENT)) if alignment else outs[io.LOGITS]

    def _binding(self, cache: KVCache, cross: CrossInputs, alignment: bool):
        """The cache's IOBinding with its K/V and `cross` bound, and the output names. Kept on the
        cache and built again only when `cross` or the wanted outputs change: binding every input
        at every step cost ~10% of an int8 step."""
        if cache._io is None or cache._io_cross is not cross or cache._io_alignment != alignment:
            binding = self.session.io_binding()
            for i, ((k, v), (ck, cv)) in enumerate(zip(cache._bound, cross.bound)):
                binding.bind_ortvalue_input(io.past_key(i), k)
                binding.bind_ortvalue_input(io.past_value(i), v)
                binding.bind_ortvalue_input(io.cross_key(i), ck)
                binding.bind_ortvalue_input(io.cross_value(i), cv)
            layers = range(self.dims.n_text_layer)
            names = [io.LOGITS] + [name for i in layers for name in (io.new_key(i), io.new_value(i))]
            names += [io.ALIGNMENT] if alignment else []
            cache._io, cache._io_cross, cache._io_alignment, cache._io_names = binding, cross, alignment, names
        return cache._io, cache._io_names

    def bind_cross(self, cross_kv: list[np.ndarray]) -> CrossInputs:
        """Each decoder layer's cross-attention [K | V] (n_audio_ctx, 2·d) of one window, from the encoder's
        backend, as the graph takes them; once per window."""
        return self.bind_cross_rows([cross_kv], 1)[0]

    def bind_cross_rows(self, rows, n: int) -> tuple[CrossInputs, list[CrossInputs]]:
        """`n` windows' cross-attention inputs (an iterable of bind_cross's argument, consumed one window
        at a time so each encoder output can be freed once copied) as (the batch's, each window's own
        sharing the batch's memory)."""
        d = self.dims
        heads, d_head = d.n_text_head, d.n_text_state // d.n_text_head
        # K and V apart: each stays under glibc's largest mmap threshold (32 MiB) up to batch 13 of tiny.en,
        # so a batch reuses the heap memory the last one freed instead of faulting in fresh pages
        # (measured: 3 batches of 8 bound in 0.65 s with one (2, n, ...) buffer per layer)
        kv = [(np.empty((n, heads, d.n_audio_ctx, d_head), np.float32),
               np.empty((n, heads, d.n_audio_ctx, d_head), np.float32)) for _ in range(d.n_text_layer)]
        for i, window in enumerate(rows):
            for (k, v), src in zip(kv, window):
                k[i], v[i] = src.reshape(d.n_audio_ctx, 2, heads, d_head).transpose(1, 2, 0, 3)
        batch = CrossInputs(kv, self._ort)
        return batch, [batch.part(i, i + 1) for i in range(n)]

    def row_bytes(self) -> int:
        """Bytes of one row of the self-attention cache at its largest (n_text_ctx slots)."""
        d = self.dims
        return 2 * d.n_text_layer * d.n_text_ctx * d.n_text_state * 4
