"""`python -m encoder.bench`: encoder and end-to-end speed, memory and the peers, measured in one run.

Every figure comes from a child process (encoder.benchmark.jobs) so that each
peak resident memory is that system's own. The input is the project's own
synthesised speech (encoder/benchmark/data), reordered into 30 s, 5 min, ...
Results: a table on stdout (or one JSON object with --json), bench.json and
profile.png in --out-dir.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

from encoder.errors import AmanuensisError

PEERS = ("faster-whisper-int8", "faster-whisper-fp32", "transformers", "onnxruntime")
# --backends names beyond the devices: a device run with settings, so that both variants are measured in one run
VARIANT_BACKENDS = {"cpu-numpy": ("cpu", {"AMANUENSIS_CPU_NATIVE": "0"})}


def label(seconds: float) -> str:
    """30 -> '30s', 300 -> '5min', 3600 -> '60min'."""
    return f"{seconds / 60:g}min" if seconds >= 60 else f"{seconds:g}s"


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
    import numpy
    from threadpoolctl import threadpool_info

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
    _say("batched linears (two windows stacked) ...")
    batched = run_job("ours_batched", args.threads, args.backends[0], model=args.model, repeats=args.repeats)
    runs = {p: {} for p in args.decoder_precisions}
    for name, (audio, reference) in inputs.items():
        for precision in args.decoder_precisions:
            _say(f"end to end on {name} of speech, {precision} decoder ...")
            runs[precision][name] = run_job("ours_e2e", args.threads, args.backends[0], model=args.model,
                                            audio=audio, reference=reference, threads=args.threads,
                                            decoder_precision=precision)
    head, *others = args.decoder_precisions
    figures = _e2e_figures({"encoder_ms_per_window": encoder, "backends": described, "profile": profile,
                            "flops_per_window": flops, "native_levels": levels, "batched": batched,
                            "decoder_precision": head}, runs[head])
    figures["variants"] = {_variant(p): _e2e_figures({"decoder_precision": p}, runs[p]) for p in others}
    return figures


def _variant(precision: str) -> str:
    return f"{precision} decoder"


def _peer_jobs(peer: str, args) -> tuple[str | None, str, str, dict]:
    """(why it cannot run or None, encoder job, e2e job or "", job arguments) of one peer."""
    import importlib.util

    if peer.startswith("faster-whisper"):
        if importlib.util.find_spec("faster_whisper") is None:
            return "faster-whisper is not installed (pip install 'amanuensis[bench]')", "", "", {}
        from weights_tools.resolve import DEFAULT_MODEL, bundled_tiny_en

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


def ratios(result: dict, figures: dict | None = None) -> dict:
    """Ours against each peer: encoder time (ours / theirs, < 1 is faster), speed (ours / theirs, > 1 is
    faster) and peak memory (ours / theirs). `figures`: the end-to-end figures of one of our
    configurations (default the headline one, `result` itself)."""
    figures = result if figures is None else figures
    ours_ms = result["encoder_ms_per_window"].get("cpu")
    out = {}
    for peer, r in result.get("peers", {}).items():
        entry = {}
        if ours_ms and r.get("encoder_ms_per_window"):
            entry["encoder_time"] = round(ours_ms / r["encoder_ms_per_window"], 3)
        for key, value in r.items():
            if key.startswith("rtf_") and value and figures.get(key):
                entry[key] = round(figures[key] / value, 3)
        mine, theirs = figures.get("peak_rss_mb_by_input", {}), r.get("peak_rss_mb_by_input", {})
        for name in set(mine) & set(theirs):
            entry[f"peak_rss_{name}"] = round(mine[name] / theirs[name], 3)
        out[peer] = entry
    return out


def _inputs(lengths: list[float], tmp: Path) -> dict[str, tuple[str, str]]:
    from encoder.benchmark import speech

    inputs = {}
    for seconds in lengths:
        path = tmp / f"speech-{label(seconds)}.wav"
        _say(f"writing {label(seconds)} of speech ...")
        inputs[label(seconds)] = (str(path), speech.write(path, seconds))
    return inputs


def _headline(figures: dict) -> None:
    """Add peak_rss_mb: the 5 min run's if measured, else the longest input's."""
    by_input = figures.get("peak_rss_mb_by_input", {})
    if by_input:
        figures["peak_rss_mb"] = by_input.get("5min", by_input[max(by_input, key=_seconds)])


def _seconds(name: str) -> float:
    return float(name[:-3]) * 60 if name.endswith("min") else float(name[:-1])


def targets(result: dict) -> list[tuple[str, str, bool | None]]:
    """The performance issue's targets as (what, measured, met); None where a figure is missing.
    The end-to-end ones are judged for each of our configurations (decoder precisions)."""
    peers = result.get("peers", {})
    ort = peers.get("onnxruntime", {}).get("encoder_ms_per_window")
    cpu = result["encoder_ms_per_window"].get("cpu")
    rows = [("encoder <= 0.85 x ONNX Runtime", f"{cpu / ort:.2f} x" if cpu and ort else "n/a",
             cpu / ort <= 0.85 if cpu and ort else None)]
    for figures in (result, *result.get("variants", {}).values()):
        rows += _e2e_targets(figures, peers.get("faster-whisper-int8", {}).get("rtf_5min"))
    return rows


def _e2e_targets(ours: dict, fw: float | None) -> list[tuple[str, str, bool | None]]:
    which = f" ({ours['decoder_precision']} decoder)" if ours.get("decoder_precision") else ""
    rss = ours.get("peak_rss_mb_by_input", {})
    longest = max(rss, key=_seconds) if rss else None
    rows = [("5 min speed >= 1.5 x faster-whisper int8" + which,
             f"{ours['rtf_5min'] / fw:.2f} x" if fw and ours.get("rtf_5min") else "n/a",
             ours["rtf_5min"] / fw >= 1.5 if fw and ours.get("rtf_5min") else None),
            ("peak memory on 5 min <= 400 MB" + which, f"{rss['5min']:.0f} MB" if "5min" in rss else "n/a",
             rss["5min"] <= 400 if "5min" in rss else None)]
    if "5min" in rss and longest and longest != "5min":
        growth = rss[longest] - rss["5min"]
        rows.append((f"memory flat from 5 min to {longest} (within 10%)" + which, f"{growth:+.0f} MB",
                     growth <= 0.1 * rss["5min"]))
    return rows


def format_report(result: dict) -> str:
    """The human-readable version of the result."""
    m = result["machine"]
    peak = result["gemm_peak_gflops"]
    lines = [f"{result['model']} on {m['cpu']}, {m['threads']} threads, {result['date']} (BLAS: {m['blas']})",
             f"sgemm peak (2048^3, numpy's BLAS): {peak} GFLOP/s", "",
             "encoder ms per 30 s window: " + ", ".join(f"{b} {ms}" for b, ms in result["encoder_ms_per_window"].items()),
             *(f"  {b}: {d}" for b, d in result.get("backends", {}).items() if d), "",
             f"{'node':32} {'kernel':10} {'ms':>8} {'GFLOP/s':>8} {'% peak':>7}"]
    for row in result["profile"]:
        rate = row.get("gflops") or 0.0
        lines.append(f"{row['node']:32} {row['kernel']:10} {row['ms']:8.2f} {rate:8.1f} {100 * rate / peak:6.1f}%")
    levels = result.get("native_levels") or {}
    if "levels" in levels:
        lines.append(f"\nnative kernels on one thread (in use: {levels['in_use']}; numpy's BLAS on the same "
                     f"750x384x1536 product: {levels['blas_linear_gflops']} GFLOP/s):")
        lines += [f"  {name}: attention head (T 1500) {r['attention_head_ms']} ms, linear {r['linear_gflops']} GFLOP/s"
                  for name, r in levels["levels"].items()]
    b = result.get("batched", {})
    if "gain" in b:
        lines.append(f"\nbatched: two windows stacked through every linear node: {b['stacked_ms']} ms against "
                     f"{b['two_windows_ms']} ms one by one ({100 * b['gain']:+.1f}% throughput)")
    lines.append(f"\n{'system':26} {'encoder ms':>10} " + " ".join(
        f"{'x RT ' + n:>11} {'WER':>6} {'RSS MB':>7}" for n in result["inputs"]))
    for name, r in systems(result).items():
        if "skipped" in r:
            lines.append(f"{name:26} skipped: {r['skipped']}")
            continue
        ms = r.get("encoder_ms_per_window", result["encoder_ms_per_window"])
        ms = ms.get("cpu") if isinstance(ms, dict) else ms
        cells = []
        for n in result["inputs"]:
            rtf, wer, rss = r.get(f"rtf_{n}"), r.get(f"wer_{n}"), r.get("peak_rss_mb_by_input", {}).get(n)
            cells.append(f"{rtf if rtf is not None else '-':>11} {f'{wer:.3f}' if wer is not None else '-':>6} "
                         f"{rss if rss is not None else '-':>7}")
        lines.append(f"{name:26} {ms if ms is not None else '-':>10} " + " ".join(cells))
    for name, r in systems(result).items():
        if r.get("ratios"):
            lines.append(f"\n{name} / peer: " + "; ".join(f"{p}: " + ", ".join(f"{k} {v}" for k, v in q.items())
                                                          for p, q in r["ratios"].items() if q))
    lines.append("\ntargets:")
    for what, measured, met in targets(result):
        lines.append(f"  {'MET ' if met else 'not met' if met is False else 'n/a '}  {what}: {measured}")
    return "\n".join(lines)


def systems(result: dict) -> dict[str, dict]:
    """Every row of the table: our configurations (headline first), then the peers."""
    head = f"amanuensis, {_variant(result['decoder_precision'])}" if result.get("decoder_precision") else "amanuensis"
    return {head: result, **{f"amanuensis, {v}": f for v, f in result.get("variants", {}).items()},
            **result.get("peers", {})}


def _names(text: str, option: str, allowed) -> list[str]:
    """The comma-separated names of `text`, each one of `allowed`, at least one."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    bad = [n for n in names if n not in allowed]
    if bad or not names:
        raise AmanuensisError(f"{option} {','.join(bad) or '(empty)'}: choose from {', '.join(allowed)}")
    return names


