"""The bench's measurements, in order: each one a job of encoder.benchmark.jobs run in a child
process, so that every peak resident memory is that system's own.

`measure(options)` returns the result document that `python -m encoder.bench` prints and writes
as bench.json (encoder/benchmark/report.py reads it).
"""
from __future__ import annotations

import datetime
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy
from threadpoolctl import threadpool_info

from encoder.benchmark import server_load, speech, whole
from encoder.benchmark.report import headline, label, ratios, shares_of_peak, targets, variant_name
from kernels.errors import AmanuensisError
from weights_tools.resolve import DEFAULT_MODEL, bundled_tiny_en, resolve_model

PEERS = ("faster-whisper-int8", "faster-whisper-fp32", "transformers", "onnxruntime")
# --backends names beyond the devices: a device run with settings, so that both variants are measured in one run
VARIANT_BACKENDS = {"cpu-numpy": ("cpu", {"AMANUENSIS_CPU_NATIVE": "0"})}

def _say(msg: str) -> None:
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def run_job(job: str, child_threads: int, backend: str | None = None, **spec) -> dict:
    """Run one job of encoder.benchmark.jobs in a child process; {"error": ...} if it failed.
    backend: one of --backends, handed to the job as its device (with its settings, if a variant)."""
    env = {**os.environ, "AMANUENSIS_THREADS": str(child_threads)}
    if backend is not None:
        spec["device"], settings = VARIANT_BACKENDS.get(backend, (backend, {}))
        env.update(settings)
    proc = subprocess.run([sys.executable, "-m", "encoder.benchmark.jobs"], input=json.dumps({"job": job, **spec}),
                          capture_output=True, text=True, env=env)    # on stdin: hours of reference text
                                                                          # exceed an argument's size limit
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        err = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
        _say(f"{job} failed: {err}")
        return {"error": err}
    return json.loads(lines[-1])


