"""The bench's PNG: per-node encoder time on each backend, and every system's figures side by side."""
from __future__ import annotations

from pathlib import Path


def draw(result: dict, path: Path) -> str | None:
    """Write the chart to `path`; returns None, or why no chart was drawn (matplotlib missing)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install 'amanuensis[bench]')"
    from encoder.fileio import atomic_write

    profile = result["profile"]
    systems = {"ours": result, **result.get("peers", {})}
    fig, (nodes, enc) = plt.subplots(1, 2, figsize=(14, max(6, 0.22 * len(profile))),
                                     gridspec_kw={"width_ratios": [3, 2]})
    names = [row["node"] for row in profile][::-1]
    times = [row["ms"] for row in profile][::-1]
    colors = {k: f"C{i}" for i, k in enumerate(sorted({row["kernel"] for row in profile}))}
    nodes.barh(names, times, color=[colors[row["kernel"]] for row in profile][::-1])
    nodes.set_xlabel(f"ms per 30 s window ({profile[0]['backend']} backend)")
    nodes.tick_params(axis="y", labelsize=7)
    nodes.legend(handles=[plt.Rectangle((0, 0), 1, 1, color=c) for c in colors.values()], labels=list(colors),
                 loc="lower right", fontsize=8)
    labels = [name for name, r in systems.items() if r.get("encoder_ms_per_window")]
    enc.barh(labels[::-1], [_ms(systems[n]) for n in labels][::-1], color="C7")
    enc.set_xlabel("encoder ms per 30 s window (lower is better)")
    fig.suptitle(f"{result['model']} on {result['machine']['cpu']} ({result['machine']['threads']} threads), "
                 f"{result['date']}; sgemm peak {result['gemm_peak_gflops']} GFLOP/s", fontsize=10)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)
    return None


def _ms(r: dict) -> float:
    value = r["encoder_ms_per_window"]
    return value.get("cpu", min(value.values())) if isinstance(value, dict) else value
