"""Tables and the accuracy-vs-P plot of the bundled model's evaluation (scripts/eval_bundled.sh).

    python scripts/bundled_report.py runs/bundled_eval [--doc README.md --doc docs/bundled-model.md]

Reads the run folders written by ``parathinker eval`` under RUN_ROOT (pt, pt_long, pt_last, pt_half,
pt_reprefill, pt_no_te, pt_flat, and seq/seq_2b/seq_4b/tunnel when a sequential model was evaluated; missing
ones are skipped), computes every number from the sample logs
with the harness's own metrics (pass@1 with bootstrap 95% intervals over problems), and writes
RUN_ROOT/bundled_report.md and RUN_ROOT/accuracy_vs_paths.png. With ``--doc FILE`` the Markdown is
also put between ``<!-- bundled-table:begin -->`` and ``<!-- bundled-table:end -->`` in FILE
(repeatable: README.md and docs/bundled-model.md) and the plot copied to ``docs/img/``. Nothing is
typed by hand.
"""

from __future__ import annotations

import argparse
import os
import shutil
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from parathinker.eval.grading import majority_vote
from parathinker.eval.metrics import CellMetrics, bootstrap_ci, cell_metrics
from parathinker.eval.runlog import read_logs
from parathinker.eval.runner import log_paths, sample_key
from parathinker.eval.tunnel import tunnel_curve, tunnel_key

BEGIN, END = "<!-- bundled-table:begin -->", "<!-- bundled-table:end -->"
PS = (1, 2, 4, 8)


def load(root: Path, name: str) -> list[dict]:
    d = root / name
    return read_logs(log_paths(d), sample_key) if d.is_dir() else []


def cells_of(records: list[dict]) -> dict[tuple[str, int], CellMetrics]:
    return {(c.method, c.paths): c for c in cell_metrics(records)}


def by_cell(records: list[dict]) -> dict[tuple[str, int], list[dict]]:
    out: dict[tuple[str, int], list[dict]] = defaultdict(list)
    for r in records:
        out[(r["method"], int(r["paths"]))].append(r)
    return out


def path_vote_records(records: list[dict]) -> list[dict]:
    """Majority@P over the paths' own answers of ParaThinker runs (no summary): derived records.

    Graded by the route string (whitespace-normalised) against the gold: a tree has exactly one
    route from the start to the goal, so this equals the task's verifier.
    """
    out = []
    for r in records:
        v = majority_vote(list(r["path_answers"]))
        ans = None if v.answer is None else " ".join(v.answer.split())
        out.append({**r, "method": "paths-majority", "answer": ans, "correct": ans == " ".join(r["gold"].split())})
    return out


def fmt(c: CellMetrics | None) -> str:
    return "–" if c is None else f"{c.pass1:.1f} [{c.pass1_ci[0]:.1f}, {c.pass1_ci[1]:.1f}]"


