"""CPU: one decode step's GEMMs through F.linear (MKL) vs oneDNN over pre-packed weights (`engine.decode.cpu_gemm`).

Every layer's four GEMMs (q|k|v, o, gate|up, down) and the LM head of a model shape, each layer with
its own weights (so they stream from memory as in a real step, not from cache), at several row
counts (a decode step has one row per running path). The two ways alternate in one process; each
number is the median of --repeats, the speed-up the median of the per-repeat ratios.

    python benchmarks/cpu_gemm.py --shape smollm2-135m --rows 1,8,16,64 --out runs/cpu_gemm.json

``--engine N``: instead, the engine end to end on the bundled model, packed vs F.linear (the same
`LLM` per variant, ``DecodeConfig(packed_weights=...)``): N path-finding problems in one batch, 8
paths each plus the summaries, as the bundled model's evaluation runs them.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from parathinker.engine.decode.cpu_gemm import PackedLinear, packing_problem

SHAPES = {  # hidden, layers, heads, kv heads, head dim, intermediate, vocab
    "bundled": (256, 4, 8, 2, 32, 768, 148),
    "smollm2-135m": (576, 30, 9, 3, 64, 1536, 49152),
    "qwen2.5-0.5b": (896, 24, 14, 2, 64, 4864, 151936),
}


def weights(shape: str, dtype: torch.dtype) -> list[torch.Tensor]:
    D, L, H, KVH, hd, inter, V = SHAPES[shape]
    g = torch.Generator().manual_seed(0)
    per_layer = [((H + 2 * KVH) * hd, D), (D, H * hd), (2 * inter, D), (D, inter)]
    ws = [torch.randn(n, k, generator=g).div_(k**0.5).to(dtype) for _ in range(L) for n, k in per_layer]
    return ws + [torch.randn(V, D, generator=g).to(dtype)]


def timed(fn, clock) -> float:  # noqa: ANN001
    t = clock()
    fn()
    return 1000 * (clock() - t)


def engine_batch(n: int, repeats: int, clock) -> None:  # noqa: ANN001
    from parathinker import LLM, DecodeConfig, ParallelParams, SamplingParams
    from parathinker.tasks.pathfind.data import problems
    from parathinker.tasks.pathfind.problem import GenConfig

    llms = {packed: LLM(decode=DecodeConfig(packed_weights=packed)) for packed in (True, False)}  # the bundled model
    stream = problems(0, "bench", GenConfig())
    prompts = [next(stream).prompt for _ in range(n)]
    pp = ParallelParams(num_paths=8, max_path_tokens=128, summary_max_tokens=48)
    sp = SamplingParams(temperature=1.0, seed=0)
    times: dict[bool, list[float]] = {True: [], False: []}
    answers: dict[bool, list] = {}
    for _ in range(repeats + 1):  # the first round warms up
        for packed in (True, False):
            t = clock()
            outs = llms[packed].generate(prompts, pp, sp)
            times[packed].append(clock() - t)
            answers[packed] = [o.answer for o in outs]
    a, b = times[True][1:], times[False][1:]
    print(f"bundled model, {n} problems x 8 paths + summaries, median of {repeats}: packed {statistics.median(a):.2f} s, "
          f"F.linear {statistics.median(b):.2f} s, speed-up {statistics.median(y / x for x, y in zip(a, b)):.2f}x, "
          f"same answers: {answers[True] == answers[False]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="smollm2-135m", choices=sorted(SHAPES))
    ap.add_argument("--rows", default="1,8,16,64")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--clock", default="process", choices=["wall", "process"])
    ap.add_argument("--engine", type=int, default=0, metavar="N",
                    help="time the engine end to end on N bundled-model problems instead (packed vs F.linear)")
    ap.add_argument("--out", default=None, help="write the rows as JSON here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    clock = time.process_time if args.clock == "process" else time.perf_counter
    if args.engine:
        engine_batch(args.engine, args.repeats, clock)
        return
    dtype = getattr(torch, args.dtype)
    ws = weights(args.shape, dtype)
    problem = packing_problem(ws)
    if problem:
        raise SystemExit(f"cannot pack here: {problem}")
    packed = [PackedLinear(w, None) for w in ws]
    nbytes = sum(w.numel() * w.element_size() for w in ws)
    print(f"{args.shape} {args.dtype}: {len(ws)} GEMMs, {nbytes / 2**20:.0f} MiB of weights, "
          f"{args.threads} thread(s), {args.clock} clock, median of {args.repeats}")
    print(f"{'rows':>5} {'F.linear ms':>12} {'packed ms':>10} {'speed-up':>9} {'F.linear GB/s':>14} {'packed GB/s':>12}")
    rows = []
    for n in [int(x) for x in args.rows.split(",")]:
        xs = {k: torch.randn(n, k).to(dtype) for k in {w.shape[1] for w in ws}}

        def plain(xs: dict = xs) -> None:
            for w in ws:
                F.linear(xs[w.shape[1]], w)

        def pk(xs: dict = xs) -> None:
            for w, p in zip(ws, packed):
                p(xs[w.shape[1]])

        plain(), pk()  # warm-up
        a, b = [], []
        for _ in range(args.repeats):
            a.append(timed(plain, clock))
            b.append(timed(pk, clock))
        am, bm = statistics.median(a), statistics.median(b)
        row = dict(rows=n, f_linear_ms=am, packed_ms=bm, speedup=statistics.median(x / y for x, y in zip(a, b)),
                   f_linear_runs=a, packed_runs=b)
        rows.append(row)
        print(f"{n:>5} {am:>12.1f} {bm:>10.1f} {row['speedup']:>8.2f}x {nbytes / am / 1e6:>14.1f} {nbytes / bm / 1e6:>12.1f}",
              flush=True)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        meta = dict(shape=args.shape, dtype=args.dtype, threads=args.threads, clock=args.clock, repeats=args.repeats,
                    torch=torch.__version__)
        Path(args.out).write_text(json.dumps(dict(meta=meta, rows=rows), indent=2))


if __name__ == "__main__":
    main()
