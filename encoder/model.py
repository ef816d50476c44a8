"""load_model(): a converted Whisper model bound to a backend, with `encode` and `embed`."""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field

import numpy as np

from encoder.audio import as_samples, log_mel_spectrogram, windows
from encoder.dims import FRAMES_PER_SECOND, SAMPLE_RATE
from encoder.errors import AmanuensisError
from encoder.graph import OUTPUT, block_output, build_encoder_graph
from encoder.runner import Runner, RunResult

DEVICES = ("auto", "npu", "emu", "cpu")
SAMPLES_PER_FRAME = SAMPLE_RATE // FRAMES_PER_SECOND     # 320 samples per encoder position


def select_backend(device: str):
    """Return (backend, note). `auto` picks the NPU when a device and its kernels work, else the CPU,
    and the note says why."""
    from kernels import get_backend

    if device not in DEVICES:
        raise AmanuensisError(f"unknown device {device!r} (choose from: {', '.join(DEVICES)})")
    if device == "auto":
        try:
            return get_backend("npu"), "auto: NPU found"
        except AmanuensisError as e:
            return get_backend("cpu"), f"auto: {e}; running on cpu"
    return get_backend(device), f"{device}: requested"


@dataclass
class Embedding:
    """Hidden states of one audio input, trimmed to its real length (50 frames per second)."""

    states: np.ndarray          # (frames, d) for one layer, (n_layers + 1, frames, d) for all; pooled drops frames
    layer: str                  # "N" or "all"
    pool: str                   # "none" or "mean"
    frames: int                 # real frames before pooling
    seconds: float
    profile: list = field(default_factory=list)   # per window, per node: backend and time


