"""CPU cascade attention: paths' own K/V read in place (side-by-side page blocks) vs gathered (pages interleaved).

The engine on the CPU gives a request's paths one block of pages each, side by side
(``PagePool.take_block``), so ``PagedCascade`` reads every path's own keys through one strided view.
Pages handed out one by one as the paths grow in lockstep interleave them instead, and each layer of
each step then gathers them (``index_select``). This times one layer's ``attend`` for 8 paths sharing a
99-token prompt, each with ``W`` own tokens, both layouts on the same pool in one process, with the
caches flushed before every call (in a real step the layer's weights have just streamed through them).

A second table times the summary's row (one row over the prompt, every path's block and its own
tokens), read run by run in place (``RunsInPlace``) vs gathered, by path length: where
``IN_PLACE_MIN_KEYS`` switches.

    python benchmarks/cascade_inplace.py --own 128,1024,4096 --out runs/cascade_inplace.json
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
from parathinker.engine.block_manager import Run
from parathinker.engine.plan import Chunk

PAGE, KVH, HEADS, DIM, PROMPT = 16, 3, 9, 64, 99  # SmolLM2-135M's attention shape


def layer_step(att: PagedCascade, q: torch.Tensor, flush: torch.Tensor, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        flush.mul_(1.0)  # evict the pool from the caches
        t = time.perf_counter()
        att.attend(0, q)
        times.append(time.perf_counter() - t)
    return 1e3 * statistics.median(times)


def run_of(pages: list[int], length: int) -> Run:
    """A run of ``length`` tokens filled into ``pages``."""
    run = Run(PAGE, pages=pages, length=length)
    run.slot_list = [run.slot(i) for i in range(length)]
    return run


def prompt_run() -> tuple[Run, int]:
    """The shared prompt in pages 1.., and the first page after it."""
    base = 1 + -(-PROMPT // PAGE)
    return run_of(list(range(1, base)), PROMPT), base


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--own", default="128,1024,4096", help="own tokens per path (comma list)")
    ap.add_argument("--paths", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=25)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--summary-fill", type=float, default=0.75,
                    help="summary table: the share of their blocks the paths filled (the rest masked)")
    ap.add_argument("--out", default=None, help="write the tables as JSON here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    threshold = attention.IN_PLACE_MIN_KEYS
    B, flush = args.paths, torch.zeros(16 * 2**20)  # 64 MiB
    g = torch.Generator().manual_seed(0)
    rows = []
    print(f"{B} paths, {PROMPT}-token shared prompt, one layer's attend, caches flushed, {args.threads} thread(s)")
    print(f"{'own tokens':>10} {'in place ms':>12} {'gathered ms':>12} {'speed-up':>9}")
    for W in (int(x) for x in args.own.split(",")):
        k, (prompt, base) = -(-W // PAGE), prompt_run()
        cache = torch.randn(1, 2, (base + B * k) * PAGE, KVH, DIM, generator=g)
        q = torch.randn(B, HEADS, DIM, generator=g)
        got, placed = {}, None
        for layout in ("blocks", "interleaved"):
            own = [run_of([base + (b * k + j if layout == "blocks" else j * B + b) for j in range(k)], W)
                   for b in range(B)]
            slots = torch.tensor([s for o in own for s in o.slot_list])
            if placed is None:
                placed = cache[:, :, slots].clone()
            else:  # the same keys and values per path, in the other layout's slots
                cache[:, :, slots] = placed
            chunks = [Chunk([5], [PROMPT + W], [b + 1], [o.slot_list[-1]], [prompt, o], shared_prefix=True)
                      for b, o in enumerate(own)]
            att = PagedCascade.for_chunks(cache, chunks, torch.device("cpu"))
            assert (att.own is not None) == (layout == "blocks"), "the layout did not take the intended path"
            got[layout] = (layer_step(att, q, flush, args.repeats), att.attend(0, q))
        (a, out_a), (b, out_b) = got["blocks"], got["interleaved"]
        assert torch.equal(out_a, out_b), "the two layouts disagree"
        rows.append(dict(own_tokens=W, paths=B, in_place_ms=a, gathered_ms=b, speedup=b / a))
        print(f"{W:>10} {a:>12.2f} {b:>12.2f} {b / a:>8.2f}x", flush=True)
    print(f"\nthe summary: one row over the prompt, the {B} paths ({args.summary_fill:.0%} of their blocks filled) and "
          "8 tokens of its own")
    print(f"{'path tokens':>11} {'keys':>6} {'in place ms':>12} {'gathered ms':>12} {'speed-up':>9}  IN_PLACE_MIN_KEYS")
    summary = []
    for W in (int(x) for x in args.own.split(",")):
        k, (prompt, base) = -(-W // PAGE), prompt_run()
        cache = torch.randn(1, 2, (base + B * k + 1) * PAGE, KVH, DIM, generator=g)
        paths = [run_of([base + b * k + j for j in range(k)], max(1, int(args.summary_fill * W))) for b in range(B)]
        own = run_of([base + B * k], 8)
        chunk = Chunk([5], [PROMPT + W + 8], [0], [own.slot_list[-1]], [prompt, *paths, own])
        q = torch.randn(1, HEADS, DIM, generator=g)
        keys = sum(r.length for r in (prompt, *paths, own))
        got = {}
        for in_place in (True, False):
            attention.IN_PLACE_MIN_KEYS = 0 if in_place else 2**62
            att = PagedCascade.for_chunks(cache, [chunk], torch.device("cpu"))
            assert isinstance(att, attention.RunsInPlace) == in_place
            got[in_place] = (layer_step(att, q, flush, args.repeats), att.attend(0, q))
        attention.IN_PLACE_MIN_KEYS = threshold
        (a, out_a), (b, out_b) = got[True], got[False]
        torch.testing.assert_close(out_a, out_b, rtol=1e-5, atol=1e-5)  # parts merged vs one softmax: rounding only
        picks = "in place" if keys >= threshold else "gathered"
        summary.append(dict(path_tokens=W, keys=keys, in_place_ms=a, gathered_ms=b, speedup=b / a, rule_picks=picks))
        print(f"{W:>11} {keys:>6} {a:>12.2f} {b:>12.2f} {b / a:>8.2f}x  {threshold}: {picks}", flush=True)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)  # e.g. runs/, absent in a fresh clone
        Path(args.out).write_text(json.dumps(dict(paths=rows, summary=summary), indent=2))


if __name__ == "__main__":
    main()
