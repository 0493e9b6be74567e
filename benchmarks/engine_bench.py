"""Engine speed on a model of a given shape (random weights): decode ms/step vs P and context, with
CUDA graphs and the fused decode forward on and off, transformers `generate` side by side, the bandwidth floor, sustained
tokens/s of many concurrent requests, and summary time-to-first-token with KV reuse vs re-prefill.
Writes JSON + a PNG under --out; a measurement that fails is recorded (its error in the JSON) and
the run goes on.

    python benchmarks/engine_bench.py --shape qwen2.5-1.5b --device cuda --dtype bfloat16 --out runs/bench
    TRITON_INTERPRET=1 python benchmarks/engine_bench.py --shape tiny --device cpu --dtype float32 \
        --attention triton --paths 1,3 --contexts 40 --steps 6 --multi 2x2 --multi-context 16 \
        --summary-paths 2 --summary-lens 8 --no-hf --out /tmp/bench          # smoke run of the static path

ms/step is the median over the decode steps of one run (the engine's per-step host sync makes the
step boundaries exact; the first steps, which compile kernels and capture graphs, drop out of the
median). The floor of a decode step is the bytes it must move (weights once + the prompt's KV
once + each path's own KV) over the device's measured copy bandwidth; "roofline" = floor / measured.
"""

from __future__ import annotations

import argparse
import gc
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
    "smollm2-135m": dict(hidden_size=576, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                         intermediate_size=1536, vocab_size=49152, tie_word_embeddings=True),  # a CPU-sized shape
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
    make_tokenizer(out, num_paths=16)  # <think1>..<think16>: summaries over 16 paths
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


# The released ParaThinker sampling (temperature 0.6, top-p 0.95) plus a top-k of 20: random weights give
# near-uniform logits, whose 95% nucleus spans most of the vocabulary, so every row would take the sampler's
# rare exact path (a full-vocabulary sort, one more host sync) on every step, which a trained model's
# peaked distributions almost never do. With top-k 20 cutting first, the sampler runs the kernels it runs
# for a trained model (partial top-k window, nucleus mask, race). Rows redrawn exactly are counted per row.
SAMPLINGS = dict(release=dict(temperature=0.6, top_p=0.95, top_k=20),
                 flat=dict(temperature=1.0, top_p=0.95, top_k=0))  # flat: the exact redraw on every row and step
SAMPLING = dict(SAMPLINGS["release"])  # what the measurements use now (--sampling)


def step_times(llm, specs) -> tuple[list[float], float]:  # noqa: ANN001
    """Run ``specs`` together; per-decode-step wall times (s) and the total wall time."""
    stamps: list[float] = []
    t0 = time.perf_counter()
    llm.engine.run(specs, on_step=lambda active: stamps.append(time.perf_counter()))
    total = time.perf_counter() - t0
    return [b - a for a, b in zip(stamps, stamps[1:])], total


def counted_step_times(llm, specs) -> tuple[list[float], float, dict]:  # noqa: ANN001
    """``step_times``, plus the engine's exact redraws and discarded overlapped steps during the run."""
    eng = llm.engine
    r0, d0 = eng.redrawn_rows, eng.discarded_steps
    dts, total = step_times(llm, specs)
    return dts, total, dict(redrawn_rows=eng.redrawn_rows - r0, discarded_steps=eng.discarded_steps - d0)


def decode_ms(llm, P: int, context: int, steps: int) -> dict:  # noqa: ANN001
    """Median ms per decode step of one request with P samples over a ``context``-token prompt."""
    from parathinker import ParallelParams, SamplingParams

    prompt = [5 + (i * 7) % 40 for i in range(context)]
    pp = ParallelParams(mode="majority", num_paths=P, max_path_tokens=steps)
    spec = _spec(prompt, pp, SamplingParams(**SAMPLING, seed=0, ignore_eos=True))
    dts, _, counts = counted_step_times(llm, [spec])
    return dict(engine_ms=1000 * statistics.median(dts), replay_ms=graph_replay_ms(llm, P), **counts)


