"""Per-token-kind loss of a pathfind ParaThinker checkpoint on training examples (what it learned).

    python scripts/token_loss.py MODEL [--data runs/bundled_work/data/train.jsonl] [--n 25]

Teacher-forces the first N examples through the engine (``LLM.score``) and prints a Markdown
table of the mean negative log-likelihood per kind of predicted token. For reference: a uniform
guess over the 90 node names costs ln 90 = 4.50 nats; over the ~30 nodes of a prompt ~3.4.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict


def kind(inp: list[str], k: int, target: str, in_summary: bool) -> str:
    if not target.isdigit():
        return "structure (T k, dead, found, guess, braces, control, summary prefix)"
    prev = inp[k]
    if in_summary:
        return "summary: route copied from a path"
    if prev.startswith("T") and prev[1:].isdigit():
        return "first node of a try (= the start, copied from the prompt)"
    if "\\boxed{" in inp[max(0, k - 8) : k + 1]:
        return "path's box: its own try copied"
    if k >= 2 and inp[k - 1].startswith("T") and inp[k - 1][1:].isdigit():
        return "second node of a try (a child of the start; repeats try 1 with p = 0.8)"
    return "walk step: a child of the current node (edge look-up)"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--data", default="runs/bundled_work/data/train.jsonl")
    ap.add_argument("--n", type=int, default=25)
    a = ap.parse_args(argv)
    from parathinker import LLM

    llm = LLM(a.model)
    tok = llm.tokenizer
    agg: dict[str, list[float]] = defaultdict(list)
    with open(a.data) as f:
        recs = [json.loads(next(f)) for _ in range(a.n)]
    for r in recs:
        out = llm.score(r["prompt"], r["paths"], r["summary"])
        inp = tok.convert_ids_to_tokens(out.packed.input_ids)
        s0 = out.packed.summary_span[0] if out.packed.summary_span else len(inp)
        for k, (lab, lp) in enumerate(zip(out.packed.labels, out.token_logprobs)):
            if lab < 0 or lp != lp:
                continue
            agg[kind(inp, k, tok.convert_ids_to_tokens(lab), k >= s0)].append(-lp)
    print("| predicted token | count | loss (nats) |")
    print("|---|---|---|")
    for name, v in sorted(agg.items(), key=lambda kv: -sum(kv[1]) / len(kv[1])):
        print(f"| {name} | {len(v)} | {sum(v) / len(v):.2f} |")


if __name__ == "__main__":
    main()
