"""The prefill thread on vs off: the engine alone (no HTTP) in a closed loop of C requests in flight, a new
request as one finishes (what a loaded server sees), on ONE engine whose ``prefill_thread`` is switched
between runs, alternating (on, off, on, off, ...) so a shift in the machine's load reaches both.

    python benchmarks/prefill_thread.py                      # bundled model, C = 32, 256 requests, 3 runs each

The same requests every run (pathfind problems, fixed seeds, P = 8): the JSON-free output prints each run's
requests/s, the medians and their ratio, and checks that both settings generated the same tokens.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import replace


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="checkpoint (default: the bundled model)")
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--requests", type=int, default=256)
    ap.add_argument("--paths", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", default="1", help="torch threads (the prefill thread needs a core they leave free)")
    args = ap.parse_args(argv)

    from parathinker import LLM
    from parathinker.eval.benchmarks import pathfind_default

    llm = LLM(args.model, threads=args.threads)
    eng = llm.engine
    if not eng.prefill_thread:
        raise SystemExit("the prefill thread is off here (torch's threads take every core, or not a CPU)")
    dp, ds = llm.default_params()
    pp = replace(dp, num_paths=args.paths)
    work = [(q.problem, i) for i, q in enumerate(pathfind_default(1000)[-args.requests:])]

    def closed(items: list[tuple[str, int]]) -> tuple[float, dict[int, list[int]]]:
        t0, sent, inflight, tokens = time.perf_counter(), 0, 0, {}
        while len(tokens) < len(items):
            while inflight < args.concurrency and sent < len(items):
                problem, seed = items[sent]
                llm.add_request([{"role": "user", "content": problem}], pp, replace(ds, seed=seed), stream_paths=False)
                sent, inflight = sent + 1, inflight + 1
            for d in eng.step():
                if d.finished:
                    inflight -= 1
                    out = d.output
                    tokens[d.request_id - base] = [t for p in out.paths for t in p.token_ids] + out.summary.token_ids
        return len(items) / (time.perf_counter() - t0), tokens

    base = eng._next_id
    closed(work[:4])
    runs: dict[bool, list[float]] = {True: [], False: []}
    seen: dict[bool, dict[int, list[int]]] = {}
    for _ in range(args.repeats):
        for on in (True, False):
            eng.prefill_thread = on
            base = eng._next_id
            rate, toks = closed(work)
            runs[on].append(rate)
            seen[on] = toks
            print(f"prefill thread {'on ' if on else 'off'}: {rate:.2f} req/s", flush=True)
    on, off = statistics.median(runs[True]), statistics.median(runs[False])
    print(f"C={args.concurrency}, {args.requests} requests: on {on:.2f} req/s, off {off:.2f} req/s (medians of "
          f"{args.repeats}): {on / off:.2f}x; prefills on the thread: {eng.thread_prefills}; "
          f"same tokens: {seen[True] == seen[False]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
