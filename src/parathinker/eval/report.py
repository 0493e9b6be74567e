"""``parathinker report RUN_DIR``: Markdown table in the paper's shape, JSON, and PNG plots.

Files written into the run folder: ``report.md``, ``report.json``, ``accuracy_vs_paths.png``,
``accuracy_vs_tokens.png``, ``latency_vs_paths.png`` and, if the tunnel-vision experiment ran,
``tunnel_vision.png``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import DataError
from .benchmarks import BENCHMARK_NAMES
from .metrics import CellMetrics, RowAverage, cell_metrics, row_averages
from .runlog import Record, read_logs
from .runner import log_paths, sample_key
from .tunnel import tunnel_curve, tunnel_key

_METHOD_ORDER = ("sequential", "sequential-long", "majority", "reprefill", "parathinker")
_NAMES = {"aime24": "AIME 2024", "aime25": "AIME 2025", "amc23": "AMC 2023", "math500": "MATH-500"}


def _method_rank(m: str) -> tuple[int, str]:
    base = m.split("+", 1)[0]
    extra = 1 if "+" in m else 0
    return (_METHOD_ORDER.index(base) * 2 + extra if base in _METHOD_ORDER else 99, m)


def row_label(method: str, paths: int) -> str:
    """``("parathinker", 4)`` -> ``"parathinker P=4"``; single-path methods carry no P."""
    return method if method.startswith("sequential") else f"{method} P={paths}"


def _bench_order(names: set[str]) -> list[str]:
    known = [b for b in BENCHMARK_NAMES if b in names]
    return known + sorted(names - set(known))


def _fmt(x: float | None, ci: tuple[float, float] | None = None) -> str:
    if x is None:
        return "–"
    return f"{x:.1f} [{ci[0]:.1f}, {ci[1]:.1f}]" if ci else f"{x:.1f}"


def markdown(cells: Sequence[CellMetrics], rows: Sequence[RowAverage], settings: dict[str, Any] | None,
             tunnel: Sequence[dict[str, Any]] = ()) -> str:
    """The report text: pass@1 table (rows method x P, columns benchmarks + average), maj@k, cost."""
    benches = _bench_order({c.benchmark for c in cells})
    by = {(c.method, c.paths, c.benchmark): c for c in cells}
    keys = sorted({(r.method, r.paths) for r in rows}, key=lambda k: (_method_rank(k[0]), k[1]))
    avg = {(r.method, r.paths): r for r in rows}
    head = "| method | " + " | ".join(_NAMES.get(b, b) for b in benches) + " | average |"
    sep = "|---" * (len(benches) + 2) + "|"

    def table(cell_fn: Any, avg_fn: Any) -> list[str]:
        lines = [head, sep]
        for m, p in keys:
            vals = [cell_fn(by[(m, p, b)]) if (m, p, b) in by else "–" for b in benches]
            r = avg[(m, p)]
            a = avg_fn(r) if len(r.benchmarks) == len(benches) else "–"
            lines.append(f"| {row_label(m, p)} | " + " | ".join(vals) + f" | {a} |")
        return lines

    out = ["# Evaluation report", ""]
    if settings:
        keep = ("model", "temperature", "top_p", "max_path_tokens", "summary_max_tokens", "termination")
        out += ["Settings: " + ", ".join(f"{k}={settings.get(k)}" for k in keep if k in settings), ""]
    ns = {b: (max(c.problems for c in cells if c.benchmark == b), min(c.samples for c in cells if c.benchmark == b))
          for b in benches}
    out += ["Problems (samples per problem): " + ", ".join(f"{b} {n} ({s})" for b, (n, s) in ns.items()), ""]
    out += ["## pass@1 (%), bootstrap 95% interval", ""]
    out += table(lambda c: _fmt(c.pass1, c.pass1_ci), lambda r: _fmt(r.pass1, r.pass1_ci)) + [""]
    if any(c.maj is not None for c in cells):
        out += ["## maj@k (%) over the k samples of each problem (k in parentheses)", ""]
        out += table(lambda c: f"{_fmt(c.maj)} ({c.maj_k})" if c.maj is not None else "–",
                     lambda r: _fmt(r.maj)) + [""]
    out += ["## Cost (averaged over benchmarks)", "",
            "| method | tokens per path | generated tokens per sample | latency per sample (s) |",
            "|---|---|---|---|"]
    for m, p in keys:
        r = avg[(m, p)]
        out.append(f"| {row_label(m, p)} | {r.tokens_per_path:.0f} | {r.total_tokens:.0f} | {r.latency:.2f} |")
    out.append("")
    if tunnel:
        out += ["## Tunnel vision: continuing from wrong prefixes", "",
                "| prefix tokens | accuracy (%) | n |", "|---|---|---|"]
        out += [f"| {t['prefix_tokens']} | {t['accuracy']:.1f} | {t['n']} |" for t in tunnel] + [""]
    return "\n".join(out)


def _plots(out: Path, rows: Sequence[RowAverage], cells: Sequence[CellMetrics],
           tunnel: Sequence[dict[str, Any]]) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written: list[Path] = []
    if rows:
        written += _main_plots(out, rows, cells, plt)
    if tunnel:
        written.append(_tunnel_plot(out, tunnel, plt))
    return written


def _main_plots(out: Path, rows: Sequence[RowAverage], cells: Sequence[CellMetrics], plt: Any) -> list[Path]:
    written: list[Path] = []
    benches = _bench_order({c.benchmark for c in cells})
    methods = sorted({r.method for r in rows}, key=_method_rank)
    color = {m: f"C{i % 10}" for i, m in enumerate(methods)}  # one colour per method in every plot
    all_p = sorted({r.paths for r in rows})

    def series(source: Sequence[Any], m: str) -> list[Any]:
        return sorted((x for x in source if x.method == m), key=lambda x: x.paths)

    panels: list[tuple[str, Sequence[Any]]] = [(_NAMES.get(b, b), [c for c in cells if c.benchmark == b])
                                               for b in benches]
    if len(benches) > 1:
        panels.append(("average", [r for r in rows if len(r.benchmarks) == len(benches)]))
    ncol = min(3, len(panels))
    nrow = (len(panels) + ncol - 1) // ncol
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.6 * ncol, 3.8 * nrow), squeeze=False)
    flat = list(axes.flat)
    for ax in flat[len(panels):]:
        ax.axis("off")
    for ax, (title, src) in zip(flat, panels):
        for m in methods:
            pts = series(src, m)
            if not pts:
                continue
            if m.startswith("sequential"):
                ax.axhline(pts[0].pass1, ls="--", lw=1.2, color=color[m], label=m)
                continue
            xs = [x.paths for x in pts]
            ys = [x.pass1 for x in pts]
            err = [[y - x.pass1_ci[0] for x, y in zip(pts, ys)], [x.pass1_ci[1] - y for x, y in zip(pts, ys)]]
            ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, color=color[m], label=m)
        ax.set_xscale("log", base=2)
        ax.set_xticks(all_p, [str(p) for p in all_p])
        ax.set_title(title)
        ax.set_xlabel("parallel paths P")
        ax.grid(alpha=0.3)
    for row in axes:
        row[0].set_ylabel("pass@1 (%)")
    flat[len(panels) - 1].legend(fontsize=8)
    fig.tight_layout()
    written.append(out / "accuracy_vs_paths.png")
    fig.savefig(written[-1], dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4.2))
    for m in methods:
        pts = series(rows, m)
        ax.plot([x.total_tokens for x in pts], [x.pass1 for x in pts], marker="o", color=color[m], label=m)
        for x in pts:
            ax.annotate("seq" if m.startswith("sequential") else f"P={x.paths}", (x.total_tokens, x.pass1), fontsize=7, xytext=(3, 3),
                        textcoords="offset points")
    ax.set_xlabel("generated tokens per sample (mean)")
    ax.set_ylabel("pass@1 (%), average over benchmarks")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    written.append(out / "accuracy_vs_tokens.png")
    fig.savefig(written[-1], dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4.2))
    for m in methods:
        pts = series(rows, m)
        if m.startswith("sequential"):
            ax.axhline(pts[0].latency, ls="--", lw=1.2, color=color[m], label=m)
            continue
        ax.plot([x.paths for x in pts], [x.latency for x in pts], marker="o", color=color[m], label=m)
    ax.set_xscale("log", base=2)
    ax.set_xticks(all_p, [str(p) for p in all_p])
    ax.set_xlabel("parallel paths P")
    ax.set_ylabel("latency per sample (s)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    written.append(out / "latency_vs_paths.png")
    fig.savefig(written[-1], dpi=110)
    plt.close(fig)

    return written


def _tunnel_plot(out: Path, tunnel: Sequence[dict[str, Any]], plt: Any) -> Path:
    fig, ax = plt.subplots(figsize=(6, 4.2))
    ax.plot([t["prefix_tokens"] for t in tunnel], [t["accuracy"] for t in tunnel], marker="o")
    for t in tunnel:
        ax.annotate(f"n={t['n']}", (t["prefix_tokens"], t["accuracy"]), fontsize=7, xytext=(3, 3),
                    textcoords="offset points")
    ax.set_xlabel("tokens of a wrong path forced as prefix (0 = fresh sample)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title("Tunnel vision")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = out / "tunnel_vision.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def build_report(run_dir: str | Path, n_boot: int = 1000, seed: int = 0, plots: bool = True) -> dict[str, Any]:
    """Read a run folder's logs and write report.md, report.json and the plots; return the JSON."""
    out = Path(run_dir)
    if not out.is_dir():
        raise DataError(f"{out}: no such run folder")
    records: list[Record] = read_logs(log_paths(out), sample_key)
    tunnel_recs = read_logs(sorted(out.glob("tunnel*.jsonl")), tunnel_key)
    if not records and not tunnel_recs:
        raise DataError(f"{out}: no samples*.jsonl or tunnel*.jsonl with records; run `parathinker eval` first")
    settings = json.loads((out / "run.json").read_text()) if (out / "run.json").exists() else None
    cells = cell_metrics(records, n_boot, seed) if records else []
    rows = row_averages(records, cells, n_boot, seed) if records else []
    tunnel = tunnel_curve(tunnel_recs) if tunnel_recs else []
    report = {"settings": settings, "cells": [c.to_json() for c in cells], "rows": [r.to_json() for r in rows],
              "tunnel_vision": tunnel}
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "report.md").write_text(markdown(cells, rows, settings, tunnel))
    if plots:
        report["plots"] = [str(p) for p in _plots(out, rows, cells, tunnel)]
    return report
