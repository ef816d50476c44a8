"""Builds the cpu backend's native kernels (kernels/native); everything else is in pyproject.toml.

The extension is optional: without a C compiler the install still succeeds, and the cpu backend
says on every run that it uses its numpy kernels instead (kernels/native/__init__.py).
"""
import os

from setuptools import Extension, setup

# cpu_kernels.h and emu_kernels.h once per x86-64 level (each isa_*.c sets its target), the level check, and the bf16
# products of the cpu-bf16 backend on AMX tiles and on AVX512-BF16 (isa_amx.c, isa_avx512bf16.c: built
# by GCC 11 and later, stubs that say no elsewhere)
SOURCES = [f"kernels/native/{name}.c" for name in ("isa_v4", "isa_v3", "isa_base", "dispatch", "isa_amx",
                                                   "isa_avx512bf16")]

HEADERS = [f"kernels/native/{name}.h" for name in ("cpu_kernels", "emu_kernels", "bf16_common")]

setup(ext_modules=[Extension("kernels.native._cpu_kernels", SOURCES, depends=HEADERS,
                             extra_compile_args=["-O3", "-Wno-psabi"], optional=True,
                             libraries=[] if os.name == "nt" else ["m"])])   # layernorm's sqrt
