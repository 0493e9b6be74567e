"""The bundled model's ParaThinker P=8 evaluation calls, dumped token by token, to compare two code versions.

Runs the same ``generate`` calls as ``scripts/eval_bundled.sh``'s ``pt`` cell at P=8 (checkpoint
defaults, temperature 1, top-p 1, path budget 128, summary 48, batches of 100, the eval's seeds) on
``--problems`` pathfind problems x ``--samples`` seeds, and writes per problem its answer and every
path's and the summary's token ids as JSON lines. Run it before and after a change, then
``--compare A B``: the files must be identical.

    OMP_NUM_THREADS=1 python benchmarks/bundled_identity.py --out before.jsonl
    python benchmarks/bundled_identity.py --compare before.jsonl after.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def run(args: argparse.Namespace) -> None:
    from parathinker import LLM
    from parathinker.eval.benchmarks import pathfind_default
    from parathinker.eval.runner import seed_for
    from parathinker.eval.settings import EvalSettings

    problems = pathfind_default(args.problems, seed=0)
    settings = EvalSettings(temperature=1.0, top_p=1.0, max_path_tokens=128, summary_max_tokens=48)
    llm = LLM(args.model)
    pp = settings.parallel("parathinker", 8)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w") as f:
        for s in range(args.samples):
            sp = settings.sampling(seed_for(settings.seed, s))
            for k in range(0, len(problems), args.batch):
                batch = problems[k : k + args.batch]
                outs = llm.generate([settings.prompt(p.problem) for p in batch], pp, sp)
                for p, o in zip(batch, outs):
                    rec = {"id": p.id, "sample": s, "answer": o.answer,
                           "paths": [list(x.token_ids) for x in o.paths],
                           "summary": list(o.summary.token_ids) if o.summary is not None else None}
                    f.write(json.dumps(rec) + "\n")
            print(f"sample {s}: {len(problems)} problems", file=sys.stderr)


def compare(a: Path, b: Path) -> int:
    ra, rb = a.read_text().splitlines(), b.read_text().splitlines()
    diff = sum(x != y for x, y in zip(ra, rb)) + abs(len(ra) - len(rb))
    print(f"{len(ra)} vs {len(rb)} records; {diff} differ")
    return 1 if diff else 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="checkpoint (default: the bundled model)")
    ap.add_argument("--problems", type=int, default=100)
    ap.add_argument("--samples", type=int, default=1)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--compare", nargs=2, type=Path, metavar=("A", "B"))
    args = ap.parse_args()
    if args.compare:
        sys.exit(compare(*args.compare))
    if args.out is None:
        ap.error("--out or --compare is needed")
    run(args)


if __name__ == "__main__":
    main()
