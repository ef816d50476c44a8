"""Open a converted model directory: manifest, dims, configs, encoder weights."""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from kernels.errors import AmanuensisError, BadOption
from weights_tools import layout, names
from weights_tools.convert import DECODER_FILES, FORMAT, FORMAT_VERSION, MANIFEST
from weights_tools.dims import ModelDimensions
from weights_tools.hf import read_json
from weights_tools.safetensors_io import read_safetensors

# 8-bit weights leave a quarter of fp32's bytes to read per token; on the 18 real clips of
# docs/performance.md the greedy transcripts equal fp32's, every one.
DEFAULT_DECODER_PRECISION = "int8"
DECODER_PRECISIONS = (DEFAULT_DECODER_PRECISION, *(p for p in DECODER_FILES if p != DEFAULT_DECODER_PRECISION))


@dataclass
class ConvertedModel:
    """A converted Amanuensis model directory (see convert.py for its files)."""

    path: Path
    manifest: dict
    config: dict
    dims: ModelDimensions

    @classmethod
    def open(cls, path: Path) -> ConvertedModel:
        path = Path(path)
        manifest = read_json(path / MANIFEST)
        if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
            raise AmanuensisError(f"{path / MANIFEST}: format {manifest.get('format')!r} version "
                                  f"{manifest.get('format_version')!r}; this Amanuensis reads {FORMAT} "
                                  f"version {FORMAT_VERSION}: convert the model again")
        config = read_json(path / "config.json")
        return cls(path, manifest, config, ModelDimensions.from_hf_config(config, str(path / "config.json")))

    @property
    def name(self) -> str:
        return Path(self.manifest.get("source", self.path)).name

    def read_encoder_weights(self) -> dict[str, np.ndarray]:
        """Encoder weights in the kernel layout, checked against the dims: read afresh on every call,
        so that whoever keeps them (a Runner, in its backend's layout) holds the only copy."""
        weights = read_safetensors(self.path / "encoder.safetensors")
        names.check_tensors(weights, layout.kernel_shapes(self.dims), str(self.path / "encoder.safetensors"))
        return weights

    @cached_property
    def generation_config(self) -> dict:
        path = self.path / "generation_config.json"
        return read_json(path) if path.is_file() else {}

    def decoder_onnx(self, precision: str = DEFAULT_DECODER_PRECISION) -> Path:
        """The decoder graph of `precision` (DECODER_PRECISIONS)."""
        if precision not in DECODER_PRECISIONS:
            raise BadOption("decoder_precision", f"unknown decoder precision {precision!r} "
                                                 f"(choose from: {', '.join(DECODER_PRECISIONS)})")
        return self.path / DECODER_FILES[precision]

    def cross_kv_weights(self) -> dict[str, np.ndarray]:
        """The decoder's cross-attention K/V projections in the kernel layout (run by the encoder's backend)."""
        wanted = layout.cross_kv_sources(self.dims)
        source = self.path / "decoder.safetensors"
        found = read_safetensors(source, only=wanted)    # not the whole decoder: its embedding is most of it
        if wanted - set(found):
            raise AmanuensisError(f"{source}: missing tensors {sorted(wanted - set(found))[:3]}")
        weights = layout.cross_kv_to_kernel(found, self.dims)
        names.check_tensors(weights, layout.cross_kv_shapes(self.dims), str(self.path / "decoder.safetensors"))
        return weights

    def decoder_weights(self) -> dict[str, np.ndarray]:
        """Decoder weights with Hugging Face names, checked against the dims."""
        weights = read_safetensors(self.path / "decoder.safetensors")
        names.check_tensors(weights, names.decoder_shapes(self.dims), str(self.path / "decoder.safetensors"))
        return weights
