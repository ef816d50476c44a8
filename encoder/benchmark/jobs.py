"""Every measurement of the bench, one function per job, each run in its own child process.

`python -m encoder.benchmark.jobs` reads one job '{"job": ..., ...}' on stdin (or as its
argument), runs it and prints one JSON object: the job's figures plus `peak_rss_mb`, the
child's peak resident memory (model, runtime and work together, as a user's process would
hold them). Timings are wall-clock medians of warm runs; model loading is timed separately
and never counted as work.
"""
from __future__ import annotations

import inspect
import json
import os
import statistics
import sys
import tempfile
import time

import numpy as np
import soundfile
from threadpoolctl import threadpool_limits

from decoder.options import DecodingOptions
from decoder.tokenizer import WhisperTokenizer
from encoder.audio import load_audio
from encoder.benchmark import peak_rss, speech, vad_accuracy
from encoder.cli import run
from encoder.evaluation import score
from encoder.model import load_model
from encoder.torch_reference import torch_whisper
from kernels import native
from kernels.errors import BadOption
from kernels.frontend import SAMPLE_RATE, log_mel_spectrogram
from weights_tools.layout import kernel_to_encoder
from weights_tools.model_dir import DEFAULT_DECODER_PRECISION, ConvertedModel
from weights_tools.onnx_encoder import build_encoder_onnx
from weights_tools.resolve import resolve_model


