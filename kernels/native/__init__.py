"""ctypes bindings of cpu_kernels.h, the cpu backend's native kernels (built by setup.py at install).

The build holds one copy of the kernels per x86-64 level (isa_*.c); `bind` takes the copy this CPU
runs, or the level a test asks for.

`LIBRARY` is None when the build is missing (no C compiler at install) or switched off with
AMANUENSIS_CPU_NATIVE=0; `UNAVAILABLE` then says why, and the cpu backend names its numpy kernels
in its description instead. ctypes drops the GIL for every call, so the backend's row blocks run
these kernels on all cores at once.

`BF16` holds the `cpu-bf16` backend's bf16 products on AMX tiles or, without them, on AVX512-BF16
(AMANUENSIS_BF16_KERNELS picks one), or is None and `BF16_UNAVAILABLE` says why.
"""
from __future__ import annotations

import ctypes
import importlib.machinery
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from kernels import settings
from kernels.errors import AmanuensisError

HEAD = 64      # attention_head's head size (cpu_kernels.h HEAD): every Whisper model's
PANEL = 64     # columns of a packed weight panel (cpu_kernels.h NR)
TILE_ROWS = 6  # rows of linear's register tile (cpu_kernels.h MR): row blocks are best multiples of it
LEVELS = {4: ("_v4", "x86-64-v4 (AVX-512)"), 3: ("_v3", "x86-64-v3 (AVX2)"), 0: ("_base", "baseline")}
_P, _L, _F = ctypes.c_void_p, ctypes.c_long, ctypes.c_float
_SIGNATURES = {                                    # name: (argument types, result type)
    "linear": ([_P, _L, _P, _L, _L, _P, _P, _P, _L, _P, _L, _L], ctypes.c_int),
    "bias_epilogue": ([_P, _L, _P, _P, _P, _L, _L, _L], None),
    "layernorm": ([_P, _P, _P, _P, _L, _L, _L, _L, _F], None),
    "attention_scratch": ([_L], _L),
    "attention_head": ([_P, _P, _P, _L, _F, _L, _P, _L, _L, _P], None),
    "mmul_steps": ([_P, _L, _P, _L, _P, _L, _L, _L, _L], ctypes.c_int),
    "emu_attention_head": ([_P, _L, _P, _L, _P, _L, _L, _L, _L, _P, _L], ctypes.c_int),
    "emu_exp_n": ([_P, _P, _L], None),
    "emu_gelu_n": ([_P, _P, _L, _P], None),
    "emu_bf16_n": ([_P, _P, _L], None),
    "emu_epilogue": ([_P, _L, _P, _P, _P, _L, _P, _L, _L, _L], None),
    "emu_layernorm": ([_P, _L, _P, _P, _F, _P, _L, _L, _L], ctypes.c_int),
    "emu_matmul_f32": ([_P, _L, _P, _L, _P, _L, _L, _L, _L], ctypes.c_int),
    "emu_softmax_rows": ([_P, _L, _L, _L, _P, _P, _P, _L], None),
    "emu_normalise_rows": ([_P, _P, _L, _L, _P], None),
}


def _library_path() -> Path | None:
    here = Path(__file__).parent
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        if (here / f"_cpu_kernels{suffix}").is_file():
            return here / f"_cpu_kernels{suffix}"
    return None


def _load() -> tuple[Kernels | None, str | None]:
    try:
        if not settings.cpu_native():
            return None, "switched off by AMANUENSIS_CPU_NATIVE"
    except AmanuensisError as e:
        return None, f"not used: {e}"
    path = _library_path()
    if path is None:
        return None, "not built (no C compiler at install?); reinstall with gcc to build them"
    try:
        return bind(path), None
    except (OSError, AttributeError) as e:      # AttributeError: a stale build lacking a function
        return None, f"cannot load {path.name} ({e}); reinstall to rebuild it"