def _numbers(text: str, name: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise AmanuensisError(f"{name} {text!r}: expected numbers separated by commas") from None
    if any(v <= 0 for v in values):
        raise AmanuensisError(f"{name} {text!r}: every value must be positive")
    return values


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m encoder.bench", description="Measure the encoder per 30 s window on each backend (with a "
        "per-node profile against the machine's sgemm peak), end-to-end speed and peak memory on synthesised "
        "speech, and, with --peers, faster-whisper, transformers and ONNX Runtime in the same run.")
    parser.add_argument("--model", default="tiny.en", help="model name, directory or hub id (default tiny.en)")
    parser.add_argument("--backends", default="cpu,cpu-numpy,emu", help="encoder backends, the first also runs end "
                        "to end and gives the profile; cpu-numpy is the cpu backend with its native kernels switched "
                        "off (default cpu,cpu-numpy,emu; add npu on a machine with one)")
    parser.add_argument("--lengths", default="30,300", help="seconds of speech for the end-to-end runs (default 30,300)")
    parser.add_argument("--memory-minutes", default="30", help="extra, longer end-to-end runs of ours, for memory "
                        "growth (default 30; '' for none; e.g. 30,60,180 for hours of input)")
    parser.add_argument("--decoder-precisions", default="fp32,int8", help="decoder weights of our end-to-end runs, "
                        "each run in turn; the first gives the headline figures (default fp32,int8)")
    parser.add_argument("--repeats", type=int, default=5, help="timed encoder runs per system (median; default 5)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="threads for every system (default: all cores)")
    parser.add_argument("--peers", action="store_true", help="also measure faster-whisper int8/fp32, transformers "
                        "and ONNX Runtime when installed")
    parser.add_argument("--out-dir", default="bench-results", help="where bench.json and profile.png go")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object instead of a table")
    args = parser.parse_args(argv)
    from encoder.model import DEVICES
    from weights_tools.model_dir import DECODER_PRECISIONS

    args.backends = _names(args.backends, "--backends", [d for d in DEVICES if d != "auto"] + list(VARIANT_BACKENDS))
    args.decoder_precisions = _names(args.decoder_precisions, "--decoder-precisions", DECODER_PRECISIONS)
    if args.repeats < 1 or args.threads < 1:
        raise AmanuensisError("--repeats and --threads must be at least 1")
    args.lengths = _numbers(args.lengths, "--lengths")
    args.memory_minutes = _numbers(args.memory_minutes, "--memory-minutes")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if not os.access(out_dir, os.W_OK):
        raise AmanuensisError(f"--out-dir {out_dir}: not writable")
    from weights_tools.resolve import resolve_model

    resolve_model(args.model)                       # convert once here, not inside a timed child
    result = {"model": args.model, "date": datetime.date.today().isoformat(), "machine": machine(args.threads)}
    _say("sgemm peak ...")
    result.update(run_job("gemm_peak", args.threads, threads=args.threads))
    with tempfile.TemporaryDirectory(prefix="amanuensis-bench-") as tmp:
        os.environ["AMANUENSIS_BENCH_TMP"] = tmp
        inputs = _inputs(args.lengths, Path(tmp))
        memory = _inputs([60 * m for m in args.memory_minutes if 60 * m not in args.lengths], Path(tmp))
        result["inputs"] = list(inputs) + list(memory)
        result.update(bench_ours(args, {**inputs, **memory}))
        if args.peers:
            result["peers"] = bench_peers(args, inputs)
    peak = result.get("gemm_peak_gflops") or 0
    for row in result["profile"]:
        row["share_of_peak"] = round(row["gflops"] / peak, 4) if row.get("gflops") and peak else None
    for figures in (result, *result.get("variants", {}).values(), *result.get("peers", {}).values()):
        _headline(figures)
    result["ratios"] = ratios(result)
    for figures in result.get("variants", {}).values():
        figures["ratios"] = ratios(result, figures)
    result["targets"] = [{"target": w, "measured": m, "met": ok} for w, m, ok in targets(result)]
    from encoder.benchmark.chart import draw
    from encoder.fileio import atomic_write

    atomic_write(out_dir / "bench.json", lambda tmp: tmp.write_text(json.dumps(result, indent=1)))
    why = draw(result, out_dir / "profile.png")
    result["chart"] = None if why else str(out_dir / "profile.png")
    _say(f"chart not drawn: {why}" if why else f"wrote {out_dir / 'bench.json'} and {out_dir / 'profile.png'}")
    print(json.dumps(result) if args.json else format_report(result))
    return 0


if __name__ == "__main__":
    from encoder.cli import run_main

    run_main(main)
