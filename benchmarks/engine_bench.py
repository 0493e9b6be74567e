"""Engine speed on a model of a given shape (random weights): decode ms/step vs P and context,
transformers `generate` side by side, the bandwidth floor, and summary time-to-first-token with
KV reuse vs re-prefill. Writes JSON + a PNG under --out.

    python benchmarks/engine_bench.py --shape qwen2.5-1.5b --device cuda --dtype bfloat16 --out runs/bench
    python benchmarks/engine_bench.py --shape tiny --device cpu --out /tmp/bench   # smoke run

The floor of a decode step is the bytes it must move (weights once + the prompt's KV once + each
path's own KV) over the device's measured copy bandwidth.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

SHAPES = {
    # hidden, layers, heads, kv heads, intermediate, vocab, tied
    "qwen2.5-1.5b": dict(hidden_size=1536, num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
                         intermediate_size=8960, vocab_size=151936, tie_word_embeddings=True),
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 intermediate_size=128, vocab_size=256, tie_word_embeddings=True),
}


def make_model(shape: str, work: Path, dtype: torch.dtype) -> Path:
    """A random Qwen2 of the given shape with a word-level tokenizer (no download needed)."""
    from helpers import make_tokenizer
    from transformers import Qwen2Config, Qwen2ForCausalLM

    out = work / f"{shape}-{str(dtype).split('.')[-1]}"
    if (out / "config.json").is_file():
        return out
    out.mkdir(parents=True, exist_ok=True)
    make_tokenizer(out)
    cfg = Qwen2Config(**SHAPES[shape], max_position_embeddings=32768, rope_theta=1e6)
    with torch.device("cpu"):
        model = Qwen2ForCausalLM(cfg).to(dtype)
    model.save_pretrained(str(out))
    return out


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def copy_bandwidth(device: str) -> float:
    """Measured device copy rate, bytes/s (read + write counted)."""
    n = (1 << 30) if device.startswith("cuda") else (1 << 27)
    a = torch.empty(n // 2, dtype=torch.float16, device=device)
    b = torch.empty_like(a)
    b.copy_(a)
    sync(device)
    t = time.perf_counter()
    for _ in range(10):
        b.copy_(a)
    sync(device)
    return 2 * a.numel() * a.element_size() * 10 / (time.perf_counter() - t)


def decode_ms(llm, P: int, context: int, steps: int, device: str) -> float:  # noqa: ANN001
    from parathinker import ParallelParams, SamplingParams

    prompt = [5 + (i * 7) % 40 for i in range(context)]

    def run(n: int) -> float:
        pp = ParallelParams(mode="majority", num_paths=P, max_path_tokens=n)
        sync(device)
        t = time.perf_counter()
        llm.engine.run([_spec(prompt, pp, SamplingParams(temperature=1.0, seed=0, ignore_eos=True))])
        sync(device)
        return time.perf_counter() - t

    run(2)
    return 1000 * (run(steps) - run(1)) / (steps - 1)


def _spec(prompt, pp, sp):  # noqa: ANN001
    from parathinker.engine.sequence import RequestSpec

    return RequestSpec(list(prompt), pp, sp, [])


def hf_decode_ms(hf, P: int, context: int, steps: int, device: str) -> float:  # noqa: ANN001
    ids = torch.tensor([[5 + (i * 7) % 40 for i in range(context)]], device=device)

    def run(n: int) -> float:
        sync(device)
        t = time.perf_counter()
        with torch.inference_mode():
            hf.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True, num_return_sequences=P,
                        max_new_tokens=n, min_new_tokens=n, pad_token_id=0)
        sync(device)
        return time.perf_counter() - t

    run(2)
    return 1000 * (run(steps) - run(1)) / (steps - 1)


def summary_ttft_ms(llm, P: int, path_len: int, mode: str) -> float:  # noqa: ANN001
    """Wall time from the paths' end to the first summary token (one forced summary token)."""
    from parathinker import ParallelParams

    prompt = [5 + (i * 3) % 40 for i in range(64)]
    paths = [[5 + (i * 5 + k) % 40 for i in range(path_len)] for k in range(P)]
    out = llm.score(prompt, paths, [], ParallelParams(num_paths=P, mode=mode))  # one forward: <summary>
    return 1000 * out.stats["time_summary"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="qwen2.5-1.5b", choices=sorted(SHAPES))
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"])
    ap.add_argument("--paths", default="1,4,16")
    ap.add_argument("--contexts", default="2048,16384")
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--summary-paths", default="2,4,8,16")
    ap.add_argument("--summary-lens", default="1024,4096,16384")
    ap.add_argument("--no-hf", action="store_true", help="skip transformers generate")
    ap.add_argument("--attention", default="auto", choices=["auto", "reference", "triton"])
    ap.add_argument("--kv-gib", type=float, default=None)
    ap.add_argument("--work", default="/tmp/parathinker-bench-models")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    from parathinker import LLM, CacheConfig

    dtype = getattr(torch, args.dtype)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt = make_model(args.shape, Path(args.work), dtype)
    llm = LLM(ckpt, device=args.device, dtype=dtype, cache=CacheConfig(kv_cache_memory=args.kv_gib,
                                                                        attention=args.attention))
    cfg = llm.model.config
    bw = copy_bandwidth(args.device)
    weight_bytes = sum(p.numel() * p.element_size() for p in llm.model.parameters())
    kv_tok = cfg.kv_bytes_per_token * torch.empty((), dtype=dtype).element_size()
    res: dict = dict(shape=args.shape, device=args.device, dtype=args.dtype, attention=llm.engine.runner.decode_backend,
                     copy_GBps=bw / 1e9, weight_GB=weight_bytes / 1e9, decode=[], summary=[],
                     gpu=torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu")
    print(f"{args.shape} on {res['gpu']} ({args.dtype}); weights {weight_bytes / 1e9:.2f} GB; copy {bw / 1e9:.0f} GB/s; "
          f"decode attention: {res['attention']}", flush=True)
    hf = None
    if not args.no_hf:
        from transformers import AutoModelForCausalLM

        hf = AutoModelForCausalLM.from_pretrained(str(ckpt), dtype=dtype).to(args.device).eval()
    print(f"{'ctx':>6} {'P':>3} {'engine ms':>10} {'HF ms':>8} {'floor ms':>9} {'x floor':>8}", flush=True)
    for ctx in [int(x) for x in args.contexts.split(",")]:
        for P in [int(x) for x in args.paths.split(",")]:
            e = statistics.median(decode_ms(llm, P, ctx, args.steps, args.device) for _ in range(3))
            h = hf_decode_ms(hf, P, ctx, args.steps, args.device) if hf is not None and ctx <= 4096 else None
            floor = 1000 * (weight_bytes + kv_tok * (ctx + P * args.steps)) / bw
            res["decode"].append(dict(context=ctx, P=P, engine_ms=e, hf_ms=h, floor_ms=floor))
            hs = f"{h:8.2f}" if h is not None else "       -"
            print(f"{ctx:>6} {P:>3} {e:>10.2f} {hs} {floor:>9.3f} {e / floor:>8.1f}", flush=True)
    print(f"{'paths':>5} {'len':>6} {'reuse ms':>9} {'reprefill ms':>13}", flush=True)
    for P in [int(x) for x in args.summary_paths.split(",")]:
        for n in [int(x) for x in args.summary_lens.split(",")]:
            a = summary_ttft_ms(llm, P, n, "parathinker")
            b = summary_ttft_ms(llm, P, n, "reprefill")
            res["summary"].append(dict(P=P, path_len=n, reuse_ms=a, reprefill_ms=b))
            print(f"{P:>5} {n:>6} {a:>9.2f} {b:>13.2f}", flush=True)
    (out / "engine_bench.json").write_text(json.dumps(res, indent=2))
    plot(res, out / "engine_bench.png")


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for ctx in sorted({r["context"] for r in res["decode"]}):
        rows = [r for r in res["decode"] if r["context"] == ctx]
        a.plot([r["P"] for r in rows], [r["engine_ms"] for r in rows], "o-", label=f"engine, ctx {ctx}")
        a.plot([r["P"] for r in rows], [r["floor_ms"] for r in rows], ":", label=f"floor, ctx {ctx}")
        hf = [r for r in rows if r["hf_ms"] is not None]
        if hf:
            a.plot([r["P"] for r in hf], [r["hf_ms"] for r in hf], "s--", label=f"transformers, ctx {ctx}")
    a.set(xlabel="paths P", ylabel="ms per decode step", title=f"{res['shape']} on {res['gpu']}", xscale="log", yscale="log")
    a.legend(fontsize=7)
    for n in sorted({r["path_len"] for r in res["summary"]}):
        rows = [r for r in res["summary"] if r["path_len"] == n]
        b.plot([r["P"] for r in rows], [r["reuse_ms"] for r in rows], "o-", label=f"KV reuse, {n}/path")
        b.plot([r["P"] for r in rows], [r["reprefill_ms"] for r in rows], "s--", label=f"re-prefill, {n}/path")
    b.set(xlabel="paths P", ylabel="summary time to first token (ms)", xscale="log", yscale="log")
    b.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
