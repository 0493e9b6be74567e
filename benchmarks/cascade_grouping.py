"""CPU decode attention: rows that share a prompt read it as a group (cascade) or each on its own.

`PagedCascade` groups a request's rows over their shared prompt (the prompt's keys read once, a
second partial softmax, a log-sum-exp merge) only when that saves enough key reads ((rows - 1) x
prompt length: `CASCADE_MIN_GROUP_KEYS` per group, `CASCADE_MIN_SAVED_KEYS` in the step);
otherwise each row reads prompt + own keys in one SDPA call. This measures both ways side by side in one
process (alternating, median of repeats) for one step's attention of `--layers` layers (building the
step's metadata included, as the engine does once per step), and says which one the rule picks. The
"(einsum)" column is the grouped way with the partials as einsums instead of SDPA's CPU flash kernel
(what runs on a torch without that op).

    python benchmarks/cascade_grouping.py --out runs/cascade_grouping.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from parathinker.engine.attention import cascade as attention
from parathinker.engine.attention.cascade import PagedCascade
from parathinker.engine.block_manager import PagePool
from parathinker.engine.plan import Chunk

SHAPES = {"bundled": (8, 2, 32), "smollm2-135m": (9, 3, 64)}  # heads, kv heads, head dim


def step(shape: tuple[int, int, int], requests: int, P: int, L: int, own: int, layers: int):  # noqa: ANN201
    """A callable that builds one decode step's attention and runs ``layers`` layers of it."""
    H, KVH, D = shape
    pool = PagePool(requests * (P + 1) * (-(-max(L, own + 1) // 16) + 1) + 2, 16)
    pool.admit(0, pool.usable_pages)
    cache = torch.randn(layers, 2, pool.num_pages * 16, KVH, D)
    chunks = []
    for _ in range(requests):
        prompt = pool.new_run()
        pool.extend(prompt, L, 0)
        for _ in range(P):
            o = pool.new_run()
            slots = pool.extend(o, own, 0)
            chunks.append(Chunk([5], [L + own], [0], slots[-1:], [prompt, o], shared_prefix=True))
    q = torch.randn(len(chunks), H, D)

    def run() -> None:
        att = PagedCascade.for_chunks(cache, chunks, torch.device("cpu"))
        for layer in range(layers):
            att.attend(layer, q)

    grouped = PagedCascade.for_chunks(cache, chunks, torch.device("cpu")).groups is not None  # what the rule picks
    return run, grouped


def timed(fn, n: int) -> float:  # noqa: ANN001
    t = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t) / n * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default="bundled,smollm2-135m")
    ap.add_argument("--requests", default="1,16")
    ap.add_argument("--paths", default="2,8,16")
    ap.add_argument("--prompts", default="16,64,256,1024")
    ap.add_argument("--own", type=int, default=32, help="each row's own tokens so far")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    limits = attention.CASCADE_MIN_GROUP_KEYS, attention.CASCADE_MIN_SAVED_KEYS
    rows = []
    print(f"CASCADE_MIN_GROUP_KEYS {limits[0]}, CASCADE_MIN_SAVED_KEYS {limits[1]}; ms per step "
          f"({args.layers} layers of attention), median of {args.repeats}")
    flash = attention._FLASH_CPU
    print(f"{'shape':>13} {'reqs':>4} {'P':>3} {'prompt':>6} {'grouped':>8} {'(einsum)':>8} {'per row':>8} "
          f"{'per row/grouped':>15} {'rule':>8}")
    for name in args.shapes.split(","):
        for R in (int(x) for x in args.requests.split(",")):
            for P in (int(x) for x in args.paths.split(",")):
                for L in (int(x) for x in args.prompts.split(",")):
                    fn, picks_group = step(SHAPES[name], R, P, L, args.own, args.layers)
                    g, e, f = [], [], []
                    for _ in range(args.repeats):  # alternating: the machine's noise hits all alike
                        attention.CASCADE_MIN_GROUP_KEYS = attention.CASCADE_MIN_SAVED_KEYS = 0
                        fn()
                        g.append(timed(fn, 5))
                        attention._FLASH_CPU = None  # the einsum partials (torch versions without the flash op)
                        fn()
                        e.append(timed(fn, 5))
                        attention._FLASH_CPU = flash
                        attention.CASCADE_MIN_GROUP_KEYS = attention.CASCADE_MIN_SAVED_KEYS = 1 << 62
                        fn()
                        f.append(timed(fn, 5))
                    attention.CASCADE_MIN_GROUP_KEYS, attention.CASCADE_MIN_SAVED_KEYS = limits
                    gm, em, fm = statistics.median(g), statistics.median(e), statistics.median(f)
                    rule = "grouped" if picks_group else "per row"
                    best = "grouped" if gm <= fm else "per row"
                    rows.append(dict(shape=name, requests=R, P=P, prompt=L, grouped_ms=gm, grouped_einsum_ms=em,
                                     per_row_ms=fm, rule=rule, faster=best))
                    mark = "" if rule == best else "  (rule picks the slower)"
                    print(f"{name:>13} {R:>4} {P:>3} {L:>6} {gm:8.2f} {em:8.2f} {fm:8.2f} {fm / gm:15.2f} {rule:>8}{mark}",
                          flush=True)
    wrong = [r for r in rows if r["rule"] != r["faster"]]
    lost = [max(r["grouped_ms"], r["per_row_ms"]) / min(r["grouped_ms"], r["per_row_ms"]) for r in wrong]
    print(f"the rule picks the faster way in {len(rows) - len(wrong)} of {len(rows)} cases"
          + (f"; where not, the slower one costs at most {max(lost):.2f}x" if lost else ""))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)  # e.g. runs/, absent in a fresh clone
        Path(args.out).write_text(json.dumps(dict(min_group_keys=limits[0], min_saved_keys=limits[1], rows=rows), indent=2))


if __name__ == "__main__":
    main()
