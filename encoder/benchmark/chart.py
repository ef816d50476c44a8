"""The bench's PNG: per-node encoder time, every system's encoder time, and end-to-end speed."""
from __future__ import annotations

from pathlib import Path

from encoder.benchmark.report import systems
from weights_tools.fileio import atomic_write


def draw(result: dict, path: Path) -> str | None:
    """Write the chart to `path`; returns None, or why no chart was drawn (matplotlib missing)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install 'amanuensis[bench]')"

    profile = result["profile"]
    encoders = {"ours": result, **result.get("peers", {})}
    fig, (nodes, enc, e2e) = plt.subplots(1, 3, figsize=(18, max(6, 0.22 * len(profile))),
                                          gridspec_kw={"width_ratios": [3, 2, 2]})
    names = [row["node"] for row in profile][::-1]
    times = [row["ms"] for row in profile][::-1]
    colors = {k: f"C{i}" for i, k in enumerate(sorted({row["kernel"] for row in profile}))}
    nodes.barh(names, times, color=[colors[row["kernel"]] for row in profile][::-1])
    nodes.set_xlabel(f"ms per 30 s window ({profile[0]['backend']} backend)")
    nodes.tick_params(axis="y", labelsize=7)
    nodes.legend(handles=[plt.Rectangle((0, 0), 1, 1, color=c) for c in colors.values()], labels=list(colors),
                 loc="lower right", fontsize=8)
    labels = [name for name, r in encoders.items() if r.get("encoder_ms_per_window")]
    enc.barh(labels[::-1], [_ms(encoders[n]) for n in labels][::-1], color="C7")
    enc.set_xlabel("encoder ms per 30 s window (lower is better)")
    _realtime(e2e, result)
    fig.suptitle(f"{result['model']} on {result['machine']['cpu']} ({result['machine']['threads']} threads), "
                 f"{result['date']}; sgemm peak {result['gemm_peak_gflops']} GFLOP/s", fontsize=10)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)
    return None


def _realtime(ax, result: dict) -> None:
    """× realtime of every configuration and peer that ran end to end, on the 5 min input (else
    the longest one)."""
    inputs = [n for n in result.get("inputs", []) if result.get(f"rtf_{n}")]
    if not inputs:
        ax.set_axis_off()
        return
    name = "5min" if "5min" in inputs else inputs[-1]
    rows = {label: r[f"rtf_{name}"] for label, r in systems(result).items() if r.get(f"rtf_{name}")}
    ax.barh(list(rows)[::-1], list(rows.values())[::-1], color="C2")
    ax.set_xlabel(f"× realtime end to end, {name} (higher is better)")


def _ms(r: dict) -> float:
    value = r["encoder_ms_per_window"]
    return value.get("cpu", min(value.values())) if isinstance(value, dict) else value