class Kernels:
    """One level's copy of the kernels in a build: its functions by their plain names, and `level`."""

    def __init__(self, lib: ctypes.CDLL, level: int):
        self.level = level
        suffix = LEVELS[level][0]
        for name, (argtypes, restype) in _SIGNATURES.items():
            fn = getattr(lib, name + suffix)
            fn.argtypes, fn.restype = argtypes, restype
            setattr(self, name, fn)


def bind(path: Path, level: int | None = None) -> Kernels:
    """Load a build and bind the copy of `level` (4, 3 or 0; default: the one this CPU runs)."""
    lib = ctypes.CDLL(str(path))
    return Kernels(lib, lib.native_isa() if level is None else level)


LIBRARY, UNAVAILABLE = _load()


BF16_KINDS = {    # kind: (what it runs on, exported suffix, its check) in the order `auto` tries them
    "amx": ("AMX tiles", "", "amx_usable"),
    "avx512": ("AVX512-BF16 dot products", "_avx512", "avx512bf16_usable"),
}


class Bf16Kernels:
    """The bf16 matrix products of a build on one kind of hardware (BF16_KINDS): AMX tiles
    (isa_amx.c) or AVX512-BF16 dot products (isa_avx512bf16.c), the same functions and numerics."""

    def __init__(self, lib: ctypes.CDLL, kind: str):
        self.kind = kind
        self.name, suffix, _ = BF16_KINDS[kind]
        self.linear_bf16 = getattr(lib, "linear_bf16" + suffix)
        self.linear_bf16.argtypes = [_P, _L, _P, _L, _L, _L, _P, _P, _P, _L, _P, _L, _L]
        self.linear_bf16.restype = ctypes.c_int
        self.attention_bf16 = getattr(lib, "attention_bf16" + suffix)
        self.attention_bf16.argtypes = [_P, _P, _P, _L, _F, _L, _P, _L, _L]
        self.attention_bf16.restype = ctypes.c_int


_BF16_MISSING = {
    "amx": "this CPU lacks AMX-BF16 (Intel Xeon 4th generation and later have it), or Linux did not grant "
           "the tile state (5.16 and later do)",
    "avx512": "this CPU lacks AVX512-BF16 (AMD Zen 4 and later, Intel Cooper Lake and Xeon 4th generation "
              "and later have it)",
}


def load_bf16(kind: str = "auto") -> tuple[Bf16Kernels | None, str | None]:
    """The bf16 products of `kind` ("amx", "avx512", or "auto": the first of BF16_KINDS this CPU can
    run), or None and why not."""
    if kind != "auto" and kind not in BF16_KINDS:
        return None, f"AMANUENSIS_BF16_KERNELS must be one of auto, {', '.join(BF16_KINDS)}, got {kind!r}"
    if LIBRARY is None:
        return None, f"native kernels {UNAVAILABLE}"
    kinds = list(BF16_KINDS) if kind == "auto" else [kind]
    try:
        lib = ctypes.CDLL(str(_library_path()))
        for k in kinds:
            if getattr(lib, BF16_KINDS[k][2])():
                return Bf16Kernels(lib, k), None
    except (OSError, AttributeError) as e:      # AttributeError: a build from before these sources
        return None, f"not in this build of the native kernels ({e}); reinstall to rebuild them"
    return None, "; ".join(_BF16_MISSING[k] for k in kinds) + ", or the kernels were built without it"


BF16, BF16_UNAVAILABLE = load_bf16(settings.bf16_kernels())


def isa() -> str:
    """The instruction set of the copy in use, e.g. 'x86-64-v4 (AVX-512)'."""
    return LEVELS[LIBRARY.level][1]


@contextmanager
def bf16_of_kind(kind: str):
    """Run the bf16 products on `kind` (BF16_KINDS) for a while (tests and the bench check each kind
    the CPU can run; not for use while other threads call the kernels). ValueError where it cannot."""
    global BF16
    kernels, why = load_bf16(kind)
    if kernels is None:
        raise ValueError(f"bf16 products of kind {kind!r}: {why}")
    saved, BF16 = BF16, kernels
    try:
        yield
    finally:
        BF16 = saved