def machine(threads: int) -> dict:
    """What the figures were measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    blas = [f"{i.get('internal_api')} {i.get('version')} ({i.get('architecture')})" for i in threadpool_info()
            if i["user_api"] == "blas"]
    return {"cpu": cpu, "cores": os.cpu_count(), "threads": threads, "python": platform.python_version(),
            "numpy": numpy.__version__, "blas": blas[0] if blas else None}


def _e2e_figures(prefix: dict, runs: dict[str, dict]) -> dict:
    out = dict(prefix)
    for name, r in runs.items():
        if "error" in r:
            out[f"rtf_{name}"], out.setdefault("errors", {})[name] = None, r["error"]
            continue
        out[f"rtf_{name}"], out[f"wer_{name}"] = r["rtf"], r["wer"]
        out.setdefault("peak_rss_mb_by_input", {})[name] = r["peak_rss_mb"]
    return out


def bench_ours(args, inputs: dict[str, tuple[str, str]]) -> dict:
    """Our encoder on each backend, the per-node profile, batching, and end to end on every input."""
    encoder, described, profile, flops = {}, {}, None, None
    for backend in args.backends:
        _say(f"encoder on {backend} ...")
        r = run_job("ours_encoder", args.threads, backend, model=args.model, repeats=args.repeats)
        encoder[backend], described[backend] = r.get("encoder_ms_per_window"), r.get("backend")
        if profile is None and "profile" in r:
            profile, flops = r["profile"], r["flops"]
    if profile is None:
        raise AmanuensisError("no backend could run the encoder; see the messages above")
    levels = None
    if "cpu" in args.backends:
        _say("native kernels, each copy this CPU runs ...")
        levels = run_job("native_levels", 1, repeats=args.repeats)
    _say("--vad on 30 s of noise ...")
    noise = run_job("ours_noise", args.threads, args.backends[0], model=args.model, repeats=args.repeats)
    _say("batched linears (two windows stacked) ...")
    batched = run_job("ours_batched", args.threads, args.backends[0], model=args.model, repeats=args.repeats)
    _say("decoder steps, 1 to 16 rows ...")
    steps = run_job("ours_decoder_steps", args.threads, args.backends[0], model=args.model, repeats=args.repeats)
    runs = {p: {} for p in args.decoder_precisions}
    for name, (audio, reference) in inputs.items():
        for precision in args.decoder_precisions:
            _say(f"end to end on {name} of speech, {precision} decoder ...")
            runs[precision][name] = run_job("ours_e2e", args.threads, args.backends[0], model=args.model,
                                            audio=audio, reference=reference, threads=args.threads,
                                            decoder_precision=precision)
    head, *others = args.decoder_precisions
    figures = _e2e_figures({"encoder_ms_per_window": encoder, "backends": described, "profile": profile,
                            "flops_per_window": flops, "native_levels": levels, "batched": batched, "noise": noise,
                            "decoder_steps": steps,
                            "decoder_precision": head}, runs[head])
    figures["variants"] = {variant_name(p): _e2e_figures({"decoder_precision": p}, runs[p]) for p in others}
    return figures


def _peer_jobs(peer: str, args) -> tuple[str | None, str, str, dict]:
    """(why it cannot run or None, encoder job, e2e job or "", job arguments) of one peer."""
    if peer.startswith("faster-whisper"):
        if importlib.util.find_spec("faster_whisper") is None:
            return "faster-whisper is not installed (pip install 'amanuensis[bench]')", "", "", {}
        model_dir = str(bundled_tiny_en()) if args.model == DEFAULT_MODEL else args.model
        if not (Path(model_dir) / "model.bin").is_file():
            return f"{model_dir} is not a CTranslate2 directory", "", "", {}
        return None, "faster_whisper_encoder", "faster_whisper_e2e", {
            "model_dir": model_dir, "compute_type": "int8" if peer.endswith("int8") else "float32"}
    if peer == "transformers":
        missing = [m for m in ("torch", "transformers") if importlib.util.find_spec(m) is None]
        if missing:
            return f"{' and '.join(missing)} not installed", "", "", {}
        return None, "transformers_encoder", "transformers_e2e", {"model": args.model}
    return None, "onnxruntime_encoder", "", {"model": args.model}


def bench_peers(args, inputs: dict[str, tuple[str, str]]) -> dict:
    """Each peer's encoder per window and end to end on the same inputs (ONNX Runtime: encoder only)."""
    peers = {}
    for peer in PEERS:
        why, enc_job, e2e_job, spec = _peer_jobs(peer, args)
        if why:
            _say(f"{peer} skipped: {why}")
            peers[peer] = {"skipped": why}
            continue
        _say(f"{peer}: encoder ...")
        enc = run_job(enc_job, args.threads, repeats=args.repeats, threads=args.threads, **spec)
        runs = {}
        for name, (audio, reference) in (inputs.items() if e2e_job else ()):
            _say(f"{peer}: end to end on {name} ...")
            runs[name] = run_job(e2e_job, args.threads, audio=audio, reference=reference, threads=args.threads, **spec)
        peers[peer] = _e2e_figures({"encoder_ms_per_window": enc.get("encoder_ms_per_window"),
                                    **({"error": enc["error"]} if "error" in enc else {})}, runs)
    return peers

def bench_whole(args, tmp: Path) -> dict:
    """Whole processes on varied speech, a short clip and many files (encoder.benchmark.whole), with
    faster-whisper beside ours when --peers asks and it can run."""
    why, _, _, spec = _peer_jobs("faster-whisper-int8", args) if args.peers else ("--peers not given", "", "", {})
    if why:
        _say(f"whole processes without faster-whisper: {why}")
    systems = whole.systems(args.model, None if why else spec["model_dir"], args.threads)
    inputs = whole.write_inputs(tmp, args.clips)
    return whole.measure(systems, inputs, args.whole_repeats, args.threads, tmp, say=_say)


