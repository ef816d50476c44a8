"""Silero VAD's 16 kHz network in numpy: P(speech) of each 32 ms frame of 512 samples.

Each frame is scored with the 64 samples before it, and an LSTM cell carries its state from frame
to frame. Per frame, in the model's own order:
    x      = its 576 samples, reflected on the right by 64                               (640,)
    spec   = |STFT|: 4 windows of 256 at a hop of 128, 129 bins                         (4, 129)
    e      = 4 × ReLU(conv1d(k=3, pad 1)), strides 1, 2, 2, 1: 129 → 128 → 64 → 64 → 128  (1, 128)
    h, c   = LSTMCell(e, (h, c))                                                        (128,)
    P      = sigmoid(w · ReLU(h) + b)

Nothing before the LSTM depends on other frames, so a block of frames goes through it as a few
matrix products; only the cell runs frame by frame. That computes what the ONNX graph computes
(every frame within 1e-4, tests/test_vad.py; measured: 2e-6 on real speech, 2e-5 on synthesised
speech) at a fraction of the cost: ONNX Runtime spends ~0.2 ms of call overhead per frame.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from weights_tools.layout import conv_to_kernel
from weights_tools.silero import CONV_STRIDES, FILTER, SileroWeights

FRAME = 512                    # samples per scored frame (32 ms)
CONTEXT = 64                   # samples of the previous frame the model sees with each frame
HIDDEN = 128                   # the LSTM's state
BINS = FILTER // 2 + 1         # 129
HOP = FILTER // 2              # 128
REFLECT = 64                   # samples mirrored after each frame's input
WINDOWS = (CONTEXT + FRAME + REFLECT - FILTER) // HOP + 1     # 4 STFT windows a frame
FEATURE_ROWS = 256             # frames through the convolutions at a time: their spectra (1 MB) stay in
                               # cache (4096 at a time took 1.7x as long, and 10x on a first call)


@dataclass
class LstmState:
    h: np.ndarray              # (128,) float32
    c: np.ndarray              # (128,) float32

    @classmethod
    def zeros(cls) -> LstmState:
        return cls(np.zeros(HIDDEN, np.float32), np.zeros(HIDDEN, np.float32))


class SileroNet:
    """The network's weights laid out for numpy, and the frames scored with them."""

    def __init__(self, weights: SileroWeights):
        t = weights.tensors
        self.basis = np.ascontiguousarray(t["stft.forward_basis_buffer"][:, 0, :].T)        # (256, 258)
        # conv weight (out, in, 3) as a (3·in, out) matrix, as Whisper's convolutions are laid out
        self.convs = [(conv_to_kernel(t[f"encoder.{i}.reparam_conv.weight"]), t[f"encoder.{i}.reparam_conv.bias"],
                       stride) for i, stride in enumerate(CONV_STRIDES)]
        # sigmoid(x) = (1 + tanh(x/2)) / 2: gates i, f and o are taken at half scale, so one tanh serves all four
        half = np.full((4 * HIDDEN, 1), 0.5, np.float32)
        half[2 * HIDDEN:3 * HIDDEN] = 1.0
        self.w_ih = np.ascontiguousarray((t["decoder.rnn.weight_ih"] * half).T)             # (128, 512)
        self.w_hh = np.ascontiguousarray((t["decoder.rnn.weight_hh"] * half).T)             # (128, 512)
        self.bias = (t["decoder.rnn.bias_ih"] + t["decoder.rnn.bias_hh"]) * half[:, 0]
        self.w_out = t["decoder.decoder.2.weight"][0, :, 0]                                   # (128,)
        self.b_out = float(t["decoder.decoder.2.bias"][0])

    def probs(self, inputs: np.ndarray, state: LstmState) -> np.ndarray:
        """P(speech) of each row of `inputs` (n ≥ 1, 576): a frame with its context, in order; `state`
        is carried in and updated."""
        features = [self.features(inputs[k:k + FEATURE_ROWS]) for k in range(0, len(inputs), FEATURE_ROWS)]
        # (n, 512): gates i, f and o at half scale (see __init__), g as it is
        gates = np.concatenate(features) @ self.w_ih + self.bias
        hs = self.cell(gates, state)
        return 1.0 / (1.0 + np.exp(-(np.maximum(hs, 0.0) @ self.w_out + self.b_out)))

    def features(self, inputs: np.ndarray) -> np.ndarray:
        """The LSTM's input of each frame: (n, 576) -> (n, 128)."""
        n = len(inputs)
        x = np.concatenate([inputs, inputs[:, -2:-2 - REFLECT:-1]], axis=1)     # reflect: (n, 640)
        windows = np.lib.stride_tricks.as_strided(x, (n, WINDOWS, FILTER), (x.strides[0], HOP * x.itemsize, x.itemsize))
        spec = windows.reshape(n * WINDOWS, FILTER) @ self.basis                # (4n, 258)
        e = np.sqrt(spec[:, :BINS] ** 2 + spec[:, BINS:] ** 2).reshape(n, WINDOWS, BINS)
        for w, b, stride in self.convs:
            e = _conv_relu(e, w, b, stride)
        return e[:, 0, :]

    def cell(self, gates: np.ndarray, state: LstmState) -> np.ndarray:
        """The LSTM cell over the frames, from their input gates (n, 512): each frame's h (n, 128)."""
        hs = np.empty((len(gates), HIDDEN), np.float32)
        h, c = state.h, state.c
        g = np.empty(4 * HIDDEN, np.float32)
        cand = g[2 * HIDDEN:3 * HIDDEN]                                         # tanh(g): the candidate
        for t in range(len(gates)):
            np.tanh(np.add(gates[t], h @ self.w_hh, out=g), out=g)
            sig = g * 0.5 + 0.5                                                 # i, f and o as sigmoids
            c = sig[HIDDEN:2 * HIDDEN] * c + sig[:HIDDEN] * cand
            h = hs[t] = sig[3 * HIDDEN:] * np.tanh(c)
        state.h, state.c = h, c
        return hs


def _conv_relu(x: np.ndarray, w: np.ndarray, b: np.ndarray, stride: int) -> np.ndarray:
    """ReLU(conv1d(x)) with kernel 3 and padding 1 on short sequences: x (n, L, C) -> (n, L', C')."""
    n, length, channels = x.shape
    padded = np.zeros((n, length + 2, channels), np.float32)
    padded[:, 1:-1] = x
    out_len = (length - 1) // stride + 1
    taps = np.concatenate([padded[:, k:k + stride * (out_len - 1) + 1:stride] for k in range(3)], axis=2)
    return np.maximum(taps.reshape(n * out_len, 3 * channels) @ w + b, 0.0).reshape(n, out_len, -1)
