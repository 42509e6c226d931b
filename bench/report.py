"""Targets (issue 5, SPEC §9), the PASS/MISS table, and the JSON file."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Target:
    key: str
    label: str
    op: str  # ">=" or "<="
    threshold: float
    unit: str = ""

    def met(self, value: float | None) -> bool | None:
        if value is None:
            return None
        return value >= self.threshold if self.op == ">=" else value <= self.threshold

    @property
    def text(self) -> str:
        sign = "≥" if self.op == ">=" else "≤"
        return f"{sign} {self.threshold:g}{self.unit}"


TARGETS = (
    Target("drain_vs_anchor_tx", "drain ÷ anchor (b)", ">=", 1.0, "x"),
    Target("bulk_vs_anchor_tx", "bulk drain ÷ anchor (b)", ">=", 3.0, "x"),
    Target("intake_vs_anchor_publish", "intake ÷ anchor (c)", ">=", 0.5, "x"),
    Target("intake_p99_ms", "intake p99", "<=", 50, " ms"),
    Target("e2e_p99_ms", "end to end p99", "<=", 250, " ms"),
    Target("line_growth_ratio", "time per line, largest event ÷ 10 lines", "<=", 1.5, "x"),
    Target("ledger_growth_ratio", "reversal latency, large ÷ small ledger", "<=", 1.5, "x"),
    Target("worker_rss_mb", "worker process memory", "<=", 150, " MB"),
    Target("worker_rss_growth_mb", "worker memory growth, N → 2N reversals", "<=", 10, " MB"),
)


# The JSON's headline keys (issue 5): each must hold a figure after a run.
REQUIRED = (
    "drain_per_s",
    "bulk_drain_per_s",
    "intake_per_s",
    "intake_p99_ms",
    "e2e_p99_ms",
    "anchor_noop_per_s",
    "anchor_tx_per_s",
    "anchor_publish_per_s",
    "drain_vs_anchor_tx",
    "bulk_vs_anchor_tx",
    "intake_vs_anchor_publish",
    "intake_floor_per_s",
    "intake_floor_p99_ms",
    "line_growth_ratio",
    "ledger_growth_ratio",
    "worker_rss_mb",
    "worker_rss_growth_mb",
)


def problems(results: dict[str, Any]) -> list[str]:
    """What makes a run unusable: a missing figure, or a request not carried out.

    A MISS is a result, not a problem; this is what `--quick` in CI checks.
    """
    found = [f"no figure for {key}" for key in REQUIRED if results.get(key) is None]
    if "anchor_pgbench_tps" not in results:
        found.append("no anchor_pgbench_tps key (null when pgbench is not installed)")
    for phase in ("drain", "bulk"):
        n, outcomes = results[phase]["n"], results[phase]["outcomes"]
        if outcomes != {"REVERSED": n}:
            found.append(f"{phase}: {n} requested, outcomes {outcomes}")
    e2e = results["e2e"]
    if e2e["reversed"] != e2e["requests"]:
        found.append(f"end to end: {e2e['requests']} sent, {e2e['reversed']} reversed")
    for phase in ("intake", "intake_floor"):
        statuses = results[phase]["statuses"]
        bad = {k: v for k, v in statuses.items() if k not in ("202", "429")}
        if bad:
            found.append(f"{phase.replace('_', ' ')}: unexpected statuses {bad}")
        if results[phase].get("ran_out_of_events"):
            # Its rate is still right, but over less than the phase's time.
            found.append(
                f"{phase.replace('_', ' ')}: ran out of events after "
                f"{results[phase]['seconds']:.1f} s (the scale's intake_pool is too small)"
            )
    return found


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return round(a / b, 3)


def judge(results: dict[str, Any]) -> dict[str, Any]:
    verdicts = {}
    for target in TARGETS:
        value = results.get(target.key)
        verdicts[target.key] = {
            "label": target.label,
            "target": target.text,
            "value": value,
            "pass": target.met(value),
        }
    return verdicts


def _fmt(value: Any, unit: str = "", digits: int = 1) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:,.{digits}f}{unit}"
    return f"{value:,}{unit}"


def _anchor(results: dict[str, Any], key: str) -> str:
    """An anchor's mean (what the ratios divide by), then its rounds before and after."""
    rounds = results["anchors"]
    return (
        f"{_fmt(rounds[key], ' /s')} (before {_fmt(rounds['before'][key], '', 0)},"
        f" after {_fmt(rounds['after'][key], '', 0)})"
    )


