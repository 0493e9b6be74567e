"""Where a decode step's time goes: kernel table of the captured decode forward, and the whole step.

For each P and each forward (fused / modular), decodes one request (P samples over a ``--context``
prompt) to capture its CUDA graph, then profiles (torch.profiler) ``--replays`` replays of that
graph alone and ``--steps`` full engine steps. Writes per-kernel tables (time, calls per step) and
a summary (kernels per step, GPU ms per replay, host ms per step) to --out/step_profile.{txt,json}.

    python benchmarks/step_profile.py --shape qwen2.5-1.5b --device cuda --dtype bfloat16 --out runs/prof
    TRITON_INTERPRET=1 python benchmarks/step_profile.py --shape tiny --device cpu --dtype float32 \
        --attention triton --paths 1 --context 40 --out /tmp/prof     # CPU smoke (no graphs, CPU ops only)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from engine_bench import SAMPLING, SHAPES, _spec, make_model, step_times  # noqa: E402


def kernel_table(prof, per: int, top: int) -> list[dict]:  # noqa: ANN001
    """Device kernels (CPU ops where there is no device) by total time: ms per step and calls per step."""
    rows = []
    for ev in prof.key_averages():
        dev_us = getattr(ev, "device_time_total", 0) or getattr(ev, "cuda_time_total", 0)
        if torch.cuda.is_available():
            if ev.device_type != torch.autograd.DeviceType.CUDA or not dev_us:
                continue
            t = dev_us
        else:
            t = ev.self_cpu_time_total
        rows.append(dict(name=ev.key[:90], ms_per_step=t / 1000 / per, calls_per_step=ev.count / per))
    rows.sort(key=lambda r: -r["ms_per_step"])
    return rows[:top]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="qwen2.5-1.5b", choices=sorted(SHAPES))
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"])
    ap.add_argument("--attention", default="auto", choices=["auto", "triton", "cascade", "reference"])
    ap.add_argument("--paths", default="1,16")
    ap.add_argument("--context", type=int, default=2048)
    ap.add_argument("--replays", type=int, default=20)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--work", default="/tmp/parathinker-bench-models")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    from torch.profiler import ProfilerActivity, profile

    from parathinker import LLM, CacheConfig, DecodeConfig, ParallelParams, SamplingParams
    from parathinker.engine.decode.graphs import bucket_for

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    dtype = getattr(torch, args.dtype)
    ckpt = make_model(args.shape, Path(args.work), dtype)
    cache = CacheConfig(kv_cache_memory=4.0 if args.device == "cuda" else 0.5)
    llms = {fused: LLM(ckpt, device=args.device, dtype=dtype, cache=cache,  # one engine per variant
                       decode=DecodeConfig(attention=args.attention, fused_decode=fused)) for fused in (True, False)}
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if args.device.startswith("cuda") else [])
    prompt = [5 + (i * 7) % 40 for i in range(args.context)]
    results, lines = [], []
    for P in [int(x) for x in args.paths.split(",")]:
        for fused in (True, False):
            llm = llms[fused]
            pp = ParallelParams(mode="majority", num_paths=P, max_path_tokens=8)
            sp = SamplingParams(**SAMPLING, seed=0, ignore_eos=True)
            llm.engine.run([_spec(prompt, pp, sp)])  # captures the bucket's graph (CUDA)
            dec = llm.engine.runner.decoder
            st = getattr(dec, "states", {}).get(bucket_for(P))  # the static buffers of the Triton backend
            row: dict = dict(P=P, fused=fused, context=args.context)
            if st is not None and st.graph is not None:
                with profile(activities=acts) as prof:
                    for _ in range(args.replays):
                        st.graph.replay()
                    torch.cuda.synchronize()
                table = kernel_table(prof, args.replays, 10**6)  # every kernel: the sums; the top rows are kept
                row.update(replay_kernels=table[: args.top],
                           kernels_per_replay=sum(r["calls_per_step"] for r in table),
                           gpu_ms_per_replay=sum(r["ms_per_step"] for r in table))
            pp = ParallelParams(mode="majority", num_paths=P, max_path_tokens=args.steps + 2)
            with profile(activities=acts) as prof:
                steps, _ = step_times(llm, [_spec(prompt, pp, sp)])  # (the prompt's prefill is in the table too)
            row.update(step_ms=1000 * sorted(steps)[len(steps) // 2] if steps else None,
                       run_kernels=kernel_table(prof, max(1, len(steps) + 1), args.top))
            results.append(row)
            head = (f"== P={P} {'fused' if fused else 'modular'} ctx {args.context}: step {row['step_ms']:.2f} ms"
                    + (f", graph replay {row['gpu_ms_per_replay']:.2f} ms GPU in {row['kernels_per_replay']:.0f}"
                       " kernels" if "gpu_ms_per_replay" in row else ""))
            print(head, flush=True)
            lines.append(head)
            for name in ("replay_kernels", "run_kernels"):
                if name in row:
                    lines.append(f"  {name} (ms/step, calls/step):")
                    lines += [f"    {r['ms_per_step']:8.3f} {r['calls_per_step']:6.1f}  {r['name']}" for r in row[name]]
            (out / "step_profile.json").write_text(json.dumps(results, indent=2))
            (out / "step_profile.txt").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
