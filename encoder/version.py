"""The installed version of Amanuensis, read from the package metadata (pyproject.toml holds it)."""
from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    VERSION = version("amanuensis")
except PackageNotFoundError:          # run from a checkout that was never installed
    VERSION = "0+unknown"