def paired_diff(a: list[dict], b: list[dict], n_boot: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """Mean difference (points) of per-problem accuracies a - b over the problems both have, 95% CI."""
    def per_problem(recs: list[dict]) -> dict[str, float]:
        g: dict[str, list[bool]] = defaultdict(list)
        for r in recs:
            g[str(r["id"])].append(bool(r["correct"]))
        return {k: float(np.mean(v)) for k, v in g.items()}

    pa, pb = per_problem(a), per_problem(b)
    ids = sorted(set(pa) & set(pb))
    d = np.array([pa[i] - pb[i] for i in ids])
    lo, hi = bootstrap_ci([d], n_boot, seed)
    return 100 * float(d.mean()), 100 * lo, 100 * hi


def per_sample_seconds(recs: list[dict]) -> float:
    """Wall-clock seconds of generate calls per sample (a batch's time shared by its problems)."""
    return float(np.mean([float(r["wall_time"]) / max(1, int(r.get("batch", 1))) for r in recs]))


def mean_stat(recs: list[dict], key: str) -> float | None:
    vals = [r.get("stats", {}).get(key) for r in recs]
    vals = [float(v) for v in vals if isinstance(v, (int, float))]
    return float(np.mean(vals)) if vals else None


def cell(recs: list[dict], method: str, p: int) -> CellMetrics | None:
    return cells_of(recs).get((method, p))


def build(root: Path) -> tuple[str, dict[str, Any]]:
    pt, seq = load(root, "pt"), load(root, "seq")
    last, half, long_ = load(root, "pt_last"), load(root, "pt_half"), load(root, "pt_long")
    votes = path_vote_records([r for r in pt if int(r["paths"]) == 1] + last)
    pt_r, seq_r, vote_r = by_cell(pt), by_cell(seq), by_cell(votes)
    lines: list[str] = []
    all_cells = [c for recs in (pt, seq, last) if recs for c in cell_metrics(recs)]
    lines.append(f"Held-out pathfind problems: {', '.join(map(str, sorted({c.problems for c in all_cells})))}; "
                 f"samples (seeds) per problem: {', '.join(map(str, sorted({c.samples for c in all_cells})))}. "
                 "pass@1 in percent [95% bootstrap interval over problems]. B = 128 tokens per path.")
    lines.append("")
    lines.append("| method | " + " | ".join(f"P={p}" for p in PS) + " |")
    lines.append("|---" * (len(PS) + 1) + "|")
    series: dict[str, list[CellMetrics | None]] = {}
    long_seq = {1: cell(seq, "sequential", 1), 2: cell(load(root, "seq_2b"), "sequential-long", 1),
                4: cell(load(root, "seq_4b"), "sequential-long", 1), 8: cell(seq, "sequential-long", 1)}
    rows = [
        ("sequential model, budget B", [cell(seq, "sequential", 1)] * len(PS)),
        ("sequential model, budget P x B", [long_seq[p] for p in PS]),
        ("sequential model, majority@P", [cell(seq, "majority", p) for p in PS]),
        ("ParaThinker model, one path, budget B (ParaThinker@1)", [cell(pt, "parathinker", 1)] * len(PS)),
        ("ParaThinker model, one path, budget 8B", [cell(long_, "parathinker", 1)] * len(PS)),
        ("ParaThinker model, majority@P over its own P paths", [cell(votes, "paths-majority", p) for p in PS]),
        ("**ParaThinker@P**", [cell(pt, "parathinker", p) for p in PS]),
    ]
    for name, cs in rows:
        if any(c is not None for c in cs):
            series[name] = cs
            lines.append(f"| {name} | " + " | ".join(fmt(c) for c in cs) + " |")
    lines.append("")
    summary: dict[str, Any] = {}
    mine = pt_r.get(("parathinker", 8))
    for label, other in (("the sequential model (budget B)", seq_r.get(("sequential", 1))),
                         ("the sequential model's majority@8", seq_r.get(("majority", 8))),
                         ("the sequential model with budget 8B", seq_r.get(("sequential-long", 1))),
                         ("its own one path (budget B)", pt_r.get(("parathinker", 1))),
                         ("majority@8 over its own paths", vote_r.get(("paths-majority", 8)))):
        if mine and other:
            d, lo, hi = paired_diff(mine, other)
            summary[label] = d
            lines.append(f"- ParaThinker@8 − {label}: **{d:+.1f} points** [{lo:+.1f}, {hi:+.1f}] (paired over problems)")
    lines.append("")

    # ablations: accuracy and time, P = 8
    abl_rows = []
    for name, folder, method in (("ParaThinker (summary reuses the paths' KV)", "pt", "parathinker"),
                                 ("re-prefill summary", "pt_reprefill", "reprefill"),
                                 ("thought embeddings off (at inference)", "pt_no_te", "parathinker"),
                                 ("flattened positions (at inference)", "pt_flat", "parathinker")):
        recs = by_cell(load(root, folder)).get((method, 8))
        if recs:
            c = cells_of(recs)[(method, 8)]
            pre = (mean_stat(recs, "prefill_tokens") or 0) + (mean_stat(recs, "reprefill_tokens") or 0)
            abl_rows.append(f"| {name} | {fmt(c)} | {per_sample_seconds(recs) * 1000:.1f} | "
                            f"{'–' if pre is None else f'{pre:.0f}'} |")
    if abl_rows:
        lines += ["Ablations, P = 8, same checkpoint (ms / sample: wall time of the batched generate calls divided "
                  "by the problems in the batch, 1 CPU thread, measured while another eval job shared the CPU, so "
                  "noisy; the prefilled tokens are the deterministic part of the cost):", "",
                  "| variant | accuracy | ms / sample | prefill + re-prefill tokens / sample |", "|---|---|---|---|", *abl_rows, ""]

    # termination
    term_rows = []
    for name, recs_all in (("first", pt), ("half", half), ("last", last)):
        for p in (4, 8):
            c = cell(recs_all, "parathinker", p)
            if c is not None:
                term_rows.append(f"| {name} | {p} | {fmt(c)} | {c.tokens_per_path:.1f} | {c.total_tokens:.1f} |")
    if term_rows:
        lines += ["Termination (when thinking stops; paths still running are closed):", "",
                  "| termination | P | accuracy | tokens / path | tokens / sample (paths + summary) |",
                  "|---|---|---|---|---|", *term_rows, ""]

    # tunnel vision
    tdir = root / "tunnel"
    trecs = read_logs(sorted(tdir.glob("tunnel*.jsonl")), tunnel_key) if tdir.is_dir() else []
    curve = tunnel_curve(trecs) if trecs else []
    if curve:
        lines += ["Tunnel vision (sequential model; it continues its own wrong path from its first L tokens; "
                  "L = 0: a fresh sample; n: its wrong samples, over problems x seeds):", "",
                  "| prefix L (tokens) | " + " | ".join(str(t["prefix_tokens"]) for t in curve) + " |",
                  "|---" * (len(curve) + 1) + "|",
                  "| accuracy | " + " | ".join(f"{t['accuracy']:.1f}" for t in curve) + " |",
                  "| n | " + " | ".join(str(t["n"]) for t in curve) + " |", ""]
    return "\n".join(lines), {"series": series, "summary": summary, "tunnel": curve}


def plot(out: Path, series: dict[str, list[CellMetrics | None]], tunnel: list[dict[str, Any]]) -> Path:
    """Accuracy vs P per method (left) and, when measured, the tunnel-vision curve (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if tunnel:
        fig, (ax, tv) = plt.subplots(1, 2, figsize=(11.5, 4.6), gridspec_kw={"width_ratios": [1.5, 1]})
        tv.plot([t["prefix_tokens"] for t in tunnel], [t["accuracy"] for t in tunnel], "o-", color="C3")
        tv.set(xlabel="forced prefix of its own wrong path (tokens)", ylabel="accuracy (%)",
               title="tunnel vision (sequential model)", ylim=(0, max(10.0, 1.2 * max(t["accuracy"] for t in tunnel))))
        tv.grid(alpha=0.3)
    else:
        fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for name, cs in series.items():
        pts = [(p, c) for p, c in zip(PS, cs) if c is not None]
        if not pts:
            continue
        xs = [p for p, _ in pts]
        ys = [c.pass1 for _, c in pts]
        err = np.array([[c.pass1 - c.pass1_ci[0], c.pass1_ci[1] - c.pass1] for _, c in pts]).T
        style = "--" if name.startswith("sequential") else "-"
        ax.errorbar(xs, ys, yerr=err, marker="o", linestyle=style, capsize=3, label=name.replace("*", ""))
    tops = [c.pass1_ci[1] for cs in series.values() for c in cs if c is not None]
    ax.set_ylim(0, max(10.0, 1.1 * max(tops, default=0.0)))
    ax.set_xscale("log", base=2)
    ax.set_xticks(list(PS), [str(p) for p in PS])
    ax.set_xlabel("P (parallel paths / samples)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title("pathfind, held-out problems (95% CI)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = out / "accuracy_vs_paths.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("root", help="the OUT folder of scripts/eval_bundled.sh")
    ap.add_argument("--doc", action="append", default=[],
                    help="Markdown file with the bundled-table markers to update (repeatable)")
    ap.add_argument("--img", default="docs/img/bundled_accuracy_vs_paths.png", help="where --doc's plot is copied")
    a = ap.parse_args(argv)
    root = Path(a.root)
    text, data = build(root)
    png = plot(root, data["series"], data["tunnel"])
    (root / "bundled_report.md").write_text(text + "\n")
    if a.doc:
        img = Path(a.img)
        img.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(png, img)
    for name in a.doc:
        doc = Path(name)
        body = doc.read_text()
        if BEGIN not in body or END not in body:
            raise SystemExit(f"{doc}: no {BEGIN} ... {END} markers")
        head, rest = body.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
        link = os.path.relpath(img, doc.parent)
        block = f"{BEGIN}\n{text}\n![accuracy vs P and tunnel vision]({link})\n{END}"
        doc.write_text(head + block + tail)
    print(text)
    print(f"plot: {png}")


if __name__ == "__main__":
    main()
