"""``engine load --chart PATH``: one PNG (matplotlib, the ``charts`` extra) of
an ``engine load`` record: connections over time and latency over time for
every server (from the live display's timeline), and the saturation curve
(p99 and delivered/demanded per step) of a ``rate`` record."""

from __future__ import annotations

from pathlib import Path
from typing import Any


class ChartError(RuntimeError):
    """No chart could be drawn (matplotlib missing)."""


def draw(record: dict[str, Any], path: Path) -> Path:
    """Draw ``record``'s charts into ``path`` (PNG) and return it."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display: files only
        import matplotlib.pyplot as plt
    except ImportError:
        raise ChartError("--chart needs matplotlib: pip install 'bayeux-engine[charts]'") from None
    targets = record.get("targets") or []
    curves = [t for t in targets if (t.get("results") or {}).get("steps")]
    rows = 3 if curves else 2
    fig, axes = plt.subplots(rows, 1, figsize=(9, 3.2 * rows), squeeze=False)
    conn, lat = axes[0][0], axes[1][0]
    for t in targets:
        line = t.get("timeline") or []
        xs = [p["t"] for p in line]
        conn.plot(xs, [p["connected"] for p in line], label=f"{t['label']} connected")
        if any(p["failed"] for p in line):
            conn.plot(xs, [p["failed"] for p in line], "--", label=f"{t['label']} failed")
        pts = [(p["t"], p["latency"]) for p in line if (p.get("latency") or {}).get("p99")]
        if pts:
            kind = pts[-1][1]["kind"]
            for q, style in (("p50", ".:"), ("p99", ".-")):
                lat.plot(
                    [x for x, _ in pts],
                    [v[q] for _, v in pts],
                    style,
                    label=f"{t['label']} {kind} {q}",
                )
    conn.set(title="connections over time", xlabel="s", ylabel="clients")
    lat.set(title="latency over time", xlabel="s", ylabel="ms")
    for ax in (conn, lat):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")
    if curves:
        sat = axes[2][0]
        for t in curves:
            steps = t["results"]["steps"]
            rates = [s["rate"] for s in steps]
            p99 = [s["latency_ms"]["p99"] for s in steps]
            sat.plot(rates, p99, "o-", label=f"{t['label']} p99")
        kept = sat.twinx()  # delivered / demanded, on its own axis
        for t in curves:
            steps = t["results"]["steps"]
            kept.plot(
                [s["rate"] for s in steps],
                [(s["delivered_per_s"] or 0) / s["demanded_per_s"] for s in steps],
                "s:",
                alpha=0.6,
                label=f"{t['label']} delivered/demanded",
            )
        kept.set_ylabel("delivered / demanded")
        kept.set_ylim(0, 1.2)
        kept.legend(fontsize="small", loc="lower right")
        bound = (curves[0].get("parameters") or {}).get("p99_bound_ms")
        if bound:
            sat.axhline(bound, color="grey", linestyle="--", label="p99 bound")
        sat.set(
            title="saturation curve", xlabel="publishes per second", ylabel="p99 ms", xscale="log"
        )
        sat.legend(fontsize="small", loc="upper left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