def graph_replay_ms(llm, rows: int, n: int = 20) -> float | None:  # noqa: ANN001
    """GPU time of the captured decode forward of ``rows`` rows alone (its last step replayed ``n`` times).

    The rest of a step (sampling, the host's bookkeeping, the copies) is engine_ms - replay_ms. The
    replay rewrites the last step's K/V with the same values: harmless after the run.
    """
    from parathinker.engine.decode.graphs import bucket_for

    dec = llm.engine.runner.decoder
    st = getattr(dec, "states", {}).get(bucket_for(rows))  # the Triton backend's static buffers
    if st is None or st.graph is None:
        return None
    st.graph.replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(n):
        st.graph.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / n


def multi_request(llm, requests: int, P: int, context: int, steps: int) -> dict:  # noqa: ANN001
    """Sustained decoding of ``requests`` concurrent requests x P samples (EOS ignored): tokens/s."""
    from parathinker import ParallelParams, SamplingParams

    pp = ParallelParams(mode="majority", num_paths=P, max_path_tokens=steps)
    specs = [_spec([5 + (i * 7 + r) % 40 for i in range(context)], pp,
                   SamplingParams(**SAMPLING, seed=r, ignore_eos=True)) for r in range(requests)]
    dts, total, counts = counted_step_times(llm, specs)
    ms = 1000 * statistics.median(dts)
    rows = requests * P
    return dict(requests=requests, P=P, context=context, steps=steps, step_ms=ms, tokens_per_s=rows / ms * 1000,
                end_to_end_tokens_per_s=rows * steps / total, total_s=total, replay_ms=graph_replay_ms(llm, rows), **counts)


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
    # paths go in as prefill chunks (no per-token decoding: 16 x 16K tokens in seconds); then one forward: <summary>
    out = llm.score(prompt, paths, [], ParallelParams(num_paths=P, mode=mode), path_logprobs=False)
    return 1000 * out.stats["time_summary"]


def measure(label: str, key: dict, fn, *fargs) -> dict:  # noqa: ANN001
    """One table row: ``fn(*fargs)``'s dict (or value under ``label``), or the error it raised; never raises."""
    try:
        got = fn(*fargs)
        row = {**key, **(got if isinstance(got, dict) else {label: got}), "error": None}
    except Exception as e:  # noqa: BLE001 - a failed row is a result too
        row = {**key, label: None, "error": f"{type(e).__name__}: {e}"[:500]}
        print(f"  {key}: FAILED {row['error']}", flush=True)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return row


Variant = tuple[bool, bool, bool]  # CUDA graphs, the fused step, overlapped decoding


def variants(llm, graphs: str, fused: str, overlap: str, named: str = "") -> list[Variant]:  # noqa: ANN001
    """Variants to measure: ``named`` (e.g. "graphs+fused+overlap,graphs") or the product of the three switches.

    Graphs only where there is a graph path (CUDA + triton); a named variant that asks for them elsewhere is dropped.
    """
    dec = llm.engine.runner.decoder
    has_graphs = hasattr(dec, "states") and dec.device.type == "cuda"  # the Triton backend on CUDA
    if named:
        out = []
        for name in named.split(","):
            parts = set(name.split("+"))
            unknown = parts - {"graphs", "eager", "fused", "overlap"}
            if unknown:
                raise SystemExit(f"--variants: unknown part(s) {sorted(unknown)} in {name!r}: use graphs|eager[+fused][+overlap]")
            v = ("graphs" in parts, "fused" in parts, "overlap" in parts)
            if (has_graphs or not v[0]) and v not in out:
                out.append(v)
        return out
    both = {"on": [True], "off": [False], "both": [True, False]}
    g = both[graphs] if has_graphs else [False]
    return [(a, b, c) for a in g for b in both[fused] for c in both[overlap]]


def set_variant(llm, v: Variant) -> None:  # noqa: ANN001
    """One engine per variant over the model's weights: the previous engine (its KV pool, its graphs) goes first."""
    from parathinker import DecodeConfig
    from parathinker.engine import Engine

    if getattr(llm, "variant", None) == v:
        return
    cache, attention = llm.engine.cache_config, llm.engine.decode_config.attention
    llm.engine = None
    gc.collect()
    if llm.model.device.type == "cuda":
        torch.cuda.empty_cache()
    decode = DecodeConfig(attention=attention, cuda_graphs=v[0], fused_decode=v[1], overlap=v[2])
    llm.engine = Engine(llm.model, llm.control, llm.eos_ids, cache, tokenizer=llm.tokenizer, decode=decode)
    llm.variant = v


