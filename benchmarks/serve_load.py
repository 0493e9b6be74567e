"""`parathinker serve` under load: requests/s, tokens/s, TTFT and latency with C concurrent
streaming clients (C = 1, 8, 32, 64 by default), all against ONE server in one run, and each
level's throughput as a ratio to one-at-a-time (C = 1). Writes JSON + a PNG.

    python benchmarks/serve_load.py --out runs/serve_load              # spawns `parathinker serve` (bundled model)
    python benchmarks/serve_load.py --url http://127.0.0.1:8000 --out runs/x   # an already running server

Every level sends the same requests (the same pathfind problems, fixed seeds, num_paths 8): the
engine's per-request generators make a seeded request's tokens independent of its batch, so every
level does exactly the same work and the ratios compare like with like (the JSON checks it:
identical completion-token totals and answers). The client runs in this process, the server in
its own (spawned unless --url), so the client's parsing does not share the server's interpreter.
TTFT: time to the first content (summary) piece, what a user waits for; with --stream-paths the
first path piece comes sooner. Latency: request sent -> [DONE]. On a shared machine the load
shifts between levels: ``--repeats`` runs the levels in turn (1, 8, 32, 64, 1, 8, ...) and each
level reports its median run (every run's requests/s in the JSON).

The engine baseline is ONE engine in this process, whatever the server runs: with
``--server-args "--data-parallel-size 2"`` (two engine processes) the server can pass it.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(url: str, proc: subprocess.Popen | None, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"the server exited with {proc.returncode} before it was healthy")
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"{url}/health did not answer 200 within {timeout:.0f} s")


def _pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    k = min(len(xs) - 1, max(0, round(q / 100 * (len(xs) - 1))))
    return xs[k]


async def _one(client: Any, model: str, problem: str, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    t0 = time.perf_counter()
    ttft = None
    content, usage, answer = "", None, None
    stream = await client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": problem}], seed=seed, stream=True,
        stream_options={"include_usage": True},
        extra_body={"num_paths": args.paths, "stream_paths": args.stream_paths},
    )
    async for ch in stream:
        if ch.usage is not None:
            usage = ch.usage
        for c in ch.choices:
            piece = c.delta.content
            if piece:
                if ttft is None:
                    ttft = time.perf_counter() - t0
                content += piece
            extra = c.delta.model_extra or {}
            if extra.get("answer") is not None:
                answer = extra["answer"]
    return {"latency": time.perf_counter() - t0, "ttft": ttft, "content": content, "answer": answer,
            "completion_tokens": usage.completion_tokens if usage else 0,
            "prompt_tokens": usage.prompt_tokens if usage else 0}


async def _level(url: str, model: str, c: int, work: list[tuple[str, int]], args: argparse.Namespace) -> dict[str, Any]:
    import openai

    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key=args.api_key, max_retries=0, timeout=600)
    queue: asyncio.Queue = asyncio.Queue()
    for i, w in enumerate(work):
        queue.put_nowait((i, w))
    results: list[dict[str, Any] | None] = [None] * len(work)
    errors: list[str] = []

    async def worker() -> None:
        while not queue.empty():
            i, (problem, seed) = queue.get_nowait()
            try:
                results[i] = await _one(client, model, problem, seed, args)
            except Exception as e:  # noqa: BLE001 - counted and reported
                errors.append(f"{type(e).__name__}: {e}")

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(c)))
    wall = time.perf_counter() - t0
    await client.close()
    ok = [r for r in results if r is not None]
    toks = sum(r["completion_tokens"] for r in ok)
    lat = [r["latency"] for r in ok]
    ttft = [r["ttft"] for r in ok if r["ttft"] is not None]
    return {
        "concurrency": c, "requests": len(work), "ok": len(ok), "errors": len(errors), "error_samples": errors[:3],
        "wall_s": wall, "requests_per_s": len(ok) / wall, "completion_tokens": toks, "tokens_per_s": toks / wall,
        "ttft_s": {f"p{q}": _pct(ttft, q) for q in (50, 90, 99)},
        "latency_s": {f"p{q}": _pct(lat, q) for q in (50, 90, 99)},
        "mean_latency_s": statistics.fmean(lat) if lat else float("nan"),
        "answers": [r["answer"] if r else None for r in results],
    }


def _engine_baseline(levels: list[int], work: list[tuple[str, int]], args: argparse.Namespace) -> dict[str, dict]:
    """The same requests, the same closed loop (C in flight, a new one as one finishes), on the engine
    in this process: step() in a loop, no HTTP, no threads. What a one-engine server is bounded by;
    with the step's cost per sequence row (does a bigger batch make a row cheaper?)."""
    from dataclasses import replace

    from parathinker import LLM, CacheConfig

    extra = args.server_args.split()
    gib = float(extra[extra.index("--kv-cache-memory") + 1]) if "--kv-cache-memory" in extra else None
    llm = LLM(args.model, threads=args.threads, cache=CacheConfig(kv_cache_memory=gib))
    dp, ds = llm.default_params()
    pp = replace(dp, num_paths=args.paths)

    # as the server asks the engine (an older engine, measured for a before/after, always streams the paths)
    kw = {"stream_paths": args.stream_paths} if "stream_paths" in inspect.signature(llm.add_request).parameters else {}

    def closed(c: int, items: list[tuple[str, int]]) -> dict[str, float]:
        t0, sent, done, inflight = time.perf_counter(), 0, 0, 0
        steps, step_s, rows = 0, 0.0, 0
        while done < len(items):
            while inflight < c and sent < len(items):
                problem, seed = items[sent]
                llm.add_request([{"role": "user", "content": problem}], pp, replace(ds, seed=seed), **kw)
                sent, inflight = sent + 1, inflight + 1
            t = time.perf_counter()
            deltas = llm.engine.step()
            step_s += time.perf_counter() - t
            steps += 1
            for d in deltas:
                if d.finished:
                    done, inflight = done + 1, inflight - 1
                    st = d.output.stats  # rows: tokens run through the model after the prompt (paths, summary)
                    rows += int(st["path_tokens"] + st["summary_tokens"] + st["reprefill_tokens"])
        return {"requests_per_s": len(items) / (time.perf_counter() - t0), "steps": steps,
                "mean_step_ms": 1000 * step_s / steps, "mean_rows_per_step": rows / steps,
                "us_per_row": 1e6 * step_s / max(rows, 1)}

    closed(2, work[: args.warmup])
    runs: dict[int, list[dict[str, float]]] = {c: [] for c in levels}
    for _ in range(args.repeats):  # the levels in turn, so a shift in the machine's load reaches every level
        for c in levels:
            runs[c].append(closed(c, work))
    out = {}
    for c in levels:
        med = _median_run(runs[c])
        out[str(c)] = {**med, "requests_per_s_runs": [r["requests_per_s"] for r in runs[c]]}
    return out