@contextmanager
def copy_of_level(level: int):
    """Run this module's functions on the copy of `level` for a while (tests and the bench check each
    copy the CPU can run; not for use while other threads call the kernels)."""
    global LIBRARY
    saved, LIBRARY = LIBRARY, bind(_library_path(), level)
    try:
        yield
    finally:
        LIBRARY = saved


def _ptr(a: np.ndarray) -> int:
    assert a.dtype == np.float32 and a.strides[-1] == 4, "native kernels take fp32 arrays with contiguous rows"
    return a.ctypes.data


def _ld(a: np.ndarray) -> int:
    return a.strides[0] // 4


def empty_aligned(shape: tuple) -> np.ndarray:
    """An fp32 array whose data starts on a 64-byte line: numpy aligns to 16 bytes, and vector loads
    and stores that straddle two lines cost the linear 13% of its speed (fc1's shape, one thread)."""
    size = int(np.prod(shape))
    raw = np.empty(size + 16, np.float32)
    start = (-raw.ctypes.data % 64) // 4
    return raw[start:start + size].reshape(shape)


def pack(w: np.ndarray) -> np.ndarray:
    """W (K, N) in linear's layout: N / 64 panels, panel p = W[:, 64p : 64p + 64] row-major, (N/64, K, 64)."""
    k, n = w.shape
    assert n % PANEL == 0, f"a packed weight needs a multiple of {PANEL} columns, not {n}"
    panels = empty_aligned((n // PANEL, k, PANEL))
    panels[...] = w.reshape(k, n // PANEL, PANEL).transpose(1, 0, 2)
    return panels


def linear(a: np.ndarray, panels: np.ndarray, b: np.ndarray, out: np.ndarray, gelu_coeffs: np.ndarray | None = None,
           residual: np.ndarray | None = None) -> None:
    """out ← act(a · W + b) (+ residual), W as `pack` lays it out; act = GELU when gelu_coeffs is given
    (gelu_coefficients of its fit). a (rows, K), its rows may overlap (a strided im2col view);
    out and residual (rows, N)."""
    rows, k = a.shape
    n = panels.shape[0] * PANEL
    assert panels.shape[1:] == (k, PANEL) and out.shape == (rows, n) and b.shape == (n,)
    assert residual is None or residual.shape == out.shape
    res, ld_res = (None, 0) if residual is None else (_ptr(residual), _ld(residual))
    coeffs = None if gelu_coeffs is None else _ptr(gelu_coeffs)
    if LIBRARY.linear(_ptr(a), _ld(a), _ptr(panels), k, n, _ptr(b), coeffs, res, ld_res, _ptr(out), _ld(out), rows):
        raise MemoryError("native linear: no memory for its scratch tile")


def bias_epilogue(y: np.ndarray, b: np.ndarray, gelu_coeffs: np.ndarray | None = None,
                  residual: np.ndarray | None = None) -> None:
    """y ← act(y + b) (+ residual) in place, y and residual (rows, N); act = GELU when gelu_coeffs is
    given (gelu_coefficients of kernels.cpu's fit), else the identity."""
    res, ld_res = (None, 0) if residual is None else (_ptr(residual), _ld(residual))
    coeffs = None if gelu_coeffs is None else _ptr(gelu_coeffs)
    LIBRARY.bias_epilogue(_ptr(y), _ld(y), _ptr(b), coeffs, res, ld_res, y.shape[0], y.shape[1])


def layernorm(x: np.ndarray, out: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float) -> None:
    """out ← layernorm(x) row by row (kernels.reference.layernorm), x and out (rows, N)."""
    LIBRARY.layernorm(_ptr(x), _ptr(out), _ptr(gamma), _ptr(beta), x.shape[0], x.shape[1], _ld(x), _ld(out), eps)


def attention_scratch(t: int) -> int:
    """Floats of scratch attention_head needs for a sequence of t."""
    return LIBRARY.attention_scratch(t)


def attention_head(q: np.ndarray, k: np.ndarray, v: np.ndarray, scale: float, out: np.ndarray,
                   scratch: np.ndarray) -> None:
    """out ← softmax(q · kᵀ · scale) · v for a span of one head's query rows.

    q (rows, 64), k and v (t, 64): column slices of one QKV matrix (one row stride); out (rows, 64);
    scratch: attention_scratch(t) floats or more.
    """
    t = k.shape[0]
    assert q.shape[1] == k.shape[1] == v.shape[1] == HEAD and v.shape[0] == t and q.shape == out.shape
    assert q.strides == k.strides == v.strides and scratch.size >= attention_scratch(t)
    LIBRARY.attention_head(_ptr(q), _ptr(k), _ptr(v), _ld(q), scale, t, _ptr(out), _ld(out), q.shape[0],
                           _ptr(scratch))


def mmul_steps(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> None:
    """c ← kernels.contract.matmul(a, b, acc=c) before its flush (emu_kernels.h: the emu backend's
    matrix unit), in place. a (m, k), b (k, n), c (m, n), fp32 with contiguous rows."""
    (m, k), n = a.shape, b.shape[1]
    assert b.shape[0] == k and c.shape == (m, n)
    if LIBRARY.mmul_steps(_ptr(a), _ld(a), _ptr(b), _ld(b), _ptr(c), _ld(c), m, k, n):
        raise MemoryError("native mmul_steps: no memory for its scratch")


def emu_attention_head(q: np.ndarray, k: np.ndarray, v: np.ndarray, t: int, out: np.ndarray) -> None:
    """out ← kernels.emu's _attention_tiles for one head (emu_kernels.h): q, k, v and out (tiles·64, d)
    fp32 with contiguous rows, bf16 values, q pre-scaled, keys from t on masked; d a multiple of 16."""
    rows, d = q.shape
    assert k.shape == v.shape == out.shape == q.shape and rows % 64 == 0 and 0 < t <= rows
    code = LIBRARY.emu_attention_head(_ptr(q), _ld(q), _ptr(k), _ld(k), _ptr(v), _ld(v), rows // 64, t, d,
                                      _ptr(out), _ld(out))
    if code == -1:
        raise MemoryError("native emu_attention_head: no memory for its scratch")
    assert code == 0, f"native emu_attention_head takes a head size that is a multiple of 16, not {d}"


def emu_matmul_f32(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """kernels.contract.matmul_f32(a, b) before its flush (emu_kernels.h): a (m, k), b (k, n), fp32 with
    contiguous rows."""
    (m, k), n = a.shape, b.shape[1]
    assert b.shape[0] == k
    c = np.zeros((m, n), np.float32)
    if LIBRARY.emu_matmul_f32(_ptr(a), _ld(a), _ptr(b), _ld(b), _ptr(c), _ld(c), m, k, n):
        raise MemoryError("native emu_matmul_f32: no memory for its scratch")
    return c


def _flat(x) -> np.ndarray:
    """x's values as a contiguous 1-D fp32 array (x itself where it already is one)."""
    flat = np.ascontiguousarray(x, np.float32).reshape(-1)
    return flat if flat.strides == (4,) else flat.copy()      # (one value may keep any stride)


def _elementwise(kernel, x, *args) -> np.ndarray:
    """kernel(x, y, n, *args) over x's values, into a new fp32 array y of x's shape."""
    flat = _flat(x)
    y = np.empty(flat.shape, np.float32)
    if flat.size:
        kernel(_ptr(flat), _ptr(y), flat.size, *args)
    return y.reshape(np.shape(x))


def emu_exp(x: np.ndarray) -> np.ndarray:
    """kernels.contract.exp of x as emu_attention_head computes it (for the tests)."""
    return _elementwise(LIBRARY.emu_exp_n, x)


def emu_gelu(x: np.ndarray, table: np.ndarray) -> np.ndarray:
    """kernels.contract.gelu(x) as emu_epilogue computes it (for the tests); table: the contract's
    constants as kernels.emu's GELU_TABLE lays them out."""
    assert table.dtype == np.float32 and table.flags.c_contiguous and table.size == 36
    return _elementwise(LIBRARY.emu_gelu_n, x, _ptr(table))


def emu_bf16(x: np.ndarray) -> np.ndarray:
    """kernels.contract.bf16(x) (emu_kernels.h's emu_bf16), as a new fp32 array of x's shape."""
    return _elementwise(LIBRARY.emu_bf16_n, x)


def emu_epilogue(c: np.ndarray, bias: np.ndarray, gelu_table: np.ndarray | None, res: np.ndarray | None,
                 out: np.ndarray) -> None:
    """out ← kernels.emu's _epilogue(c, bias, gelu, res) (emu_kernels.h): c, res and out (rows, n) fp32
    with contiguous rows (out may be c), bias (n,); GELU where gelu_table (kernels.emu's GELU_TABLE)
    is given."""
    rows, n = c.shape
    assert out.shape == c.shape and bias.shape == (n,) and bias.flags.c_contiguous and bias.dtype == np.float32
    assert res is None or res.shape == c.shape
    assert gelu_table is None or (gelu_table.dtype == np.float32 and gelu_table.size == 36)
    if not rows or not n:                                     # (an empty array's strides may be anything)
        return
    LIBRARY.emu_epilogue(_ptr(c), _ld(c), _ptr(bias), None if gelu_table is None else _ptr(gelu_table),
                         None if res is None else _ptr(res), 0 if res is None else _ld(res), _ptr(out), _ld(out),
                         rows, n)


def emu_layernorm(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float) -> np.ndarray:
    """kernels.emu's layernorm of x (rows, n), n a multiple of 16 (emu_kernels.h): x fp32 with
    contiguous rows, gamma and beta (n,) bf16 values."""
    rows, n = x.shape
    if n <= 0 or n % 16 or gamma.shape != (n,) or beta.shape != (n,):
        raise ValueError(f"native emu_layernorm takes rows of a positive multiple of 16 values and gamma and "
                         f"beta of their size, not {x.shape}, {gamma.shape} and {beta.shape}")
    gamma, beta = np.ascontiguousarray(gamma, np.float32), np.ascontiguousarray(beta, np.float32)
    out = np.empty((rows, n), np.float32)
    code = LIBRARY.emu_layernorm(_ptr(x), _ld(x), _ptr(gamma), _ptr(beta), eps, _ptr(out), _ld(out), rows, n) \
        if rows else 0
    if code == -1:
        raise MemoryError("native emu_layernorm: no memory for its scratch")
    assert code == 0, f"native emu_layernorm refused n = {n}"
    return out


def emu_softmax_rows(s: np.ndarray, first: int, t: int, m: np.ndarray, row_sum: np.ndarray, o: np.ndarray) -> None:
    """kernels.emu's _softmax_step as emu_attention_head takes it, in place (for the tests): s (rows, 64)
    becomes bf16(P), m and row_sum (rows,) the new max and sum, o (rows, d) O·α."""
    rows, d = o.shape
    assert s.shape == (rows, 64) and m.shape == row_sum.shape == (rows,)
    assert all(a.flags.c_contiguous and a.dtype == np.float32 for a in (s, m, row_sum, o))
    LIBRARY.emu_softmax_rows(_ptr(s), rows, first, t, _ptr(m), _ptr(row_sum), _ptr(o), d)


def emu_normalise_rows(o: np.ndarray, row_sum: np.ndarray) -> np.ndarray:
    """kernels.emu's _normalise as emu_attention_head computes it (for the tests)."""
    o, row_sum = np.ascontiguousarray(o, np.float32), np.ascontiguousarray(row_sum, np.float32)
    out = np.empty_like(o)
    LIBRARY.emu_normalise_rows(_ptr(o), _ptr(row_sum), o.shape[0], o.shape[1], _ptr(out))
    return out


def gelu_coefficients(p: tuple) -> np.ndarray:
    """The native GELU's form of its fit P (erf(x/√2) = tanh(x·P(x²))): −2·P, in fp32."""
    return np.array([-2.0 * c for c in p], np.float32)


BF16_DEPTH = 32  # inputs per AMX tile product: linear_bf16's K is padded to a multiple of it (both kinds)


def to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """x's values rounded to bf16 (nearest, ties to even), as uint16 bit patterns (NaN stays NaN)."""
    u = np.ascontiguousarray(x, np.float32).view(np.uint32)
    rounded = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    return np.where(np.isnan(x), np.uint16(0x7FC0), rounded)


def pack_bf16(w: np.ndarray) -> np.ndarray:
    """W (K, N) rounded to bf16 in linear_bf16's layout: (N / 16, K_pad / 2, 16, 2) uint16, column block
    j's consecutive pairs of inputs, K_pad = K rounded up to BF16_DEPTH, the rows past K zero."""
    k, n = w.shape
    assert n % 32 == 0, f"linear_bf16 needs a multiple of 32 columns, not {n}"
    k_pad = -(-k // BF16_DEPTH) * BF16_DEPTH
    bits = np.zeros((k_pad, n), np.uint16)
    bits[:k] = to_bf16_bits(w)
    return np.ascontiguousarray(bits.reshape(k_pad // 2, 2, n // 16, 16).transpose(2, 0, 3, 1))


def linear_bf16(a: np.ndarray, packed: np.ndarray, k: int, b: np.ndarray, out: np.ndarray,
                gelu_coeffs: np.ndarray | None = None, residual: np.ndarray | None = None) -> None:
    """out ← act(bf16(a) · W + b) (+ residual) on BF16's kind, W as pack_bf16 lays it out (K = k); act =
    GELU when gelu_coeffs is given. a (rows, k), its rows may overlap; out and residual (rows, N)."""
    rows = a.shape[0]
    n, k_pad = packed.shape[0] * 16, packed.shape[1] * 2
    assert a.shape[1] == k and packed.dtype == np.uint16 and out.shape == (rows, n) and b.shape == (n,)
    assert residual is None or residual.shape == out.shape
    res, ld_res = (None, 0) if residual is None else (_ptr(residual), _ld(residual))
    coeffs = None if gelu_coeffs is None else _ptr(gelu_coeffs)
    status = BF16.linear_bf16(_ptr(a), _ld(a), packed.ctypes.data, k, k_pad, n, _ptr(b), coeffs, res, ld_res,
                              _ptr(out), _ld(out), rows)
    if status == -1:
        raise MemoryError("native linear_bf16: no memory for its scratch rows")
    if status:
        raise RuntimeError(f"native linear_bf16: {BF16.name} are not usable in this process")


def attention_bf16(q: np.ndarray, k: np.ndarray, v: np.ndarray, scale: float, out: np.ndarray) -> None:
    """out ← softmax(bf16(q) · bf16(k · scale)ᵀ) · bf16(v) for a span of one head's query rows, on BF16's
    kind: bf16 products, fp32 scores and sums, the probabilities rounded to bf16 for the product (and
    their sums taken of what is rounded). q (rows, 64), k and v (t, 64): column slices of one QKV
    matrix (one row stride); out (rows, 64)."""
    t = k.shape[0]
    assert q.shape[1] == k.shape[1] == v.shape[1] == HEAD and v.shape[0] == t and q.shape == out.shape
    assert q.strides == k.strides == v.strides
    status = BF16.attention_bf16(_ptr(q), _ptr(k), _ptr(v), _ld(q), scale, t, _ptr(out), _ld(out), q.shape[0])
    if status == -1:
        raise MemoryError("native attention_bf16: no memory for its scratch")
    if status:
        raise RuntimeError(f"native attention_bf16: {BF16.name} are not usable in this process")
