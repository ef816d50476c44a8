"""Builds the cpu backend's native kernels (kernels/native); everything else is in pyproject.toml.

The extension is optional: without a C compiler the install still succeeds, and the cpu backend
says on every run that it uses its numpy kernels instead (kernels/native/__init__.py).
"""
import os

from setuptools import Extension, setup

# cpu_kernels.h once per x86-64 level (each isa_*.c sets its target), the level check, and the AMX
# product of the cpu-bf16 backend (isa_amx.c: built by GCC 11 and later, a stub that says no elsewhere)
SOURCES = [f"kernels/native/{name}.c" for name in ("isa_v4", "isa_v3", "isa_base", "dispatch", "isa_amx")]

setup(ext_modules=[Extension("kernels.native._cpu_kernels", SOURCES, depends=["kernels/native/cpu_kernels.h"],
                             extra_compile_args=["-O3", "-Wno-psabi"], optional=True,
                             libraries=[] if os.name == "nt" else ["m"])])   # layernorm's sqrt