def _median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median requests/s (the lower middle one of an even count)."""
    return sorted(runs, key=lambda r: r["requests_per_s"])[(len(runs) - 1) // 2]


def _plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lv = report["levels"]
    cs = [x["concurrency"] for x in lv]
    fig, ax = plt.subplots(1, 2, figsize=(11, 4))
    ax[0].plot(cs, [x["ratio_vs_c1"] for x in lv], "o-", label="requests/s vs C=1")
    ax[0].plot(cs, cs, ":", color="gray", label="ideal (C x)")
    eng = report.get("engine_only_requests_per_s")
    if eng:
        e1 = eng[str(cs[0])]["requests_per_s"]
        ax[0].plot(cs, [eng[str(c)]["requests_per_s"] / e1 for c in cs], "s--", label="one engine alone (no HTTP)")
    ax[0].axhline(4, color="red", lw=0.8, ls="--", label="target 4x at C=32")
    ax[0].set_xscale("log", base=2)
    ax[0].set_yscale("log", base=2)
    ax[0].set_xlabel("concurrent clients C")
    ax[0].set_ylabel("throughput ratio")
    ax[0].legend()
    for key, style in (("ttft_s", "--"), ("latency_s", "-")):
        for q in ("p50", "p90", "p99"):
            ax[1].plot(cs, [x[key][q] for x in lv], style, marker="o", label=f"{key[:-2]} {q}")
    ax[1].set_xscale("log", base=2)
    ax[1].set_xlabel("concurrent clients C")
    ax[1].set_ylabel("seconds")
    ax[1].legend(fontsize=7)
    extra = f" {report['server_args']}" if report.get("server_args") else ""
    fig.suptitle(f"parathinker serve{extra}, {report['model']}, P={report['paths']}, "
                 f"{report['requests_per_level']} requests/level")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", help="an already running server (default: spawn `parathinker serve` with the bundled model)")
    ap.add_argument("--model", default=None, help="--model for the spawned server (default: bundled)")
    ap.add_argument("--served-model", default=None, help="model name to send (default: the server's /v1/models)")
    ap.add_argument("--threads", default="1", help="--threads of the spawned server")
    ap.add_argument("--server-args", default="", help="more options for the spawned server, e.g. '--kv-cache-memory 0.25'")
    ap.add_argument("--no-engine-baseline", action="store_true",
                    help="skip the same closed loop run on the engine in this process, without HTTP, after the server")
    ap.add_argument("--api-key", default="none")
    ap.add_argument("--concurrency", default="1,8,32,64", help="comma list of C")
    ap.add_argument("--requests", type=int, default=64, help="requests per level (the same ones at every level)")
    ap.add_argument("--paths", type=int, default=8)
    ap.add_argument("--stream-paths", action="store_true", help="stream the paths' pieces too")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--warmup", type=int, default=4, help="requests before the measured levels")
    ap.add_argument("--repeats", type=int, default=3,
                    help="run the levels in turn this many times and report each level's median run (a shared, "
                         "noisy machine: a load shift then reaches every level, not just one)")
    ap.add_argument("--out", required=True, help="folder for serve_load.json and serve_load.png")
    args = ap.parse_args(argv)
    levels = [int(x) for x in args.concurrency.split(",")]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    from parathinker.eval.benchmarks import pathfind_default

    problems = pathfind_default(1000)[-args.requests:]
    work = [(q.problem, args.seed + i) for i, q in enumerate(problems)]

    proc = None
    url = args.url
    if url is None:
        port = _free_port()
        cmd = [sys.executable, "-m", "parathinker", "serve", "--host", "127.0.0.1", "--port", str(port),
               "--threads", args.threads, "--log-level", "warning"]
        if args.model:
            cmd += ["--model", args.model]
        cmd += args.server_args.split()
        proc = subprocess.Popen(cmd, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, proc)
        with urllib.request.urlopen(url + "/v1/models", timeout=10) as r:
            model = args.served_model or json.loads(r.read())["data"][0]["id"]
        asyncio.run(_level(url, model, 2, work[: args.warmup], args))
        every: list[dict[str, Any]] = []
        for c in [c for _ in range(args.repeats) for c in levels]:  # levels in turn, --repeats times
            r = asyncio.run(_level(url, model, c, work, args))
            every.append(r)
            print(f"C={c:3d}: {r['requests_per_s']:.2f} req/s  {r['tokens_per_s']:.0f} tok/s  "
                  f"ttft p50 {r['ttft_s']['p50']:.2f}s p99 {r['ttft_s']['p99']:.2f}s  "
                  f"latency p50 {r['latency_s']['p50']:.2f}s p99 {r['latency_s']['p99']:.2f}s  errors {r['errors']}",
                  flush=True)
    finally:
        rc = None
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            try:
                rc = proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                rc = "killed"
    results = []
    for c in levels:
        mine = [r for r in every if r["concurrency"] == c]
        results.append({**_median_run(mine), "requests_per_s_runs": [r["requests_per_s"] for r in mine]})
    engine = None if args.no_engine_baseline or args.url else _engine_baseline(levels, work, args)
    base = results[0]["requests_per_s"]
    for r in results:
        r["ratio_vs_c1"] = r["requests_per_s"] / base
    ref = results[0]
    report = {
        "model": args.model or "bundled", "paths": args.paths, "requests_per_level": args.requests,
        "threads": args.threads, "stream_paths": args.stream_paths, "cpu_count": os.cpu_count(),
        "repeats": args.repeats,
        "same_work_every_level": all(r["completion_tokens"] == ref["completion_tokens"] and r["answers"] == ref["answers"]
                                     for r in every),
        "accuracy": sum(q.check(a) for q, a in zip(problems, ref["answers"])) / len(problems),
        "server_exit_code_after_sigterm": rc,
        "server_args": args.server_args,
        "levels": [{k: v for k, v in r.items() if k != "answers"} for r in results],
        "engine_only_requests_per_s": engine,
    }
    (out / "serve_load.json").write_text(json.dumps(report, indent=2))
    _plot(report, out / "serve_load.png")
    for r in results:
        e = ""
        if engine:
            x, x1 = engine[str(r["concurrency"])], engine[str(levels[0])]
            e = (f"; engine alone {x['requests_per_s']:.2f} req/s (of {' '.join(f'{v:.2f}' for v in x['requests_per_s_runs'])}), "
                 f"{x['requests_per_s'] / x1['requests_per_s']:.2f}x, "
                 f"{x['mean_step_ms']:.1f} ms/step over {x['mean_rows_per_step']:.0f} rows = {x['us_per_row']:.0f} us/row")
        runs = " ".join(f"{x:.2f}" for x in r["requests_per_s_runs"])
        print(f"C={r['concurrency']:3d}: {r['ratio_vs_c1']:.2f}x one-at-a-time (median of {runs} req/s){e}")
    print(f"same work at every level: {report['same_work_every_level']}; accuracy {report['accuracy']:.2f}; "
          f"server exit code after SIGTERM: {rc}; wrote {out / 'serve_load.json'} and .png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
