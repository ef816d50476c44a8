"""The kernel interface every backend implements, and the names the layer graph uses.

A backend is an object with a `name` and one method per kernel below. Inputs
and outputs are float32 numpy arrays, time-major, weights in the kernel layout. Through `run`,
a backend may return an array-like it keeps on its device (the npu backend's DeviceTensor:
np.asarray reads it back) and must accept the ones it returned as inputs.

    log_mel(samples, n_mels)                     Whisper's log-mel of one 30 s window, (3000, n_mels)
    linear(x, w, b, gelu=False, residual=None)   act(x @ w + b) + residual
    conv1d_k3(x, w, b, residual=None, stride=1, gelu=True)
                                                 Whisper's k=3 pad-1 conv as im2col + matmul, act, + residual
    attention(qkv, n_head)                       softmax(Q Kᵀ/√d) V per head, whole sequence
    layernorm(x, gamma, beta, eps=1e-5)          over the last axis

`kernels.reference` is the specification; backends are tested against it.
"""
from __future__ import annotations

from contextlib import contextmanager

KERNELS = ("log_mel", "linear", "conv1d_k3", "attention", "layernorm")


class Backend:
    """Base class: subclasses implement every name in KERNELS."""

    name = "abstract"

    def supports(self, kernel: str) -> bool:
        return kernel in KERNELS and callable(getattr(self, kernel, None))

    def prepare_weight(self, kernel: str, w):
        """A node's first weight (the matrix of linear and conv1d_k3) as this backend's `kernel` takes
        it; called once per graph, and must pass a weight it already prepared through. Default: as is."""
        return w

    def prepare_graph(self, graph, weights: dict) -> None:
        """Called once per graph after prepare_weight, with the graph and its prepared weights. Default:
        nothing."""

    def dispatch_groups(self, graph) -> list[tuple[str, ...]]:
        """Runs of consecutive nodes of `graph` this backend computes in one call (run_group), by their
        names; called once per graph after prepare_graph. Default: none."""
        return []

    def run_group(self, calls: list):
        """({node name: output} or None, what ran it, fallback reason or None) for one group of
        dispatch_groups; calls: (node, args, kwargs) per node, an input made inside the group None.
        None: the group could not run as one, and the runner runs its nodes one by one."""
        raise NotImplementedError(f"backend {self.name!r} groups no nodes")

    def run(self, kernel: str, args: tuple, kwargs: dict):
        """(output, name of what ran it, fallback reason or None). Backends that can fall back override it."""
        return getattr(self, kernel)(*args, **kwargs), self.name, None

    @contextmanager
    def session(self):
        """Context around one graph run (the CPU backend pins BLAS to one thread per worker here)."""
        yield

    def describe(self) -> str:
        return self.name

    def status(self) -> dict | None:
        """The state of the backend's device kernels (the npu backend's: ready, disabled and why,
        calls, failures), or None for a backend without any."""
        return None
