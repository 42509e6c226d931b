"""The bench's PNG: throughput against the anchors, latency, growth."""

from __future__ import annotations

from pathlib import Path
from typing import Any

SERVICE = "#1f77b4"
ANCHOR = "#9a9a9a"
TARGET = "#d62728"


def _plain(value: float, _: Any = None) -> str:
    return f"{value:,.0f}" if value >= 1 else f"{value:g}"


def draw(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display: a file only
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(12, 8.5))
    (throughput, latency), (lines, ledger) = axes
    _throughput(throughput, results)
    _latency(latency, results)
    _lines(lines, results)
    _ledger(ledger, results)
    m = results["machine"]
    fig.suptitle(
        f"reversals bench ({results['scale']['name']}), {results['finished_at']}: "
        f"{m['cores']} cores, {m['memory_gb']} GB, PostgreSQL {m['postgres']}; "
        "anchors measured in the same run",
        fontsize=10,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _throughput(ax: Any, r: dict[str, Any]) -> None:
    from matplotlib.ticker import FuncFormatter, NullFormatter

    bars = [
        ("drain", r["drain_per_s"], SERVICE),
        ("bulk drain", r["bulk_drain_per_s"], SERVICE),
        ("(b) one-tx task", r["anchor_tx_per_s"], ANCHOR),
        ("(a) no-op task", r["anchor_noop_per_s"], ANCHOR),
        ("(d) pgbench", r["anchor_pgbench_tps"], ANCHOR),
        ("intake (HTTP)", r["intake_per_s"], SERVICE),
        ("intake floor (no database)", r["intake_floor_per_s"], ANCHOR),
        ("(c) apply_async", r["anchor_publish_per_s"], ANCHOR),
    ]
    values = [value or 0.0 for _, value, _ in bars]
    ax.barh([name for name, _, _ in bars], values, color=[color for _, _, color in bars])
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(_plain))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("per second (log scale)")
    ax.set_title("Throughput: the service (blue) against its anchors (grey)")
    for y, value in enumerate(values):
        ax.text(value, y, f" {value:,.0f}", va="center", fontsize=8)
    tx = r["anchor_tx_per_s"]
    if tx:
        ax.axvline(tx, color=TARGET, ls=":", lw=1)
        ax.axvline(3 * tx, color=TARGET, ls="--", lw=1)
        ax.text(tx, -0.6, "1 x (b) ", color=TARGET, fontsize=8, ha="right")
        ax.text(3 * tx, -0.6, " 3 x (b)", color=TARGET, fontsize=8)
    publish = r["anchor_publish_per_s"]
    if publish:
        ax.axvline(publish / 2, color=TARGET, ls="-.", lw=1)
        ax.text(publish / 2, len(values) - 0.4, "0.5 x (c) ", color=TARGET, fontsize=8, ha="right")


def _latency(ax: Any, r: dict[str, Any]) -> None:
    from matplotlib.ticker import FuncFormatter

    labels = ["intake p50", "intake p99", "floor p99", "e2e p50", "e2e p99"]
    values = [
        r["intake_p50_ms"],
        r["intake_p99_ms"],
        r["intake_floor_p99_ms"],
        r["e2e_p50_ms"],
        r["e2e_p99_ms"],
    ]
    colors = [SERVICE, SERVICE, ANCHOR, SERVICE, SERVICE]
    ax.bar(labels, [v or 0.0 for v in values], color=colors)
    ax.set_ylabel("ms (log scale)")
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(FuncFormatter(_plain))
    ax.set_title(
        f"Latency: intake at concurrency {r['scale']['intake_concurrency']}, "
        f"end to end at {r['scale']['e2e_rate']:g} req/s"
    )
    ax.hlines(50, -0.4, 2.4, color=TARGET, ls="--", lw=1)
    ax.text(-0.4, 50, "target 50 ms", color=TARGET, fontsize=8, va="bottom")
    ax.hlines(250, 2.6, 4.4, color=TARGET, ls="--", lw=1)
    ax.text(2.6, 250, "target 250 ms", color=TARGET, fontsize=8, va="bottom")
    for x, value in enumerate(values):
        if value:
            ax.text(x, value, f"{value:,.1f}", ha="center", va="bottom", fontsize=8)


def _lines(ax: Any, r: dict[str, Any]) -> None:
    from matplotlib.ticker import FuncFormatter, NullFormatter

    per_line = r["line_growth"]["per_line_ms"]
    sizes = [int(k) for k in per_line]
    ax.plot(sizes, list(per_line.values()), "o-", color=SERVICE)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(_plain))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("lines in the reversed event")
    ax.set_ylabel("ms per line (log scale)")
    ax.set_title("Growth: reversal time per line")
    for size, value in zip(sizes, per_line.values(), strict=True):
        ax.text(size, value, f" {value:.2f}", fontsize=8, va="bottom")
    ten = per_line.get("10")
    if ten:
        ax.axhline(1.5 * ten, color=TARGET, ls="--", lw=1)
        ax.text(sizes[0], 1.5 * ten, " 1.5 x at 10 lines", color=TARGET, fontsize=8, va="bottom")


def _ledger(ax: Any, r: dict[str, Any]) -> None:
    from matplotlib.ticker import FuncFormatter

    by_lines = r["ledger_growth"]["by_lines"]
    counts = [int(k) for k in by_lines]
    medians = [v["median_ms"] for v in by_lines.values()]
    ax.plot(counts, medians, "o-", color=SERVICE, label="median")
    ax.plot(counts, [v["p90_ms"] for v in by_lines.values()], "o:", color=SERVICE, alpha=0.6)
    ax.lines[-1].set_label("p90")
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(_plain))
    p90s = [v["p90_ms"] for v in by_lines.values()]
    ax.set_ylim(0, 1.15 * max([*p90s, 1.5 * medians[0]] if medians else [1.0]))
    ax.set_xlabel("lines in the ledger (log scale)")
    ax.set_ylabel("ms")
    ax.set_title("Growth: one reversal's latency")
    if medians:
        ax.axhline(1.5 * medians[0], color=TARGET, ls="--", lw=1, label="1.5 x smallest")
    ax.legend(fontsize=8)
