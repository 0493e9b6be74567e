"""Replicas on Ray Serve: throughput with 1 and with N replicas of the same model, side by side.

For each replica count, spawns `parathinker serve --replicas N --ray-address local` (a fresh local
Ray; one replica still goes through Ray Serve, so the comparison isolates the replica count),
waits for /health, sends the same requests (serve_load's work: pathfind problems, fixed seeds,
num_paths 8) from C concurrent streaming clients, and prints each count's throughput and its ratio
to one replica. Writes serve_replicas.json.

    python benchmarks/serve_replicas.py --replicas 1,2 --concurrency 32 --out runs/serve_replicas

On a 2-core machine two replicas share the same two cores that one replica's engine thread and
Ray's proxy already use, so expect little gain there; the ratio is what a machine with a core (or
GPU) per replica measures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from serve_load import _free_port, _level, _wait_healthy  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--replicas", default="1,2", help="comma list of replica counts")
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--paths", type=int, default=8)
    ap.add_argument("--threads", default="1", help="--threads of each replica")
    ap.add_argument("--cpus-per-replica", default="1", help="Ray CPUs reserved per replica")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--warmup", type=int, default=4)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    args.api_key, args.stream_paths = "none", False
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    from parathinker.eval.benchmarks import pathfind_default

    problems = pathfind_default(1000)[-args.requests:]
    work = [(q.problem, args.seed + i) for i, q in enumerate(problems)]
    rows = []
    for n in [int(x) for x in args.replicas.split(",")]:
        port = _free_port()
        cmd = [sys.executable, "-m", "parathinker", "serve", "--replicas", str(n), "--ray-address", "local",
               "--cpus-per-replica", args.cpus_per_replica, "--host", "127.0.0.1", "--port", str(port),
               "--threads", args.threads]
        proc = subprocess.Popen(cmd, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        url = f"http://127.0.0.1:{port}"
        try:
            _wait_healthy(url, proc, timeout=300)
            with urllib.request.urlopen(url + "/v1/models", timeout=10) as r:
                model = json.loads(r.read())["data"][0]["id"]
            asyncio.run(_level(url, model, 2, work[: args.warmup], args))
            r = asyncio.run(_level(url, model, args.concurrency, work, args))
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(90)
            except subprocess.TimeoutExpired:
                proc.kill()
        r["replicas"] = n
        rows.append(r)
        print(f"replicas={n}: {r['requests_per_s']:.2f} req/s  {r['tokens_per_s']:.0f} tok/s  "
              f"latency p50 {r['latency_s']['p50']:.2f}s  errors {r['errors']}", flush=True)
    base = rows[0]["requests_per_s"]
    for r in rows:
        r["ratio_vs_first"] = r["requests_per_s"] / base
        print(f"replicas={r['replicas']}: {r['ratio_vs_first']:.2f}x replicas={rows[0]['replicas']}")
    same = all(r["answers"] == rows[0]["answers"] for r in rows)
    report = {"concurrency": args.concurrency, "requests": args.requests, "paths": args.paths,
              "cpu_count": os.cpu_count(), "same_answers": same,
              "rows": [{k: v for k, v in r.items() if k != "answers"} for r in rows]}
    (out / "serve_replicas.json").write_text(json.dumps(report, indent=2))
    print(f"same answers at every replica count: {same}; wrote {out / 'serve_replicas.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
