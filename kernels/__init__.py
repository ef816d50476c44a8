"""Kernels of the Whisper encoder, and what they stand on: the kernel interface, the float64
reference, the backends (`cpu`, `emu`, `npu`), the layer graph and its runner.

This package imports nothing else of Amanuensis; every other package builds on it. Start at
`kernels.backends.get_backend` and `kernels.runner.Runner`; docs/architecture.md shows the layers.
"""