def _median_ms(fn, repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def _mel(n_mels: int) -> np.ndarray:
    """The first 30 s of the bench speech as Whisper's log-mel (n_mels, 3000)."""
    samples, _ = speech.build(30.0)
    return log_mel_spectrogram(samples, n_mels).astype(np.float32)


def _timed_load(load):
    start = time.perf_counter()
    value = load()
    return value, time.perf_counter() - start


def _e2e(transcribe, audio: str, reference: str, load_s: float) -> dict:
    """Wall time of one transcription of `audio` (a file), its speed and its word error rate."""
    seconds = soundfile.info(audio).duration
    start = time.perf_counter()
    text = transcribe(audio)
    wall = time.perf_counter() - start
    return {"audio_s": round(seconds, 2), "wall_s": round(wall, 3), "rtf": round(seconds / wall, 2),
            "load_s": round(load_s, 2), "wer": round(score(reference, text).wer, 4) if reference else None}


def gemm_peak(threads: int) -> dict:
    """The machine's fp32 GEMM rate as numpy's BLAS reaches it: best of 5 2048³ products."""
    a = np.random.default_rng(0).standard_normal((2048, 2048), dtype=np.float32)
    with threadpool_limits(threads, user_api="blas"):
        ms = min(_median_ms(lambda: a @ a, 1) for _ in range(5))
    return {"gemm_peak_gflops": round(2 * 2048**3 / ms / 1e6, 1)}


def ours_encoder(model: str, device: str, repeats: int) -> dict:
    """Our encoder graph on one backend: ms per 30 s window and the per-node profile."""
    m, load_s = _timed_load(lambda: load_model(model, device=device))
    mel = _mel(m.dims.n_mels)
    profiles = []
    ms = _median_ms(lambda: profiles.append([r.to_dict() for r in m.encode(mel).records]), repeats)
    timed = profiles[-repeats:]                      # the warm-up runs appended theirs first
    profile = [{**row, "ms": statistics.median(p[i]["ms"] for p in timed)} for i, row in enumerate(timed[-1])]
    return {"encoder_ms_per_window": round(ms, 2), "backend": m.backend.describe(), "load_s": round(load_s, 2),
            "profile": profile, "flops": int(sum(n.flops for n in m.graph.nodes))}


def ours_batched(model: str, device: str, repeats: int) -> dict:
    """What stacking two windows' rows into one matmul would gain: every linear node of the
    graph on 2 x 1500 rows against twice on 1500 rows (attention stays per window)."""
    m = load_model(model, device=device)
    rng = np.random.default_rng(0)
    linears = [n for n in m.graph.nodes if n.kernel == "linear"]
    weights = m.runner.weights                     # in the backend's layout, as the graph runs them

    inputs = {rows: [rng.standard_normal((rows, weights[n.weights[0]].shape[0]), dtype=np.float32) for n in linears]
              for rows in (m.dims.n_audio_ctx, 2 * m.dims.n_audio_ctx)}

    def run(rows: int, times: int):
        with m.backend.session():
            for node, x in zip(linears, inputs[rows]):
                w, b = (weights[name] for name in node.weights)
                for _ in range(times):
                    m.backend.linear(x, w, b, **dict(node.params))

    single = _median_ms(lambda: run(m.dims.n_audio_ctx, 2), repeats)
    stacked = _median_ms(lambda: run(2 * m.dims.n_audio_ctx, 1), repeats)
    return {"two_windows_ms": round(single, 2), "stacked_ms": round(stacked, 2),
            "gain": round(single / stacked - 1, 4)}


DECODER_ROWS = (1, 2, 4, 8, 16)   # rows of the decoder-step job's batches
STEPS = 32                        # timed token steps per batch size and repeat


def ours_decoder_steps(model: str, device: str, repeats: int) -> dict:
    """What batching buys a decoder step (default precision): one token for each of 1, 2, ... 16 rows,
    each row its own copy of the bench speech's first window, after the start-of-transcript prompt;
    the median over STEPS steps and `repeats` runs. Each row reads its window's cross-attention K/V
    at every step, so only the weights' reads are shared."""
    m = load_model(model, device=device)
    tr = m.transcriber
    kv, _ = tr.cross_kv(speech.build(30.0)[0])
    prompt = np.array([tr.decoder.initial_tokens(DecodingOptions(language="en"))[0]], np.int64)
    ms = {}
    for rows in DECODER_ROWS:
        cross, _ = tr.session.bind_cross_rows([kv] * rows, rows)
        prompts, tokens = np.repeat(prompt, rows, 0), np.full((rows, 1), tr.tokenizer.timestamp_begin, np.int64)
        times = []
        for _ in range(repeats + 1):                      # the first run warms up
            cache = tr.session.new_cache(rows)
            tr.session.step(prompts, cache, cross)
            for _ in range(STEPS):
                start = time.perf_counter()
                tr.session.step(tokens, cache, cross)
                times.append(time.perf_counter() - start)
        ms[str(rows)] = round(statistics.median(times[STEPS:]) * 1e3, 3)
    return {"decoder_precision": m.decoder_precision, "step_ms": ms}


def native_levels(repeats: int) -> dict:
    """On one thread, each copy of the native kernels this CPU runs, and each kind of cpu-bf16's bf16
    products: one attention head (T = 1500) and an fc1-shaped linear (750 x 384 x 1536), beside
    numpy's BLAS on the same product. A copy that is far slower than the others shows here (the AVX2
    copy once ran attention 34x slower)."""
    if native.LIBRARY is None:
        return {"error": f"native kernels {native.UNAVAILABLE}"}
    rng = np.random.default_rng(0)
    qkv = rng.standard_normal((1500, 1152), dtype=np.float32)
    x, w = rng.standard_normal((750, 384), dtype=np.float32), rng.standard_normal((384, 1536), dtype=np.float32)
    b, out = np.zeros(1536, np.float32), native.empty_aligned((750, 1536))
    head = native.empty_aligned((1500, 64))
    gflop = 2 * 750 * 384 * 1536 / 1e9
    with threadpool_limits(1, user_api="blas"):
        result = {"blas_linear_gflops": round(gflop / _median_ms(lambda: np.matmul(x, w, out=out), repeats) * 1e3, 1)}

    def timed(attention, linear) -> dict:
        return {"attention_head_ms": round(_median_ms(attention, repeats), 2),
                "linear_gflops": round(gflop / _median_ms(linear, repeats) * 1e3, 1)}

    levels = {}
    for level, (_, name) in native.LEVELS.items():
        if level > native.LIBRARY.level:
            continue
        with native.copy_of_level(level):
            scratch = native.empty_aligned((native.attention_scratch(1500),))
            panels = native.pack(w)
            levels[name] = timed(lambda s=scratch: native.attention_head(qkv[:, :64], qkv[:, 384:448], qkv[:, 768:832],
                                                                         0.125, head, s),
                                 lambda p=panels: native.linear(x, p, b, out))
    for kind, (name, _, _) in native.BF16_KINDS.items():
        if native.load_bf16(kind)[0] is None:
            continue
        with native.bf16_of_kind(kind):
            packed = native.pack_bf16(w)
            levels[f"bf16 on {name}"] = timed(lambda: native.attention_bf16(qkv[:, :64], qkv[:, 384:448],
                                                                            qkv[:, 768:832], 0.125, head),
                                              lambda p=packed: native.linear_bf16(x, p, 384, b, out))
    return {**result, "levels": levels, "in_use": native.isa()}


def ours_e2e(model: str, device: str, audio: str, reference: str, threads: int,
             decoder_precision: str = DEFAULT_DECODER_PRECISION) -> dict:
    """Our whole pipeline, greedy (temperature fallback as openai-whisper), on an audio file."""
    m, load_s = _timed_load(lambda: load_model(model, device=device, decoder_precision=decoder_precision))
    m.transcribe(_warmup_file())
    return _e2e(lambda path: m.transcribe(path).text, audio, reference, load_s)


NOISE_SECONDS = 30.0


def ours_noise(model: str, device: str, repeats: int) -> dict:
    """`--vad` on 30 s of white noise (seeded, -40 dBFS): the text it gives (none is right), the encoder
    windows it runs and the wall time of the transcription (median of `repeats`, after loading)."""
    m = load_model(model, device=device)
    noise = (0.01 * np.random.default_rng(5).standard_normal(round(NOISE_SECONDS * SAMPLE_RATE))).astype(np.float32)
    m.transcribe(_warmup_file(), vad=True)
    results = []
    ms = _median_ms(lambda: results.append(m.transcribe(noise, vad=True)), repeats, warmup=1)
    return {"seconds": NOISE_SECONDS, "work_s": round(ms / 1e3, 4), "text": results[-1].text,
            "encoder_windows": len(results[-1].profile.runs)}


def _word_errors(transcribe, sets: dict[str, list]) -> dict:
    """{set: {errors, words, wer, wall_s}} of `transcribe` (samples -> text) over each set's inputs."""
    out = {}
    for name, items in sets.items():
        errors = words = deletions = 0
        start = time.perf_counter()
        for samples, reference in items:
            s = score(reference, transcribe(samples))
            errors, words, deletions = errors + s.errors, words + s.words, deletions + s.deletions
        out[name] = {"inputs": len(items), "errors": errors, "deletions": deletions, "words": words,
                     "wer": round(errors / words, 4), "wall_s": round(time.perf_counter() - start, 2)}
    return out


def ours_vad_accuracy(model: str, device: str, vad: bool, variants: int, clips: list | None) -> dict:
    """Our word errors, with --vad or sequential, over the variants of encoder.benchmark.vad_accuracy."""
    m = load_model(model, device=device)
    return _word_errors(lambda samples: m.transcribe(samples, vad=vad).text, vad_accuracy.inputs(variants, clips))


def faster_whisper_vad_accuracy(model_dir: str, threads: int, batch: int, variants: int, clips: list | None) -> dict:
    """faster-whisper's BatchedInferencePipeline (int8, greedy) over the same variants."""
    from faster_whisper import BatchedInferencePipeline  # a peer, from the bench extra

    m, _ = _faster_whisper(model_dir, "int8", threads)
    pipe = BatchedInferencePipeline(m)

    def transcribe(samples):
        segments, _ = pipe.transcribe(samples, beam_size=1, language="en", batch_size=batch)
        return " ".join(s.text.strip() for s in segments)

    return _word_errors(transcribe, vad_accuracy.inputs(variants, clips))


def _warmup_file() -> str:
    """A 3 s clip, written once, to warm up runtimes before the timed run."""
    path = os.path.join(os.environ.get("AMANUENSIS_BENCH_TMP") or tempfile.gettempdir(), "amanuensis-bench-warmup.wav")
    if not os.path.exists(path):
        speech.write(path, 3.0, seed=99)
    return path


def _faster_whisper(model_dir: str, compute_type: str, threads: int):
    """(faster-whisper model on the CPU, seconds it took to load)."""
    from faster_whisper import WhisperModel  # a peer, from the bench extra

    return _timed_load(lambda: WhisperModel(model_dir, device="cpu", compute_type=compute_type, cpu_threads=threads))


def faster_whisper_encoder(model_dir: str, compute_type: str, repeats: int, threads: int) -> dict:
    """faster-whisper (CTranslate2) encoder on the same tiny.en files and the same mel."""
    m, load_s = _faster_whisper(model_dir, compute_type, threads)
    mel = _mel(m.feature_extractor.mel_filters.shape[0])
    return {"encoder_ms_per_window": round(_median_ms(lambda: m.encode(mel), repeats), 2), "load_s": round(load_s, 2)}


def faster_whisper_e2e(model_dir: str, compute_type: str, audio: str, reference: str, threads: int) -> dict:
    """faster-whisper's transcribe, greedy (beam_size=1), same fallback and conditioning defaults."""
    m, load_s = _faster_whisper(model_dir, compute_type, threads)

    def transcribe(path: str) -> str:
        segments, _ = m.transcribe(path, beam_size=1, language="en")
        return " ".join(s.text for s in segments)

    transcribe(_warmup_file())
    return _e2e(transcribe, audio, reference, load_s)


def _converted(model: str):
    """The converted model (ConvertedModel) of a name, directory or hub id."""
    return ConvertedModel.open(resolve_model(model))


def _transformers_model(converted, threads: int):
    import torch  # a peer, from the test extra

    torch.set_num_threads(threads)
    return torch_whisper(converted)


def transformers_encoder(model: str, repeats: int, threads: int) -> dict:
    """transformers' WhisperEncoder (PyTorch fp32) holding our converted weights."""
    import torch

    m, load_s = _timed_load(lambda: _transformers_model(_converted(model), threads))
    mel = torch.from_numpy(_mel(m.config.num_mel_bins)[None])
    with torch.inference_mode():
        ms = _median_ms(lambda: m.model.encoder(mel), repeats)
    return {"encoder_ms_per_window": round(ms, 2), "load_s": round(load_s, 2)}


def transformers_e2e(model: str, audio: str, reference: str, threads: int) -> dict:
    """transformers' generate, greedy, sequential long-form with timestamps for > 30 s."""
    import torch
    import transformers

    converted = _converted(model)
    m, load_s = _timed_load(lambda: _transformers_model(converted, threads))
    tokenizer = WhisperTokenizer(converted.path / "tokenizer.json", converted.dims.is_multilingual)
    features = transformers.WhisperFeatureExtractor(feature_size=m.config.num_mel_bins)

    def transcribe(path: str) -> str:
        samples = load_audio(path)
        long_form = len(samples) > 30 * SAMPLE_RATE
        inputs = features(samples, sampling_rate=SAMPLE_RATE, return_tensors="pt", return_attention_mask=True,
                          **({"truncation": False, "padding": "longest"} if long_form else {}))
        with torch.inference_mode():
            tokens = m.generate(inputs.input_features, attention_mask=inputs.attention_mask,
                                return_timestamps=long_form, num_beams=1,
                                condition_on_prev_tokens=long_form, temperature=(0.0, 0.2, 0.4, 0.6, 0.8, 1.0),
                                compression_ratio_threshold=2.4, logprob_threshold=-1.0)
        return tokenizer.decode(tokens[0].tolist())

    transcribe(_warmup_file())
    return _e2e(transcribe, audio, reference, load_s)


def onnxruntime_encoder(model: str, repeats: int, threads: int) -> dict:
    """ONNX Runtime's CPU provider running the encoder graph of weights_tools.onnx_encoder."""
    import onnxruntime

    def load():
        converted = _converted(model)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        blob = build_encoder_onnx(converted.dims, kernel_to_encoder(converted.read_encoder_weights(), converted.dims))
        return onnxruntime.InferenceSession(blob, options, providers=["CPUExecutionProvider"]), converted.dims

    (session, dims), load_s = _timed_load(load)
    mel = _mel(dims.n_mels)[None]
    return {"encoder_ms_per_window": round(_median_ms(lambda: session.run(None, {"mel": mel}), repeats), 2),
            "load_s": round(load_s, 2)}


JOBS = {f.__name__: f for f in (gemm_peak, native_levels, ours_encoder, ours_batched, ours_decoder_steps, ours_e2e,
                                ours_noise, ours_vad_accuracy, faster_whisper_vad_accuracy,
                                faster_whisper_encoder,
                                faster_whisper_e2e, transformers_encoder, transformers_e2e, onnxruntime_encoder)}


def _parse(text: str):
    """The job function and its arguments bound from `text` ('{"job": name, ...}'); BadOption naming
    what is wrong with it."""
    try:
        spec = json.loads(text)
    except json.JSONDecodeError as e:
        raise BadOption("job", f"the job is not JSON ({e})") from None
    if not isinstance(spec, dict) or spec.get("job") not in JOBS:
        raise BadOption("job", f"a job is {{\"job\": name, ...}} with a name from: {', '.join(JOBS)}")
    job = JOBS[spec.pop("job")]
    try:
        return job, inspect.signature(job).bind(**spec)
    except TypeError as e:
        raise BadOption("job", f"{job.__name__}: {e} (it takes {inspect.signature(job)})") from None


def main(argv=None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    job, bound = _parse(args[0] if args else sys.stdin.read())
    result = job(*bound.args, **bound.kwargs)
    result["peak_rss_mb"] = round(peak_rss.own_mb(), 1)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    run(main)