def bench_vad_accuracy(args) -> dict:
    """{system: {set: word errors}}: ours with --vad and sequential, and faster-whisper batched 8 where
    --peers asks and it can run, over the variants of encoder.benchmark.vad_accuracy."""
    clips = [(str(c.path), c.text) for c in args.clips] if args.clips else None
    spec = {"variants": args.vad_variants, "clips": clips}
    out = {}
    for name, vad in ((whole.OURS_VAD, True), (whole.OURS, False)):
        _say(f"word errors over variants: {name} ...")
        out[name] = run_job("ours_vad_accuracy", args.threads, args.backends[0], model=args.model, vad=vad, **spec)
    why, _, _, fw = _peer_jobs("faster-whisper-int8", args) if args.peers else ("--peers not given", "", "", {})
    if not why:
        name = whole.FW_BATCHED.format(8)
        _say(f"word errors over variants: {name} ...")
        out[name] = run_job("faster_whisper_vad_accuracy", args.threads, model_dir=fw["model_dir"],
                            threads=args.threads, batch=8, **spec)
    return out


def bench_server(args) -> dict:
    """The server under --server-clients concurrent clients sending the real clips."""
    if not args.clips:
        _say("server run skipped: no clips (--clips)")
        return {"skipped": "no clips (--clips)"}
    _say(f"server: one client, then {args.server_clients} at once ...")
    env = {**os.environ, "AMANUENSIS_THREADS": str(args.threads)}
    try:
        return server_load.measure(args.model, [c.path for c in args.clips], args.server_clients, env=env)
    except RuntimeError as e:
        _say(f"server run failed: {e}")
        return {"error": str(e)}


def _inputs(lengths: list[float], tmp: Path) -> dict[str, tuple[str, str]]:
    inputs = {}
    for seconds in lengths:
        path = tmp / f"speech-{label(seconds)}.wav"
        _say(f"writing {label(seconds)} of speech ...")
        inputs[label(seconds)] = (str(path), speech.write(path, seconds))
    return inputs


def measure(args) -> dict:
    """Every measurement `args` (the bench's options) asks for, in one result document."""
    resolve_model(args.model)                       # convert once here, not inside a timed child
    result = {"model": args.model, "date": datetime.date.today().isoformat(), "machine": machine(args.threads)}
    _say("sgemm peak ...")
    before = run_job("gemm_peak", args.threads, threads=args.threads).get("gemm_peak_gflops")
    with tempfile.TemporaryDirectory(prefix="amanuensis-bench-") as tmp:
        os.environ["AMANUENSIS_BENCH_TMP"] = tmp
        inputs = _inputs(args.lengths, Path(tmp))
        memory = _inputs([60 * m for m in args.memory_minutes if 60 * m not in args.lengths], Path(tmp))
        result["inputs"] = list(inputs) + list(memory)
        result.update(bench_ours(args, {**inputs, **memory}))
        if args.peers:
            result["peers"] = bench_peers(args, inputs)
        if args.whole_repeats:
            result["whole"] = bench_whole(args, Path(tmp))
            result["whole_speedups"] = whole.speedups(result["whole"])
        if args.vad_variants:
            result["vad_accuracy"] = bench_vad_accuracy(args)
        if args.server_clients:
            result["server"] = bench_server(args)
    _say("sgemm peak again ...")         # a busy moment lowers one measurement: the best of both counts
    after = run_job("gemm_peak", args.threads, threads=args.threads).get("gemm_peak_gflops")
    result["gemm_peak_gflops"] = max((p for p in (before, after) if p), default=None)
    result["gemm_peak_runs"] = [before, after]
    result["peak_warning"] = shares_of_peak(result["profile"], result["gemm_peak_gflops"])
    for figures in (result, *result.get("variants", {}).values(), *result.get("peers", {}).values()):
        headline(figures)
    result["ratios"] = ratios(result)
    for figures in result.get("variants", {}).values():
        figures["ratios"] = ratios(result, figures)
    result["targets"] = [{"target": w, "measured": m, "met": ok} for w, m, ok in targets(result)]
    return result
