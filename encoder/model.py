"""load_model(): a converted Whisper model bound to a backend, with `transcribe`, `embed` and `encode`."""
from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np

from decoder.options import TranscribeOptions, with_changes
from decoder.session import int8_caveat
from encoder.audio import as_samples, windows
from encoder.embedding import POOLINGS, Embedding
from encoder.network import INPUT, MEL, OUTPUT, block_output, build_encoder_graph
from encoder.results import Transcription
from encoder.transcription import Transcriber
from kernels.backends import select_backend
from kernels.errors import AmanuensisError, BadOption
from kernels.frontend import N_FRAMES, SAMPLE_RATE, SAMPLES_PER_FRAME, log_mel_spectrogram, pad_window
from kernels.runner import Profile, Runner, RunResult
from weights_tools.model_dir import DEFAULT_DECODER_PRECISION, ConvertedModel
from weights_tools.resolve import resolve_model


class WhisperModel:
    """A converted model: its encoder as a layer graph on a backend, and its decoder."""

    def __init__(self, converted: ConvertedModel, device: str = "auto", strict: bool = False,
                 decoder_precision: str = DEFAULT_DECODER_PRECISION):
        self.converted = converted
        self.decoder_path = converted.decoder_onnx(decoder_precision)     # checks the name
        self.decoder_precision = decoder_precision
        # read once: it is reported with every result
        self._decoder_caveat = int8_caveat() if decoder_precision != "fp32" else None
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
        """Whisper's log-mel of one window of 16 kHz samples, (n_mels, 3000), in float64 on the host
        (the reference of the graph's front end, which runs on the backend)."""
        return log_mel_spectrogram(samples, self.dims.n_mels)

    def _graph_inputs(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """What the graph starts from: one window of 16 kHz samples (1-D, at most 30 s), or a
        log-mel laid out as Whisper's (n_mels, 3000), which skips the front end."""
        if x.ndim == 1:
            return {INPUT: pad_window(x)}
        expected = (self.dims.n_mels, N_FRAMES)
        if x.shape != expected:
            raise AmanuensisError(f"mel input has shape {x.shape}, the model expects {expected}")
        return {MEL: np.ascontiguousarray(x.T, dtype=np.float32)}

    def encode(self, x: np.ndarray, keep=()) -> RunResult:
        """Run the encoder graph on one window: its samples (the front end runs on the backend too)
        or its log-mel (n_mels, 3000). keep: tensor names, or "all"."""
        return self.runner.run(self._graph_inputs(x), keep=keep)

    def encode_with_cross(self, x: np.ndarray) -> RunResult:
        """Run the graph with the decoder's cross-attention K/V nodes (for transcription)."""
        if self._cross_runner is None:
            graph = build_encoder_graph(self.dims, cross_kv=True)
            # the encoder runner's weights, already in the backend's layout: one copy for both runners
            weights = {**self.runner.weights, **self.converted.cross_kv_weights()}
            self._cross_runner = Runner(graph, weights, self.backend, self.strict)
        return self._cross_runner.run(self._graph_inputs(x))

    def describe_decoder(self) -> str:
        """What runs the decoder: always ONNX Runtime on the CPU, with this precision's graph (and
        where it has int8 weights, the caveat of this CPU if it has one)."""
        return f"onnxruntime cpu, {self.decoder_precision} weights ({self.decoder_path.name})" + \
            (f"; {self._decoder_caveat}" if self._decoder_caveat else "")

    @property
    def transcriber(self) -> Transcriber:
        """The decoder side (ONNX Runtime session, tokenizer), built on first use."""
        if self._transcriber is None:
            self._transcriber = Transcriber(self)
        return self._transcriber

    def transcribe(self, audio, options: TranscribeOptions | None = None, progress: bool = False,
                   **changes) -> Transcription:
        """Transcribe a path or an array of 16 kHz mono samples.

        options: a TranscribeOptions; keyword arguments change its fields or its DecodingOptions'
        (language, task, beam_size, best_of, word_timestamps, initial_prompt, ...); `temperature`
        is the fallback ladder: one number (no fallback) or a sequence.
        """
        options = with_changes(options or TranscribeOptions(), **changes)
        return self.transcriber.transcribe(audio, options, progress)

    def transcribe_many(self, audios, options: TranscribeOptions | None = None, batch_size: int | None = None,
                        **changes) -> Iterator[tuple[int, Transcription | AmanuensisError]]:
        """Transcribe several paths or sample arrays together: `batch_size` files at a time (default
        options.batch_size), the windows they have ready decoded as one batch where their decoding
        options agree but for their prompts (each window is prompted with its own file's text so
        far). Yields (index, Transcription, or the AmanuensisError that stopped that input) as each
        input finishes; one bad input stops only itself."""
        options = with_changes(options or TranscribeOptions(), **changes)
        return self.transcriber.transcribe_many(((audio, options) for audio in audios), batch_size)

    def layer_tensor(self, layer: int) -> str:
        """Graph tensor of hidden state `layer`, numbered as Hugging Face's hidden_states."""
        n = self.dims.n_audio_layer
        if not 0 <= layer <= n:
            raise BadOption("layer", f"--layer {layer} is out of range: this model has layers 0 to {n}")
        return "embed" if layer == 0 else OUTPUT if layer == n else block_output(layer - 1)

    def embed(self, audio, layer: int | str | None = None, pool: str = "none") -> Embedding:
        """Encoder hidden states of `audio` (path or 16 kHz samples), 30 s window after window.

        layer: None for the final output; N as in Hugging Face's hidden_states (0 is the conv
        stem + positions, N the output of block N, n_layers the final output after ln_post);
        "all" for every one of them. pool: "none" keeps frames, "mean" averages them.
        """
        if pool not in POOLINGS:
            raise BadOption("pool", f"unknown pooling {pool!r} (choose {' or '.join(POOLINGS)})")
        n = self.dims.n_audio_layer
        layers = list(range(n + 1)) if layer == "all" else [n if layer is None else int(layer)]
        names = [self.layer_tensor(i) for i in layers]
        samples = as_samples(audio)
        parts, profile = [], Profile()
        with self.backend.session():            # one for every window (see Transcriber.transcribe)
            for _, chunk in windows(samples):
                frames = min(self.dims.n_audio_ctx, math.ceil(len(chunk) / SAMPLES_PER_FRAME))
                result = self.encode(chunk, keep=names)
                parts.append(np.stack([result.tensors[t][:frames] for t in names]))   # (L, frames, d)
                profile.add(result)
        states = np.concatenate(parts, axis=1)                                    # (L, total, d)
        frames = states.shape[1]
        if pool == "mean":
            states = states.mean(axis=1)                                          # (L, d)
        return Embedding(states if layer == "all" else states[0], "all" if layer == "all" else str(layers[0]),
                         pool, frames, len(samples) / SAMPLE_RATE, profile)


def load_model(name: str = "tiny.en", device: str = "auto", strict: bool = False,
               decoder_precision: str = DEFAULT_DECODER_PRECISION) -> WhisperModel:
    """Load a model by default name, directory or hub id (converting on first use) onto `device`.

    strict=True makes any op that falls back from the chosen backend an error.
    decoder_precision: the weights transcription decodes with (DECODER_PRECISIONS): "int8" (every
    linear layer in 8-bit blocks) or "fp32".
    """
    model = WhisperModel(ConvertedModel.open(resolve_model(name)), device, strict, decoder_precision)
    model.spec = str(name)
    return model
