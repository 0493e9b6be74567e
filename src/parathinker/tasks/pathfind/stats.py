"""Teacher statistics: what parallel paths + a summary buy over one path and over voting.

For each problem the teacher writes 8 independent paths. Reported (P = first P paths):
single-path success; oracle@P (some path reaches the goal); summary@P (the teacher summary,
which judges paths by their text); first-finish@P (the summary when every path is cut where
the first-finishing one ends, the engine's default termination); majority@P (vote over the
paths' boxed answers, ties to the earliest); one path given P times the tries; token lengths.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from .data import DataConfig, problems, trace_rng
from .problem import GenConfig, verify
from .teacher import majority, summarize, walk

PS = (1, 2, 4, 8)


@dataclass
class Stats:
    n: int
    tries: int
    commit: float
    single: float
    oracle: dict[int, float]
    summary: dict[int, float]
    first_finish: dict[int, float]
    majority: dict[int, float]
    more_tries: dict[int, float]
    tokens: dict[str, tuple[float, int]]  # name -> (mean, max)
    vocab_size: int

    def markdown(self) -> str:
        rows = [
            "| P | oracle@P (any path succeeds) | summary@P | summary@P, first-finish | majority@P | one path, P x tries |",
            "|---|---|---|---|---|---|",
        ]
        for p in PS:
            rows.append(
                f"| {p} | {self.oracle[p]:.3f} | {self.summary[p]:.3f} | {self.first_finish[p]:.3f} | "
                f"{self.majority[p]:.3f} | {self.more_tries[p]:.3f} |"
            )
        tok = ["| sequence | mean tokens | max tokens |", "|---|---|---|"]
        tok += [f"| {k} | {m:.1f} | {x} |" for k, (m, x) in self.tokens.items()]
        gap1 = self.oracle[8] - self.single
        gapm = self.summary[8] - self.majority[8]
        return "\n".join(
            [
                f"Teacher on {self.n} problems, {self.tries} tries per path (commit {self.commit}), 8 paths each "
                f"(vocabulary {self.vocab_size} tokens).",
                "",
                f"- single-path success: **{self.single:.3f}**",
                f"- oracle@8 - single: **{100 * gap1:+.1f} points**; summary@8 - majority@8: **{100 * gapm:+.1f} points**",
                "",
                *rows,
                "",
                *tok,
            ]
        )


def compute_stats(n: int, seed: int, gen: GenConfig, cfg: DataConfig) -> Stats:
    """Run the teacher on ``n`` fresh problems (the ``stats`` split of ``seed``)."""
    from .tokenizer import build_tokenizer

    tok = build_tokenizer()

    def ntok(text: str) -> int:
        return len(tok.encode(text, add_special_tokens=False))

    stream = problems(seed, "stats", gen)
    single = 0.0
    acc = {k: {p: 0 for p in PS} for k in ("oracle", "summary", "first_finish", "majority", "more_tries")}
    lens: dict[str, list[int]] = {
        "prompt": [],
        "path": [],
        "summary (8 paths)": [],
        "example, 6 paths": [],
        "example, 8 paths": [],
    }
    for i in range(n):
        prob = next(stream)
        rng = trace_rng(seed, "stats", i)
        traces = [walk(prob, rng, cfg.tries, cfg.commit) for _ in range(8)]
        single += sum(t.success for t in traces) / 8
        plen = ntok(prob.prompt)
        tl = [ntok(t.text) for t in traces]
        lens["prompt"].append(plen)
        lens["path"] += tl
        for p in PS:
            sub = traces[:p]
            acc["oracle"][p] += any(t.success for t in sub)
            summ, ans = summarize([t.text for t in sub])
            acc["summary"][p] += verify(prob, ans)
            acc["majority"][p] += verify(prob, majority([t.answer for t in sub]))
            # first-finish: every path is cut at the length of the shortest one
            cut = min(tl[:p])
            cut_texts = [" ".join(t.text.split()[:cut]) for t in sub]  # word-level: 1 word = 1 token
            acc["first_finish"][p] += verify(prob, summarize(cut_texts)[1])
            acc["more_tries"][p] += (
                walk(prob, rng, cfg.tries * p, cfg.commit).success if p > 1 else traces[0].success
            )
        s8, _ = summarize([t.text for t in traces])
        lens["summary (8 paths)"].append(ntok(s8))
        for p in (6, 8):
            s, _ = summarize([t.text for t in traces[:p]])
            # prompt | <think i> path </think i> ... | <summary> summary </summary>
            lens[f"example, {p} paths"].append(plen + sum(x + 2 for x in tl[:p]) + ntok(s) + 2)
    return Stats(
        n=n,
        tries=cfg.tries,
        commit=cfg.commit,
        single=single / n,
        **{k: {p: v / n for p, v in d.items()} for k, d in acc.items()},
        tokens={k: (statistics.fmean(v), max(v)) for k, v in lens.items()},
        vocab_size=len(tok),
    )


def update_doc(
    path: str, text: str, begin: str = "<!-- stats:begin -->", end: str = "<!-- stats:end -->"
) -> None:
    """Replace the block between the markers in ``path`` with ``text`` (appended when absent)."""
    import pathlib

    p = pathlib.Path(path)
    doc = p.read_text() if p.exists() else ""
    block = f"{begin}\n{text}\n{end}"
    if begin in doc and end in doc:
        head, rest = doc.split(begin, 1)
        _, tail = rest.split(end, 1)
        doc = head + block + tail
    else:
        doc = doc.rstrip("\n") + "\n\n" + block + "\n"
    p.write_text(doc)