def rows(results: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(measure, value, target, result) for the table and the README."""
    r = results
    scale = r["scale"]
    figures = [
        (
            f"drain: {scale['drain']:,} queued reversals, {r['worker_concurrency']} processes",
            _fmt(r["drain_per_s"], " /s"),
        ),
        (
            f"bulk drain: {scale['bulk']:,} via POST …/events/reverse",
            _fmt(r["bulk_drain_per_s"], " /s"),
        ),
        (
            f"intake: single POSTs, concurrency {scale['intake_concurrency']}",
            _fmt(r["intake_per_s"], " /s"),
        ),
        (
            "intake p50 / p99",
            f"{_fmt(r['intake_p50_ms'], ' ms')} / {_fmt(r['intake_p99_ms'], ' ms')}",
        ),
        (
            "intake floor: the same api and load, a route that only publishes",
            f"{_fmt(r['intake_floor_per_s'], ' /s')}, p99 {_fmt(r['intake_floor_p99_ms'], ' ms')}"
            f" ({_fmt(r['intake_floor_vs_anchor_publish'], 'x', 2)} of (c);"
            f" intake is {_fmt(r['intake_vs_floor'], 'x', 2)} of it)",
        ),
        (
            f"end to end at {scale['e2e_rate']:g} req/s: p50 / p99",
            f"{_fmt(r['e2e_p50_ms'], ' ms')} / {_fmt(r['e2e_p99_ms'], ' ms')}",
        ),
        ("anchor (a): Celery no-op task", _anchor(r, "noop_per_s")),
        ("anchor (b): Celery task, one TPC-B-like transaction", _anchor(r, "tx_per_s")),
        ("anchor (c): apply_async from one process", _anchor(r, "publish_per_s")),
        ("anchor (d): pgbench TPC-B-like", _fmt(r["anchor_pgbench_tps"], " tps")),
        (
            "time per line, by event size",
            ", ".join(f"{k}: {v:.2f} ms" for k, v in r["line_growth"]["per_line_ms"].items()),
        ),
        (
            "one reversal, by ledger size",
            ", ".join(
                f"{int(k):,} lines: {v['median_ms']:.1f} ms"
                for k, v in r["ledger_growth"]["by_lines"].items()
            ),
        ),
        (
            f"worker memory after {scale['drain']:,} / {scale['drain'] + scale['bulk']:,}",
            f"{_fmt(r['memory']['after_n_mb'], ' MB')} / {_fmt(r['worker_rss_mb'], ' MB')}",
        ),
    ]
    table = [(name, value, "", "") for name, value in figures]
    for key, verdict in r["targets"].items():
        value = verdict["value"]
        unit = (
            "x"
            if key.endswith(("_ratio",)) or "_vs_" in key
            else (" MB" if key.endswith("_mb") else " ms")
        )
        shown = _fmt(value, unit, 2 if unit == "x" else 1)
        result = {True: "PASS", False: "MISS", None: "n/a"}[verdict["pass"]]
        table.append((verdict["label"], shown, verdict["target"], result))
    return table


def print_table(results: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"reversals bench ({results['scale']['name']})", title_justify="left")
    for column in ("measure", "value", "target", "result"):
        table.add_column(column, justify="right" if column != "measure" else "left")
    figures_done = False
    for name, value, target, result in rows(results):
        if target and not figures_done:
            table.add_section()
            figures_done = True
        style = {"PASS": "green", "MISS": "red"}.get(result, "")
        table.add_row(name, value, target, f"[{style}]{result}[/]" if style else result)
    console = Console()
    console.print(table)
    m = results["machine"]
    console.print(
        f"{m['cores']} cores, {m['memory_gb']} GB, {m['cpu']}; Python {m['python']}; "
        f"PostgreSQL {m['postgres']}; load average {m['loadavg_start']} → {m['loadavg_end']}"
    )


def markdown(results: dict[str, Any]) -> str:
    lines = ["| measure | value | target | result |", "|---|---:|---:|:---:|"]
    for name, value, target, result in rows(results):
        lines.append(f"| {name} | {value} | {target} | {result} |")
    return "\n".join(lines)


def write_json(results: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, sort_keys=False, default=str) + "\n")
