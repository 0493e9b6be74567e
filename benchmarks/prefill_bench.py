"""Prompt prefill time: the engine's plain causal prefill vs its reference (explicit-mask) prefill vs
transformers' forward, side by side in one process (interleaved repeats, medians).

    python benchmarks/prefill_bench.py --model smollm2 --lengths 512,2048 --threads 1
    python benchmarks/prefill_bench.py --shape qwen2.5-1.5b --device cuda --dtype bfloat16 --lengths 2048,16384

The engine's number is the time of ``Engine._prefill`` for one request (the prompt's forward into
the paged pool and its last-token logits); transformers' is one ``model(ids)`` forward (its cache
built, ``logits_to_keep=1``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from engine_bench import SHAPES, _spec, make_model, sync  # noqa: E402


def engine_prefill_ms(llm, ids: list[int]) -> float:  # noqa: ANN001
    from parathinker import ParallelParams, SamplingParams

    eng = llm.engine
    spec = _spec(ids, ParallelParams(mode="majority", num_paths=1, max_path_tokens=1), SamplingParams(temperature=0.0))
    req = eng.run([spec])[0]  # prefill + one token; its stats separate the phases
    return 1000 * req.stats["time_prefill"]


def batch_prefill_ms(llm, prompts: list[list[int]], packed: bool) -> float:  # noqa: ANN001
    """Wall time of admitting ``prompts`` together: their prefill (packed into shared forwards, or one
    forward each) plus one decode step."""
    from parathinker import ParallelParams, SamplingParams
    from parathinker.engine import runner

    saved = runner.MAX_PREFILL_TOKENS
    runner.MAX_PREFILL_TOKENS = saved if packed else 1
    try:
        pp = ParallelParams(mode="majority", num_paths=1, max_path_tokens=1)
        specs = [_spec(p, pp, SamplingParams(temperature=0.0)) for p in prompts]
        sync(str(llm.model.device))
        t = time.perf_counter()
        llm.engine.run(specs)
        sync(str(llm.model.device))
        return 1000 * (time.perf_counter() - t)
    finally:
        runner.MAX_PREFILL_TOKENS = saved


def hf_prefill_ms(hf, ids: list[int], device: str) -> float:  # noqa: ANN001
    x = torch.tensor([ids], device=device)
    sync(device)
    t = time.perf_counter()
    with torch.inference_mode():
        hf(x, use_cache=True, logits_to_keep=1)
    sync(device)
    return 1000 * (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="a checkpoint or alias (e.g. smollm2); default: --shape, random")
    ap.add_argument("--shape", default="smollm2-135m", choices=sorted(SHAPES))
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--lengths", default="512,2048")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch", default="", help="also N prompts of length L admitted together, packed vs one by one: "
                    "'N x L' (e.g. 16x128)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--work", default="/tmp/parathinker-bench-models")
    ap.add_argument("--out", default=None, help="write the table as JSON here")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from transformers import AutoModelForCausalLM

    from parathinker import LLM, CacheConfig, DecodeConfig
    from parathinker.model.gguf import resolve_alias

    dtype = getattr(torch, args.dtype)
    path = resolve_alias(args.model) if args.model else make_model(args.shape, Path(args.work), dtype)
    cache = CacheConfig(kv_cache_memory=4.0 if args.device == "cuda" else 1.0)
    llm = LLM(path, device=args.device, dtype=dtype, threads=args.threads, cache=cache)
    # the same checkpoint with the explicit-mask reference prefill (one engine per variant)
    llm_ref = LLM(path, device=args.device, dtype=dtype, threads=args.threads, cache=cache,
                  decode=DecodeConfig(reference_prefill=True))
    hf = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype).to(args.device).eval()
    vocab = min(llm.model.config.vocab_size, 30000)
    rows = []
    print(f"{'tokens':>7} {'engine causal ms':>17} {'engine reference ms':>20} {'transformers ms':>16} "
          f"{'causal vs ref':>14} {'causal vs HF':>13}", flush=True)
    for n in [int(x) for x in args.lengths.split(",")]:
        ids = [100 + (i * 7919) % (vocab - 100) for i in range(n)]
        engine_prefill_ms(llm, ids)  # warm-up
        engine_prefill_ms(llm_ref, ids)
        hf_prefill_ms(hf, ids, args.device)
        a, b, h = [], [], []
        for _ in range(args.repeats):
            a.append(engine_prefill_ms(llm, ids))
            b.append(engine_prefill_ms(llm_ref, ids))
            h.append(hf_prefill_ms(hf, ids, args.device))
        row = dict(tokens=n, causal_ms=statistics.median(a), reference_ms=statistics.median(b), hf_ms=statistics.median(h))
        rows.append(row)
        print(f"{n:>7} {row['causal_ms']:>17.1f} {row['reference_ms']:>20.1f} {row['hf_ms']:>16.1f} "
              f"{row['reference_ms'] / row['causal_ms']:>13.2f}x {row['hf_ms'] / row['causal_ms']:>12.2f}x", flush=True)
    batch = None
    if args.batch:
        nb, lb = (int(x) for x in args.batch.lower().split("x"))
        prompts = [[100 + (i * 7919 + r * 31) % (vocab - 100) for i in range(lb)] for r in range(nb)]
        batch_prefill_ms(llm, prompts, True)  # warm-up
        a, b = [], []
        for _ in range(args.repeats):
            a.append(batch_prefill_ms(llm, prompts, True))
            b.append(batch_prefill_ms(llm, prompts, False))
        batch = dict(requests=nb, tokens=lb, packed_ms=statistics.median(a), one_by_one_ms=statistics.median(b))
        print(f"{nb} prompts x {lb} tokens admitted together (prefill + one decode step): packed "
              f"{batch['packed_ms']:.1f} ms, one forward each {batch['one_by_one_ms']:.1f} ms "
              f"({batch['one_by_one_ms'] / batch['packed_ms']:.2f}x)", flush=True)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)  # e.g. runs/, absent in a fresh clone
        Path(args.out).write_text(json.dumps(dict(model=str(args.model or args.shape), device=args.device,
                                                  dtype=args.dtype, threads=args.threads, rows=rows, batch=batch),
                                             indent=2))


if __name__ == "__main__":
    main()