class WhisperEncoderModel:
    """A converted model's encoder, as a layer graph on a backend."""

    def __init__(self, converted, device: str = "auto", strict: bool = False, decoder_precision: str = "fp32"):
        self.converted = converted
        self.decoder_path = converted.decoder_onnx(decoder_precision)     # checks the name
        self.decoder_precision = decoder_precision
        self._decoder_caveat = None
        if decoder_precision == "int8":
            from decoder.session import int8_caveat

            self._decoder_caveat = int8_caveat()          # read once: it is reported with every result
        self.spec = converted.name            # what the user asked for (load_model sets the exact spec)
        self.dims = converted.dims
        self.strict = strict
        self.backend, self.device_note = select_backend(device)
        self.graph = build_encoder_graph(self.dims)
        self.runner = Runner(self.graph, converted.read_encoder_weights(), self.backend, strict)
        self._cross_runner = None
        self._transcriber = None

    @property
    def name(self) -> str:
        return self.converted.name

    def mel(self, samples: np.ndarray) -> np.ndarray:
        """Log-mel of one window of 16 kHz samples: (n_mels, 3000)."""
        return log_mel_spectrogram(samples, self.dims.n_mels)

    def encode(self, mel: np.ndarray, keep=()) -> RunResult:
        """Run the encoder graph on one window's log-mel (n_mels, 3000)."""
        return self.runner.run(mel, keep=keep)

    def encode_with_cross(self, mel: np.ndarray) -> RunResult:
        """Run the graph with the decoder's cross-attention K/V nodes (for transcription)."""
        if self._cross_runner is None:
            graph = build_encoder_graph(self.dims, cross_kv=True)
            # the encoder runner's weights, already in the backend's layout: one copy for both runners
            weights = {**self.runner.weights, **self.converted.cross_kv_weights()}
            self._cross_runner = Runner(graph, weights, self.backend, self.strict)
        return self._cross_runner.run(mel)

    def describe_decoder(self) -> str:
        """What runs the decoder: always ONNX Runtime on the CPU, with this precision's graph (and
        for int8, the caveat of this CPU if it has one)."""
        return f"onnxruntime cpu, {self.decoder_precision} weights ({self.decoder_path.name})" + \
            (f"; {self._decoder_caveat}" if self._decoder_caveat else "")

    @property
    def transcriber(self):
        """The decoder side (ONNX Runtime session, tokenizer), built on first use."""
        if self._transcriber is None:
            from decoder.pipeline import Transcriber

            self._transcriber = Transcriber(self)
        return self._transcriber

    def transcribe(self, audio, options=None, progress: bool = False, **decoding) -> dict:
        """Transcribe a path or 16 kHz samples: {"text", "segments", "language", ...}.

        Keyword arguments are DecodingOptions fields (language, task, beam_size, ...).
        """
        from dataclasses import replace

        from decoder.decoding import DecodingOptions
        from decoder.pipeline import TranscribeOptions

        options = options or TranscribeOptions()
        if decoding:
            options = replace(options, decoding=replace(options.decoding or DecodingOptions(), **decoding))
        return self.transcriber.transcribe(audio, options, progress)

    def layer_tensor(self, layer: int) -> str:
        """Graph tensor of hidden state `layer`, numbered as Hugging Face's hidden_states."""
        n = self.dims.n_audio_layer
        if not 0 <= layer <= n:
            raise AmanuensisError(f"--layer {layer} is out of range: this model has layers 0 to {n}")
        return "embed" if layer == 0 else OUTPUT if layer == n else block_output(layer - 1)

    def embed(self, audio, layer: int | str | None = None, pool: str = "none") -> Embedding:
        """Encoder hidden states of `audio` (path or 16 kHz samples), 30 s window after window.

        layer: None for the final output; N as in Hugging Face's hidden_states (0 is the conv
        stem + positions, N the output of block N, n_layers the final output after ln_post);
        "all" for every one of them. pool: "none" keeps frames, "mean" averages them.
        """
        if pool not in ("none", "mean"):
            raise AmanuensisError(f"unknown pooling {pool!r} (choose none or mean)")
        n = self.dims.n_audio_layer
        layers = list(range(n + 1)) if layer == "all" else [n if layer is None else int(layer)]
        names = [self.layer_tensor(i) for i in layers]
        samples = as_samples(audio)
        parts, profile = [], []
        with self.backend.session():            # around the mel too (see Transcriber.transcribe)
            for _, chunk in windows(samples):
                frames = min(self.dims.n_audio_ctx, math.ceil(len(chunk) / SAMPLES_PER_FRAME))
                result = self.encode(self.mel(chunk), keep=names)
                parts.append(np.stack([result.tensors[t][:frames] for t in names]))   # (L, frames, d)
                profile.append(result.profile())
        states = np.concatenate(parts, axis=1)                                    # (L, total, d)
        frames = states.shape[1]
        if pool == "mean":
            states = states.mean(axis=1)                                          # (L, d)
        return Embedding(states if layer == "all" else states[0], "all" if layer == "all" else str(layers[0]),
                         pool, frames, len(samples) / SAMPLE_RATE, profile)


def load_model(name: str = "tiny.en", device: str = "auto", strict: bool = False,
               decoder_precision: str = "fp32") -> WhisperEncoderModel:
    """Load a model by default name, directory or hub id (converting on first use) onto `device`.

    strict=True makes any op that falls back from the chosen backend an error.
    decoder_precision: the weights transcription decodes with, "fp32" or "int8" (decoder-int8.onnx).
    """
    from weights_tools.model_dir import ConvertedModel
    from weights_tools.resolve import resolve_model

    model = WhisperEncoderModel(ConvertedModel.open(resolve_model(name)), device, strict, decoder_precision)
    model.spec = str(name)
    return model


def report_device(model: WhisperEncoderModel, decoder: bool = False) -> None:
    """Tell the user, on stderr, which backend runs the encoder (never a silent choice), and with
    `decoder`, what runs the decoder."""
    print(f"amanuensis: device {model.backend.describe()} ({model.device_note})", file=sys.stderr)
    if decoder:
        print(f"amanuensis: decoder {model.describe_decoder()}", file=sys.stderr)
