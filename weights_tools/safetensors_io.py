"""Read safetensors files with every length and offset checked; write them atomically.

Format: u64 little-endian header size, a JSON header mapping tensor names to
{dtype, shape, data_offsets: [begin, end]} (offsets relative to the end of the
header), then the raw data. We read it ourselves (not with the `safetensors`
package) so that bf16 loads via ml_dtypes and a hostile file ends in a clear
AmanuensisError instead of a crash or a huge allocation.
"""
from __future__ import annotations

import json
import math
import mmap
import struct
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from kernels.errors import AmanuensisError
from weights_tools.fileio import atomic_write

MAX_HEADER_BYTES = 100 * 1024 * 1024


_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32,
    "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
}


def _dtype(kind: str) -> np.dtype | None:
    """The numpy dtype of a safetensors dtype name, None for one we do not read."""
    if kind == "BF16":
        import ml_dtypes  # only for bf16 checkpoints: it takes ~0.7 s to import

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(_DTYPES[kind]) if kind in _DTYPES else None


def read_header(path: Path) -> tuple[dict, int]:
    """Return (header dict without __metadata__, byte offset where the data begins)."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise AmanuensisError(f"{path}: not a safetensors file (only {size} bytes)")
        (n,) = struct.unpack("<Q", raw)
        if n > min(MAX_HEADER_BYTES, size - 8):
            raise AmanuensisError(f"{path}: corrupt safetensors header length {n} (file has {size} bytes)")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise AmanuensisError(f"{path}: corrupt safetensors header ({e})") from None
    if not isinstance(header, dict):
        raise AmanuensisError(f"{path}: corrupt safetensors header (not a JSON object)")
    header.pop("__metadata__", None)
    return header, 8 + n


def read_safetensors(path: Path, dtype=np.float32, only=None) -> dict[str, np.ndarray]:
    """Load every tensor of a safetensors file (or those named in `only`) as numpy arrays of `dtype`.

    Each entry's dtype, shape and offsets are checked against the file size
    before any data is touched.
    """
    path = Path(path)
    header, start = read_header(path)
    size = path.stat().st_size
    out = {}
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        for name, info in header.items():
            try:
                kind, shape, (begin, end) = info["dtype"], info["shape"], info["data_offsets"]
            except (KeyError, TypeError, ValueError):
                raise AmanuensisError(f"{path}: tensor {name!r} has a malformed header entry") from None
            np_dtype = _dtype(kind) if isinstance(kind, str) else None
            if np_dtype is None:
                raise AmanuensisError(f"{path}: tensor {name!r} has unsupported dtype {kind!r}")
            if not (isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)):
                raise AmanuensisError(f"{path}: tensor {name!r} has an invalid shape {shape!r}")
            nbytes = math.prod(shape) * np_dtype.itemsize          # exact: numpy's int64 product can wrap
            if not (isinstance(begin, int) and isinstance(end, int)) or end - begin != nbytes \
                    or begin < 0 or start + end > size:
                raise AmanuensisError(
                    f"{path}: tensor {name!r} {kind}{shape} has offsets [{begin}, {end}] that do not fit "
                    f"its size or the file ({size} bytes): truncated or corrupt file")
            if only is None or name in only:
                out[name] = _copy_out(mm, np_dtype, nbytes, start + begin, shape, dtype)
    return out


def _copy_out(buf, src_dtype, nbytes, offset, shape, dtype) -> np.ndarray:
    """Copy one tensor out of the mmap (no view may outlive it) and convert it to `dtype`."""
    view = np.frombuffer(buf, dtype=src_dtype, count=nbytes // src_dtype.itemsize, offset=offset)
    return view.reshape(shape).astype(dtype, copy=True)


def write_safetensors(path: Path, tensors: dict[str, np.ndarray], metadata: dict | None = None) -> None:
    """Write fp32 tensors to `path` via a temporary file and a rename (never half-written)."""
    arrays = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in tensors.items()}
    text = {k: str(v) for k, v in (metadata or {}).items()}
    atomic_write(path, lambda tmp: save_file(arrays, str(tmp), metadata=text))
