"""``parathinker serve``: the OpenAI-compatible server (options from ServeConfig, CacheConfig and DecodeConfig)."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import warnings
from typing import Any

from ..cliutil import add_dataclass_args, add_model_args, dataclass_from_args
from ..engine.decode.config import DecodeConfig
from ..engine.kv_cache import CacheConfig
from ..errors import ConfigError, ParaThinkerError
from .config import ServeConfig
from .ray_serve import RayConfig, ReplicaArgs, deploy, require_ray


def register(subparsers: Any) -> None:
    """Add the ``serve`` subcommand to the main CLI's subparsers."""
    p = subparsers.add_parser(
        "serve", help="serve a model over an OpenAI-compatible HTTP API (chat/completions, streaming)",
        description="OpenAI-compatible server for native parallel thinking: the paths are the reasoning, the "
                    "summary is the content. ParaThinker fields (num_paths, termination, mode, ...) go in the "
                    "request body. See docs/serving.md.",
    )
    add_model_args(p)
    add_dataclass_args(p, ServeConfig)
    add_dataclass_args(p, CacheConfig)
    add_dataclass_args(p, DecodeConfig)
    add_dataclass_args(p, RayConfig)
    p.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    config = dataclass_from_args(ServeConfig, args)  # validated before the model loads
    cache = dataclass_from_args(CacheConfig, args)
    decode = dataclass_from_args(DecodeConfig, args)
    ray_config = dataclass_from_args(RayConfig, args)
    dp = config.data_parallel_size
    if dp > 1 and ray_config.wanted:
        raise ConfigError("--data-parallel-size and --replicas/--ray-address do not mix: Ray Serve replicas are "
                          "the data parallelism there (one engine each)")
    if dp > 1 and args.device != "cpu":
        raise ConfigError(f"--data-parallel-size {dp} runs engine processes on the CPU; on GPUs run one server "
                          "per GPU behind a load balancer, or --replicas (docs/scale-out.md)")
    if ray_config.wanted:
        return _serve_on_ray(args, config, cache, decode, ray_config)
    from ..engine.llm import LLM
    from .engine_procs import EngineProcesses
    from .engine_thread import EngineUnavailable
    from .server import serve

    # with engine processes this process's LLM never steps: no fused or packed weight copies, no prefill thread
    mine = decode if dp == 1 else dataclasses.replace(decode, fused_decode=False, packed_weights=False,
                                                      prefill_thread=False)
    llm = LLM(args.model, device=args.device, dtype=args.dtype, cache=cache, decode=mine, threads=args.threads)
    if config.served_model_name is None and args.model is not None:
        config.served_model_name = args.model
    if dp == 1:
        serve(llm, config)
        return 0
    engines = EngineProcesses(llm, dp, decode=decode)
    threads, cores = engines.args.threads, os.cpu_count() or 1
    if dp * threads > cores:
        warnings.warn(f"{dp} engine processes x {threads} torch threads on {cores} cores: they take turns on the "
                      "cores (lower --threads or --data-parallel-size)", stacklevel=1)
    try:
        engines.start()  # each process loads the model before the server listens
    except EngineUnavailable as e:
        raise ParaThinkerError(str(e)) from None
    print(f"parathinker: {dp} engine processes ready (pids {', '.join(str(m.proc.pid) for m in engines.members)})",
          file=sys.stderr, flush=True)
    try:
        serve(engines, config)
    finally:
        engines.stop()
    return 0


def _serve_on_ray(
    args: argparse.Namespace, config: ServeConfig, cache: CacheConfig, decode: DecodeConfig, ray_config: RayConfig
) -> int:
    """``--replicas N`` / ``--ray-address``: the same app in N Ray Serve replicas behind Ray's proxy."""
    from ..engine.llm import resolve_model_path
    from ..errors import CheckpointError

    require_ray()  # before anything starts: one line saying what to install
    path = resolve_model_path(args.model)
    if not (path / "config.json").is_file():
        raise CheckpointError(f"--model {args.model}: no checkpoint at {path} (config.json missing)")
    if config.served_model_name is None and args.model is not None:
        config.served_model_name = args.model
    gpus = ray_config.gpus_per_replica
    if args.device.startswith("cuda") and gpus == 0:
        ray_config.gpus_per_replica = 1.0  # a CUDA replica needs a GPU of its own
    replica = ReplicaArgs(str(path), args.device, args.dtype, args.threads, dataclasses.asdict(cache),
                          dataclasses.asdict(config), dataclasses.asdict(decode))
    deploy(replica, ray_config, config)
    return 0
