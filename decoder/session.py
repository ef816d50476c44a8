"""The ONNX decoder under ONNX Runtime, with a preallocated KV cache bound by IO binding.

Each layer's self-attention cache is one (B, H, n_text_ctx, d_head) numpy buffer
per K and V, wrapped once as an OrtValue (which shares the memory). A step feeds
only the new tokens; the graph returns their keys/values and the host writes them
into the cache at `offset`: no step copies the whole cache.
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


@dataclass
class KVCache:
    keys: list[np.ndarray]                 # per layer (B, H, n_ctx, d_head)
    values: list[np.ndarray]
    length: int = 0                        # slots filled
    _bound: list = field(default_factory=list)
    _io: object = None                     # the IOBinding of the last step (see DecoderSession._binding)
    _io_cross: object = None
    _io_alignment: bool = False
    _io_names: list = field(default_factory=list)

    @property
    def batch(self) -> int:
        return self.keys[0].shape[0]

    def reorder(self, rows) -> None:
        """Keep batch rows `rows` (beam search), in place so the bound OrtValues stay valid."""
        rows = np.asarray(rows)
        for buf in self.keys + self.values:
            buf[:] = buf[rows]


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

    def new_cache(self, batch: int) -> KVCache:
        d = self.dims
        shape = (batch, d.n_text_head, d.n_text_ctx, d.n_text_state // d.n_text_head)
        cache = KVCache([np.zeros(shape, np.float32) for _ in range(d.n_text_layer)],
                        [np.zeros(shape, np.float32) for _ in range(d.n_text_layer)])
        cache._bound = [(self._ort.OrtValue.ortvalue_from_numpy(k), self._ort.OrtValue.ortvalue_from_numpy(v))
                        for k, v in zip(cache.keys, cache.values)]
        return cache

    def widen(self, cache: KVCache, batch: int) -> KVCache:
        """A cache of `batch` rows, each a copy of `cache`'s single row."""
        if batch == cache.batch:
            return cache
        wide = self.new_cache(batch)
        for src, dst in zip(cache.keys + cache.values, wide.keys + wide.values):
            dst[:, :, :cache.length] = src[:, :, :cache.length]
        wide.length = cache.length
        return wide

    def step(self, tokens: np.ndarray, cache: KVCache, cross: list, alignment: bool = False, logits_from: int = 0):
        """Run the new `tokens` (B, S); returns logits (B, S - logits_from, V) of the positions from
        `logits_from` on [and alignment (B, n_heads, S, T)]."""
        tokens = np.ascontiguousarray(tokens, dtype=np.int64)
        b, s = tokens.shape
        if cache.length + s > self.dims.n_text_ctx:
            raise AmanuensisError(f"decoder context full: {cache.length} + {s} tokens > {self.dims.n_text_ctx}")
        binding, names = self._binding(cache, cross, alignment and self.has_alignment)
        binding.bind_cpu_input(io.INPUT_IDS, tokens)
        binding.bind_cpu_input(io.OFFSET, np.array(cache.length, np.int64))
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

    def _binding(self, cache: KVCache, cross: list, alignment: bool):
        """The cache's IOBinding with its K/V and `cross` bound, and the output names. Kept on the
        cache and built again only when `cross` or the wanted outputs change: binding every input
        at every step cost ~10% of an int8 step."""
        if cache._io is None or cache._io_cross is not cross or cache._io_alignment != alignment:
            binding = self.session.io_binding()
            for i, ((k, v), (ck, cv)) in enumerate(zip(cache._bound, cross)):
                binding.bind_ortvalue_input(io.past_key(i), k)
                binding.bind_ortvalue_input(io.past_value(i), v)
                binding.bind_ortvalue_input(io.cross_key(i), ck)
                binding.bind_ortvalue_input(io.cross_value(i), cv)
            layers = range(self.dims.n_text_layer)
            names = [io.LOGITS] + [name for i in layers for name in (io.new_key(i), io.new_value(i))]
            names += [io.ALIGNMENT] if alignment else []
            cache._io, cache._io_cross, cache._io_alignment, cache._io_names = binding, cross, alignment, names
        return cache._io, cache._io_names

    def bind_cross(self, cross_kv: list[np.ndarray]) -> list:
        """Each decoder layer's cross-attention [K | V] (n_audio_ctx, 2·d) of one window, from the encoder's
        backend, as the (K, V) OrtValues of shape (1, H, T, d_head) the graph takes; once per window."""
        return self.bind_cross_rows([cross_kv], 1)[0]

    def bind_cross_rows(self, rows, n: int) -> tuple[list, list[list]]:
        """`n` windows' cross-attention inputs (an iterable of bind_cross's argument, consumed one window
        at a time so each encoder output can be freed once copied) as (the batch's (K, V) OrtValues
        (n, H, T, d_head) per layer, each window's own (1, H, T, d_head) OrtValues sharing that memory)."""
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
        value = self._ort.OrtValue.ortvalue_from_numpy
        batch = [(value(k), value(v)) for k, v in kv]
        own = [[(value(k[i:i + 1]), value(v[i:i + 1])) for k, v in kv] for i in range(n)]
        return batch, own
