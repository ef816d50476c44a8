"""Builds the cpu backend's native kernels (kernels/native/cpu_kernels.c); everything else is in pyproject.toml.

The extension is optional: without a C compiler the install still succeeds, and the cpu backend
says on every run that it uses its numpy kernels instead (kernels/native/__init__.py).
"""
import platform

from setuptools import Extension, setup

FLAGS = ["-O3", "-Wno-psabi"]
if platform.machine().lower() in ("x86_64", "amd64"):
    FLAGS.append("-mprefer-vector-width=512")  # the AVX-512 build uses full-width vectors in its loops too

setup(ext_modules=[Extension("kernels.native._cpu_kernels", ["kernels/native/cpu_kernels.c"],
                             extra_compile_args=FLAGS, optional=True)])