def vlabel(v: Variant) -> str:
    return ("graphs" if v[0] else "eager") + ("+fused" if v[1] else "") + ("+overlap" if v[2] else "")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="qwen2.5-1.5b", choices=sorted(SHAPES))
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"])
    ap.add_argument("--paths", default="1,4,16")
    ap.add_argument("--contexts", default="2048,16384")
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--graphs", default="both", choices=["on", "off", "both"],
                    help="CUDA graphs for decode steps: measure with them, without, or both (CUDA + triton only)")
    ap.add_argument("--fused", default="on", choices=["on", "off", "both"],
                    help="the fused decode forward (fused GEMMs + norm/RoPE/KV-write/SiLU/merge kernels) on, off, or both")
    ap.add_argument("--overlap", default="on", choices=["on", "off", "both"],
                    help="overlapped decoding (host bookkeeping of step n while the GPU runs step n+1) on, off, or both")
    ap.add_argument("--variants", default="",
                    help="instead of the product of --graphs/--fused/--overlap: a list such as "
                    "graphs+fused+overlap,graphs+fused,graphs,eager")
    ap.add_argument("--sampling", default="release",
                    help="release: temperature 0.6, top-p 0.95, top-k 20 (see SAMPLINGS); flat: temperature 1, top-p 0.95, "
                    "which on random weights sends every row to the sampler's exact full-vocabulary redraw; "
                    "'release,flat' measures the decode rows with both, side by side")
    ap.add_argument("--multi", default="32x8", help="concurrent requests x paths for the sustained tokens/s row ('' skips)")
    ap.add_argument("--multi-context", type=int, default=1024)
    ap.add_argument("--multi-steps", type=int, default=64)
    ap.add_argument("--summary-paths", default="2,4,8,16")
    ap.add_argument("--summary-lens", default="1024,4096,16384")
    ap.add_argument("--reprefill-max-tokens", type=int, default=65536,
                    help="skip the re-prefill side above this many path tokens (P x len): its cost grows as their square")
    ap.add_argument("--no-hf", action="store_true", help="skip transformers generate")
    ap.add_argument("--hf-max-context", type=int, default=4096)
    ap.add_argument("--attention", default="auto", choices=["auto", "reference", "triton", "cascade"])
    ap.add_argument("--kv-gib", type=float, default=None)
    ap.add_argument("--work", default="/tmp/parathinker-bench-models")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    from parathinker import LLM, CacheConfig, DecodeConfig

    samplings = args.sampling.split(",")
    if not set(samplings) <= set(SAMPLINGS):
        raise SystemExit(f"--sampling: choose from {sorted(SAMPLINGS)}, got {args.sampling!r}")
    SAMPLING.update(SAMPLINGS[samplings[0]])
    dtype = getattr(torch, args.dtype)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt = make_model(args.shape, Path(args.work), dtype)
    llm = LLM(ckpt, device=args.device, dtype=dtype, cache=CacheConfig(kv_cache_memory=args.kv_gib), decode=DecodeConfig(attention=args.attention))
    cfg = llm.model.config
    bw = copy_bandwidth(args.device)
    weight_bytes = sum(p.numel() * p.element_size() for p in llm.model.parameters())
    kv_tok = cfg.kv_bytes_per_token * torch.empty((), dtype=dtype).element_size()
    modes = variants(llm, args.graphs, args.fused, args.overlap, args.variants)
    res: dict = dict(shape=args.shape, device=args.device, dtype=args.dtype, attention=llm.engine.runner.decoder.name,
                     sampling={k: SAMPLINGS[k] for k in samplings},
                     copy_GBps=bw / 1e9, weight_GB=weight_bytes / 1e9, decode=[], multi=[], summary=[],
                     gpu=torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu")
    print(f"{args.shape} on {res['gpu']} ({args.dtype}); weights {weight_bytes / 1e9:.2f} GB; copy {bw / 1e9:.0f} GB/s; "
          f"decode attention: {res['attention']}", flush=True)
    hf = None
    if not args.no_hf:
        try:
            from transformers import AutoModelForCausalLM

            hf = AutoModelForCausalLM.from_pretrained(str(ckpt), dtype=dtype).to(args.device).eval()
        except Exception as e:  # noqa: BLE001
            res["hf_error"] = f"{type(e).__name__}: {e}"[:500]
    def save() -> None:  # after every row: a run cut short by a timeout keeps what it measured
        (out / "engine_bench.json").write_text(json.dumps(res, indent=2))

    print(f"{'ctx':>6} {'P':>3} {'variant':>21} {'engine ms':>10} {'replay':>7} {'HF ms':>8} {'floor ms':>9} {'roofline':>8}",
          flush=True)
    for ctx in [int(x) for x in args.contexts.split(",")]:
        for P in [int(x) for x in args.paths.split(",")]:
            floor = 1000 * (weight_bytes + kv_tok * (ctx + P * args.steps)) / bw
            h = None
            if hf is not None and ctx <= args.hf_max_context:
                h = measure("hf_ms", dict(context=ctx, P=P), hf_decode_ms, hf, P, ctx, args.steps, args.device)
                res.setdefault("hf", []).append(h)
            for v, sm in [(v, sm) for v in modes for sm in samplings]:
                set_variant(llm, v)
                SAMPLING.update(SAMPLINGS[sm])
                row = measure("engine_ms", dict(context=ctx, P=P, graphs=v[0], fused=v[1], overlap=v[2], sampling=sm,
                                                replay_ms=None), decode_ms, llm, P, ctx, args.steps)
                e = row["engine_ms"]
                row.update(floor_ms=floor, hf_ms=h["hf_ms"] if h else None, roofline=floor / e if e else None)
                res["decode"].append(row)
                save()
                es = f"{e:10.2f}" if e is not None else "    failed"
                hs = f"{h['hf_ms']:8.2f}" if h and h["hf_ms"] is not None else "       -"
                rf = f"{floor / e:8.2f}" if e else "       -"
                rp = f"{row['replay_ms']:7.2f}" if row.get("replay_ms") is not None else "      -"
                label = vlabel(v) + (f" ({sm})" if len(samplings) > 1 else "")
                print(f"{ctx:>6} {P:>3} {label:>21} {es} {rp} {hs} {floor:>9.3f} {rf}", flush=True)
    SAMPLING.update(SAMPLINGS[samplings[0]])
    if args.multi:
        n_req, P = (int(x) for x in args.multi.lower().split("x"))
        ctx, steps = args.multi_context, args.multi_steps
        floor = 1000 * (weight_bytes + kv_tok * (n_req * ctx + n_req * P * steps / 2)) / bw  # mid-run own KV
        print(f"{'reqs x P':>9} {'variant':>21} {'step ms':>8} {'replay':>7} {'tok/s':>9} {'e2e tok/s':>10} {'roofline':>8}",
              flush=True)
        for v in modes:
            set_variant(llm, v)
            key = dict(requests=n_req, P=P, graphs=v[0], fused=v[1], overlap=v[2], sampling=samplings[0])
            row = measure("step_ms", key, multi_request, llm, n_req, P, ctx, steps)
            row.update(floor_ms=floor, roofline=floor / row["step_ms"] if row.get("step_ms") else None)
            res["multi"].append(row)
            save()
            if row["error"] is None:
                rp = f"{row['replay_ms']:7.2f}" if row.get("replay_ms") is not None else "      -"
                print(f"{n_req:>4} x {P:<3} {vlabel(v):>21} {row['step_ms']:8.2f} {rp} {row['tokens_per_s']:9.0f} "
                      f"{row['end_to_end_tokens_per_s']:10.0f} {row['roofline']:8.2f}", flush=True)
    set_variant(llm, modes[0])
    print(f"{'paths':>5} {'len':>6} {'reuse ms':>9} {'reprefill ms':>13}", flush=True)
    for P in [int(x) for x in args.summary_paths.split(",")]:
        for n in [int(x) for x in args.summary_lens.split(",")]:
            # warm-up: a graph capture for grown page tables is not TTFT (re-prefill runs no graph)
            measure("warmup", dict(P=P, path_len=n), summary_ttft_ms, llm, P, n, "parathinker")
            a = measure("reuse_ms", dict(P=P, path_len=n), summary_ttft_ms, llm, P, n, "parathinker")
            if P * n <= args.reprefill_max_tokens:
                b = measure("reprefill_ms", dict(P=P, path_len=n), summary_ttft_ms, llm, P, n, "reprefill")
            else:
                b = dict(reprefill_ms=None, error=None, skipped=f"P x len > --reprefill-max-tokens {args.reprefill_max_tokens}")
            res["summary"].append(dict(P=P, path_len=n, reuse_ms=a["reuse_ms"], reprefill_ms=b["reprefill_ms"],
                                       error=a["error"] or b["error"], skipped=b.get("skipped")))
            save()
            fa = f"{a['reuse_ms']:9.2f}" if a["reuse_ms"] is not None else "   failed"
            fb = f"{b['reprefill_ms']:13.2f}" if b["reprefill_ms"] is not None else (
                "      skipped" if b.get("skipped") else "       failed")
            print(f"{P:>5} {n:>6} {fa} {fb}", flush=True)
    dec = llm.engine.runner.decoder
    res["graph_runner"] = dict(stats=dict(dec.stats), error=dec.error, fused_error=dec.fused_error,
                               buckets=sorted(dec.states)) if hasattr(dec, "states") else None
    if res["graph_runner"] is not None:  # the Triton backend; the CPU cascade has no graphs to report
        print(f"graph runner: {dec.stats}; error: {dec.error}; fused step error: {dec.fused_error}", flush=True)
    save()
    try:
        plot(res, out / "engine_bench.png")
    except Exception as e:  # noqa: BLE001 - the JSON is the result; the picture is a convenience
        print(f"plot failed: {type(e).__name__}: {e}", flush=True)


def _variant(row: dict) -> Variant:
    return (row["graphs"], row.get("fused", False), row.get("overlap", False))  # older JSON files lack the last two


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    first = next(iter(res.get("sampling") or {}), None)  # with several samplings, the plot shows the first
    ok = [r for r in res["decode"] if r.get("engine_ms") is not None and r.get("sampling", first) == first]
    for ctx in sorted({r["context"] for r in res["decode"]}):
        for v in sorted({_variant(r) for r in ok}, reverse=True):
            rows = [r for r in ok if r["context"] == ctx and _variant(r) == v]
            if rows:
                style = ("o" if v[1] else "^") + ("-" if v[0] else "--")
                a.plot([r["P"] for r in rows], [r["engine_ms"] for r in rows], style, alpha=1.0 if v[2] else 0.6,
                       label=f"engine {vlabel(v)}, ctx {ctx}")
        rows = [r for r in res["decode"] if r["context"] == ctx]
        floors = {r["P"]: r["floor_ms"] for r in rows}
        a.plot(list(floors), list(floors.values()), ":", label=f"floor, ctx {ctx}")
        hf = {r["P"]: r["hf_ms"] for r in rows if r.get("hf_ms") is not None}
        if hf:
            a.plot(list(hf), list(hf.values()), "s--", label=f"transformers, ctx {ctx}")
    a.set(xlabel="paths P", ylabel="ms per decode step", title=f"{res['shape']} on {res['gpu']}", xscale="log", yscale="log")
    a.legend(fontsize=6)
    for n in sorted({r["path_len"] for r in res["summary"]}):
        rows = [r for r in res["summary"] if r["path_len"] == n]
        b.plot([r["P"] for r in rows if r["reuse_ms"] is not None],
               [r["reuse_ms"] for r in rows if r["reuse_ms"] is not None], "o-", label=f"KV reuse, {n}/path")
        b.plot([r["P"] for r in rows if r["reprefill_ms"] is not None],
               [r["reprefill_ms"] for r in rows if r["reprefill_ms"] is not None], "s--", label=f"re-prefill, {n}/path")
    multi = [r for r in res["multi"] if r.get("step_ms") is not None]
    title = "; ".join(f"{r['requests']}x{r['P']} {vlabel(_variant(r))}: {r['tokens_per_s']:.0f} tok/s"
                      for r in multi)
    b.set(xlabel="paths P", ylabel="summary time to first token (ms)", xscale="log", yscale="log", title=title)
    b.title.set_fontsize(7)
    b.legend(fontsize=7)
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    for ax, ps in ((a, {r["P"] for r in res["decode"]}), (b, {r["P"] for r in res["summary"]})):
        if ps:
            ax.set_xticks(sorted(ps))
            ax.xaxis.set_major_formatter(ScalarFormatter())
            ax.xaxis.set_minor_formatter(NullFormatter())
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
