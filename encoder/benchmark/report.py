"""The bench's result, read: ratios to the peers, the performance goals, node shares of the
machine's peak, and the text report."""
from __future__ import annotations

from encoder.benchmark.whole import CLIPS, FW, FW_BATCHED, OURS, OURS_SEQUENTIAL, OURS_VAD, SHORT, VARIED


def label(seconds: float) -> str:
    """30 -> '30s', 300 -> '5min', 3600 -> '60min'."""
    return f"{seconds / 60:g}min" if seconds >= 60 else f"{seconds:g}s"


def shares_of_peak(profile: list[dict], peak: float | None) -> str | None:
    """Set each profile row's share_of_peak (its GFLOP/s over the machine's sgemm peak), and None where
    that is impossible (above 1: the peak was measured low, e.g. while another process used the CPU).
    Returns a warning naming the impossible rows, or None."""
    impossible = []
    for row in profile:
        share = row["gflops"] / peak if row.get("gflops") and peak else None
        if share is not None and share > 1:
            impossible.append(f"{row['node']} {share:.2f}")
            share = None
        row["share_of_peak"] = None if share is None else round(share, 4)
    if not impossible:
        return None
    return (f"{len(impossible)} node(s) ran faster than the measured sgemm peak ({', '.join(impossible[:4])}"
            f"{' ...' if len(impossible) > 4 else ''} x peak): the peak was measured low, so no share of it is given")


def variant_name(precision: str) -> str:
    """How the report names one of our configurations: "int8 decoder"."""
    return f"{precision} decoder"


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


def headline(figures: dict) -> None:
    """Add peak_rss_mb: the 5 min run's if measured, else the longest input's."""
    by_input = figures.get("peak_rss_mb_by_input", {})
    if by_input:
        figures["peak_rss_mb"] = by_input.get("5min", by_input[max(by_input, key=seconds_of)])


def seconds_of(name: str) -> float:
    """The seconds a label stands for: '5min' -> 300."""
    return float(name[:-3]) * 60 if name.endswith("min") else float(name[:-1])


def targets(result: dict) -> list[tuple[str, str, bool | None]]:
    """The project's performance goals as (what, measured, met); None where a figure is missing.
    The end-to-end ones are judged for each of our configurations (decoder precisions)."""
    peers = result.get("peers", {})
    ort = peers.get("onnxruntime", {}).get("encoder_ms_per_window")
    cpu = result["encoder_ms_per_window"].get("cpu")
    rows = [("encoder <= 0.85 x ONNX Runtime", f"{cpu / ort:.2f} x" if cpu and ort else "n/a",
             cpu / ort <= 0.85 if cpu and ort else None)]
    for figures in (result, *result.get("variants", {}).values()):
        rows += _e2e_targets(figures, peers.get("faster-whisper-int8", {}).get("rtf_5min"))
    rows += _noise_targets(result.get("noise") or {}) + _vad_accuracy_targets(result.get("vad_accuracy") or {})
    return rows + _whole_targets(result.get("whole", {}), result.get("whole_speedups", {})) + \
        _server_targets(result.get("server") or {})


def _noise_targets(noise: dict) -> list[tuple[str, str, bool | None]]:
    if "work_s" not in noise:
        return []
    return [(f"--vad on {noise['seconds']:g} s of noise: no text, under 0.1 s of work",
             f"{noise['work_s']:.3f} s, text {noise['text']!r}", noise["work_s"] < 0.1 and not noise["text"])]


def _vad_accuracy_targets(accuracy: dict) -> list[tuple[str, str, bool | None]]:
    """--vad's WER no more than a point above faster-whisper batched 8's, on each set of variants."""
    ours, theirs = accuracy.get(OURS_VAD, {}), accuracy.get(FW_BATCHED.format(8), {})
    rows = []
    for name, f in ours.items():
        other = theirs.get(name)
        if not isinstance(f, dict) or not isinstance(other, dict):
            continue
        rows.append((f"{OURS_VAD}, {name} ({f['inputs']} inputs): WER <= {FW_BATCHED.format(8)}'s + 1 point",
                     f"{100 * f['wer']:.2f}% vs {100 * other['wer']:.2f}%", f["wer"] <= other["wer"] + 0.01))
    return rows


def _server_targets(server: dict) -> list[tuple[str, str, bool | None]]:
    if "concurrent" not in server:
        return []
    c, n = server["concurrent"], f"{server['clients']} clients x {server['requests_per_client']} requests"
    return [(f"server, {n}: no failures", f"{c['failures']} of {c['requests']}", c["failures"] == 0),
            (f"server, {n}: the one-client transcripts", f"{c['same_as_one_client']} of {c['requests']}",
             c["same_as_one_client"] == c["requests"]),
            (f"server, {n}: throughput >= 1.5 x one client's", f"{server['throughput_ratio']:.2f} x",
             server["throughput_ratio"] >= 1.5)]


