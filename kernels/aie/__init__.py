"""AIE kernel sources (one folder per kernel) and their host build for tests (host.py).

See README.md in this folder for the NPU build with MLIR-AIE and Peano.
"""
