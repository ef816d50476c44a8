"""Settings from the environment: every AMANUENSIS_* variable is read here, and only here.

Each is read when asked for, not at import, so a test or a server can change it between runs.

    AMANUENSIS_THREADS        threads for the cpu backend and the decoder (default: every core)
    AMANUENSIS_CACHE          converted models and built kernels (default $XDG_CACHE_HOME/amanuensis,
                              else ~/.cache/amanuensis)
    AMANUENSIS_CPU_NATIVE     0 switches the cpu backend's native kernels off (its numpy kernels run)
    AMANUENSIS_BF16_KERNELS   cpu-bf16's products: auto (default: AMX tiles, else AVX512-BF16), amx or avx512
    AMANUENSIS_NPU_KERNELS    directory of the NPU kernels' manifest.json (default <cache>/npu-kernels)
    AMANUENSIS_ACCEL_GLOB     where NPU device nodes are looked for (default /dev/accel/accel*)
    AMANUENSIS_API_KEY        the server's API key when --api-key is not given
"""
from __future__ import annotations

import os
from pathlib import Path

from kernels.errors import AmanuensisError

_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off", "")


def parse_bool(text: str) -> bool:
    """True for 1/true/yes/on, False for 0/false/no/off or empty (any case); ValueError otherwise."""
    value = str(text).strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"expected true or false, got {text!r}")


def threads() -> int:
    """Threads to compute with: AMANUENSIS_THREADS, else every core."""
    text = os.environ.get("AMANUENSIS_THREADS", "").strip()
    if not text:
        return os.cpu_count() or 1
    if not text.isdigit() or int(text) < 1:
        raise AmanuensisError(f"AMANUENSIS_THREADS must be a whole number of at least 1, got {text!r}")
    return int(text)


def cache_dir() -> Path:
    """Where converted models and built kernels are kept."""
    if os.environ.get("AMANUENSIS_CACHE"):
        return Path(os.environ["AMANUENSIS_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "amanuensis"


def cpu_native() -> bool:
    """Whether the cpu backend may use its native kernels (AMANUENSIS_CPU_NATIVE, default on)."""
    try:
        return parse_bool(os.environ.get("AMANUENSIS_CPU_NATIVE", "1"))
    except ValueError as e:
        raise AmanuensisError(f"AMANUENSIS_CPU_NATIVE: {e}") from None


def bf16_kernels() -> str:
    """Which bf16 products cpu-bf16 runs (AMANUENSIS_BF16_KERNELS, default auto), as given: the kinds
    are kernels.native's, which checks the value."""
    return os.environ.get("AMANUENSIS_BF16_KERNELS", "auto").strip().lower() or "auto"


def npu_kernels_dir() -> Path:
    """The directory holding the NPU kernels' manifest.json."""
    return Path(os.environ.get("AMANUENSIS_NPU_KERNELS") or cache_dir() / "npu-kernels")


def accel_glob() -> str:
    """The glob of NPU device nodes."""
    return os.environ.get("AMANUENSIS_ACCEL_GLOB", "/dev/accel/accel*")


def api_key(given: str | None = None) -> str | None:
    """The server's API key: `given` (--api-key), else AMANUENSIS_API_KEY, else none."""
    return given or os.environ.get("AMANUENSIS_API_KEY") or None