def _whole_targets(whole_: dict, speedups: dict) -> list[tuple[str, str, bool | None]]:
    """The whole-process goals (encoder.benchmark.whole): speed against faster-whisper, --vad's memory."""
    def faster(name: str, system: str, against: str, at_least: float) -> tuple[str, str, bool | None]:
        theirs = whole_.get(name, {}).get(against, {}).get("wall_s")
        ours = whole_.get(name, {}).get(system, {}).get("wall_s")
        ratio = theirs / ours if theirs and ours else None
        return (f"{system}, {name}, whole process: >= {at_least:g} x {against}",
                f"{ratio:.2f} x" if ratio else "n/a", ratio >= at_least if ratio else None)

    if not whole_:
        return []
    rss = whole_.get(VARIED, {}).get(OURS_VAD, {}).get("peak_rss_mb")
    wer, theirs = (whole_.get(VARIED, {}).get(s, {}).get("wer") for s in (OURS_VAD, FW_BATCHED.format(8)))
    both = wer is not None and theirs is not None
    rows = [faster(VARIED, OURS, FW, 1.5), faster(VARIED, OURS_VAD, FW_BATCHED.format(8), 2.0),
            (f"{OURS_VAD}, {VARIED}: peak memory <= 500 MB", f"{rss:.0f} MB" if rss else "n/a",
             rss <= 500 if rss else None),
            (f"{OURS_VAD}, {VARIED}, whole process: WER <= {FW_BATCHED.format(8)}'s + 1 point",
             f"{100 * wer:.1f}% vs {100 * theirs:.1f}%" if both else "n/a", wer <= theirs + 0.01 if both else None),
            faster(SHORT, OURS, FW, 1.0)]
    clips = whole_.get(CLIPS, {}).get(OURS, {})
    if "same_texts_as_sequential" in clips:
        rows += [faster(CLIPS, OURS, OURS_SEQUENTIAL, 2.0),
                 (f"{OURS}, {CLIPS}: each transcript as {OURS_SEQUENTIAL}'s",
                  f"{clips['same_texts_as_sequential']} of {clips['files']}",
                  clips["same_texts_as_sequential"] == clips["files"])]
    return rows


def _e2e_targets(ours: dict, fw: float | None) -> list[tuple[str, str, bool | None]]:
    which = f" ({ours['decoder_precision']} decoder)" if ours.get("decoder_precision") else ""
    rss = ours.get("peak_rss_mb_by_input", {})
    longest = max(rss, key=seconds_of) if rss else None
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
             f"sgemm peak (2048^3, numpy's BLAS, best before and after the run): {peak} GFLOP/s",
             *([f"warning: {result['peak_warning']}"] if result.get("peak_warning") else []), "",
             "encoder ms per 30 s window: "
             + ", ".join(f"{b} {ms}" for b, ms in result["encoder_ms_per_window"].items()),
             *(f"  {b}: {d}" for b, d in result.get("backends", {}).items() if d), "",
             f"{'node':32} {'kernel':10} {'ms':>8} {'GFLOP/s':>8} {'% peak':>7}"]
    for row in result["profile"]:
        share = row.get("share_of_peak")
        shown = "n/a" if share is None else f"{100 * share:.1f}%"
        lines.append(f"{row['node']:32} {row['kernel']:10} {row['ms']:8.2f} {row.get('gflops') or 0.0:8.1f} {shown:>7}")
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
    d = result.get("decoder_steps", {})
    if "step_ms" in d:
        lines.append(f"\ndecoder step, {d['decoder_precision']} weights, one token a row: " + ", ".join(
            f"{rows} row{'s' * (rows != '1')} {ms:.2f} ms ({ms / int(rows):.2f} a row)"
            for rows, ms in d["step_ms"].items()))
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
    for name, figures in result.get("whole", {}).items():
        lines.append(f"\nwhole processes, {name} (median of runs; speed against faster-whisper int8):")
        for system, f in figures.items():
            speed = result.get("whole_speedups", {}).get(name, {}).get(system)
            lines.append(f"  {system:34} error: {f['error']}" if "error" in f else
                         f"  {system:34} {f['wall_s']:7.2f} s  {f'{speed:.2f} x' if speed else '':>7}  "
                         f"{f['peak_rss_mb']:6.0f} MB  WER {100 * f['wer']:5.1f}%  runs {f['runs_s']}")
    accuracy = result.get("vad_accuracy") or {}
    for system, sets in accuracy.items():
        if system == next(iter(accuracy)):
            lines.append("\nword errors over variants (in-process; encoder.benchmark.vad_accuracy):")
        lines += [f"  {system:34} error: {sets['error']}"] if "error" in sets else [
            f"  {system:34} {name}: {f['inputs']} inputs, WER {100 * f['wer']:5.2f}% ({f['errors']} of "
            f"{f['words']} words, {f.get('deletions', '?')} left out), {f['wall_s']} s"
            for name, f in sets.items() if isinstance(f, dict)]
    noise = result.get("noise") or {}
    if "work_s" in noise:
        lines.append(f"\n--vad on {noise['seconds']:g} s of noise: {noise['work_s']:.3f} s of work, "
                     f"{noise['encoder_windows']} encoder windows, text {noise['text']!r}")
    server = result.get("server") or {}
    if "concurrent" in server:
        one, c = server["one_client"], server["concurrent"]
        lines.append(f"\nserver: one client {one['requests']} requests in {one['wall_s']} s "
                     f"({one['requests_per_s']}/s); {server['clients']} clients x {server['requests_per_client']}: "
                     f"{c['requests_per_s']}/s ({server['throughput_ratio']} x), {c['failures']} failures, "
                     f"latency p50 {c['latency_s']['p50']} s p95 {c['latency_s']['p95']} s, "
                     f"{c['same_as_one_client']} answers as one client's")
    elif server:
        lines.append(f"\nserver: {server.get('skipped') or server.get('error')}")
    lines.append("\ntargets:")
    for what, measured, met in targets(result):
        lines.append(f"  {'MET ' if met else 'not met' if met is False else 'n/a '}  {what}: {measured}")
    return "\n".join(lines)


def systems(result: dict) -> dict[str, dict]:
    """Every row of the table: our configurations (headline first), then the peers."""
    precision = result.get("decoder_precision")
    head = f"amanuensis, {variant_name(precision)}" if precision else "amanuensis"
    return {head: result, **{f"amanuensis, {v}": f for v, f in result.get("variants", {}).items()},
            **result.get("peers", {})}
