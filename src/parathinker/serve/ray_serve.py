"""Replicas on Ray Serve: the same app and engine thread in every replica, one endpoint in front.

Each replica loads the model, runs its own ``EngineThread`` and serves ``build_app``'s FastAPI
app (Ray's ``serve.ingress`` with the app built at replica start, ``__serve_build_asgi_app__``).
A request's P paths share one KV cache, so the unit Ray spreads is the whole HTTP request.
Ray's proxy is the one endpoint; each response names its replica (``x-parathinker-replica``);
Ray health-checks every replica through ``check_health`` (the engine thread alive and stepping)
and replaces one that fails. Each replica also publishes its engine gauges and token counts as
Ray metrics (``ray.util.metrics``, labelled with the replica by Ray), so the cluster's metrics
export carries the whole deployment.

Two ways to deploy: ``parathinker serve --replicas N [--ray-address ...]`` (``deploy``), or Ray's
own ``serve run`` / ``serve deploy`` with a config file naming ``app_builder`` (``configs/ray-serve.yaml``),
where Ray's settings (``num_replicas``, ``autoscaling_config``, ...) apply as for any deployment.
"""

from __future__ import annotations

import signal
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import ConfigError
from .config import ServeConfig

REPLICA_HEADER = "x-parathinker-replica"
INSTALL = "pip install 'parathinker[ray]'"


@dataclass
class RayConfig:
    """Replicas on Ray Serve (``--replicas`` > 1 or a ``--ray-address`` deploys there)."""

    replicas: int = field(default=1, metadata={"help": "engine replicas behind one endpoint (> 1: Ray Serve)"})
    ray_address: str | None = field(
        default=None,
        metadata={"help": "Ray cluster to join: auto (a running `ray start`), ray://HOST:10001; "
                  "default: a local Ray started for this server"},
    )
    gpus_per_replica: float = field(default=0.0, metadata={"help": "GPUs per replica (Ray's num_gpus; 1 with --device cuda)"})
    cpus_per_replica: float = field(default=1.0, metadata={"help": "CPUs reserved per replica (Ray's num_cpus)"})

    def __post_init__(self) -> None:
        if self.replicas < 1:
            raise ConfigError(f"replicas must be >= 1, got {self.replicas}")
        if self.gpus_per_replica < 0 or self.cpus_per_replica < 0:
            raise ConfigError("gpus_per_replica and cpus_per_replica must be >= 0")

    @property
    def wanted(self) -> bool:
        return self.replicas > 1 or self.ray_address is not None


def require_ray() -> Any:
    """``ray.serve``, or a one-line error saying what to install."""
    try:
        from ray import serve
    except ImportError:
        raise ConfigError(f"replicas on Ray Serve need Ray: {INSTALL}") from None
    return serve


@dataclass
class ReplicaArgs:
    """Everything a replica needs to build its ``LLM`` and app (plain data: Ray ships it to the replicas)."""

    model: str | None = None
    device: str = "cpu"
    dtype: str = "auto"
    threads: str | None = "auto"
    cache: dict[str, Any] = field(default_factory=dict)  # CacheConfig fields
    serve: dict[str, Any] = field(default_factory=dict)  # ServeConfig fields
    decode: dict[str, Any] = field(default_factory=dict)  # DecodeConfig fields


def assigned_cpus() -> float | None:
    """The CPUs Ray reserved for this actor (None outside Ray)."""
    try:
        import ray

        if not ray.is_initialized():
            return None
        return float(ray.get_runtime_context().get_assigned_resources().get("CPU", 0.0))
    except Exception:  # noqa: BLE001 - no Ray, or not inside a task or actor
        return None


class ParaThinkerReplica:
    """One replica: an ``LLM``, its engine thread and the OpenAI-compatible app (Ray builds the class)."""

    def __init__(self, args: dict[str, Any]):
        from ray import serve

        from ..engine.engine import spare_core
        from ..engine.llm import LLM

        a = ReplicaArgs(**args)
        self.llm = LLM.from_settings(a.model, a.device, a.dtype, a.threads, a.cache, a.decode)
        cpus = assigned_cpus()
        if cpus is not None and not spare_core(cpus):
            # the prefill thread needs a core beyond torch's threads: count the CPUs Ray reserved for this
            # replica, not the machine's (replicas side by side would otherwise each take a second core)
            self.llm.engine.prefill_thread = False
        self.config = ServeConfig(**a.serve)
        try:
            self.replica = serve.get_replica_context().replica_id.unique_id
        except Exception:  # built outside a replica (tests)
            self.replica = "local"
        self.asgi: Any = None
        self._publisher: threading.Thread | None = None

    def __serve_build_asgi_app__(self) -> Any:
        from .app import build_app

        app = build_app(self.llm, self.config)
        replica = self.replica

        @app.middleware("http")
        async def name_the_replica(request: Any, call_next: Any) -> Any:
            response = await call_next(request)
            response.headers[REPLICA_HEADER] = replica
            return response

        self.asgi = app
        self._publisher = threading.Thread(target=self._publish, name="parathinker-ray-metrics", daemon=True)
        self._publisher.start()
        return app

    def check_health(self) -> None:
        """Ray's periodic health check: a replica whose engine thread died or hung is replaced."""
        server = getattr(getattr(self.asgi, "state", None), "server", None)
        if server is not None and not server.thread.healthy and not server.draining:
            raise RuntimeError(f"engine thread unhealthy: {server.thread.error or 'no step for too long'}")

    def _publish(self, every_s: float = 2.0) -> None:
        """Mirror the engine's gauges and the token counters into Ray's metrics (per replica)."""
        from ray.util import metrics

        from .metrics import kv_usage

        names = ("num_requests_running", "num_requests_waiting", "kv_cache_usage_perc")
        gauges = {n: metrics.Gauge(f"parathinker_{n}", description=f"parathinker:{n} of this replica") for n in names}
        counters = {n: metrics.Gauge(f"parathinker_{n}_total", description=f"parathinker:{n} of this replica")
                    for n in ("prompt_tokens", "generation_tokens")}
        while True:
            server = self.asgi.state.server
            e = server.thread.engine
            values = {"num_requests_running": e.num_running, "num_requests_waiting": e.num_waiting,
                      "kv_cache_usage_perc": kv_usage(e)}
            for n, g in gauges.items():
                g.set(values[n])
            m = server.metrics
            for n, g in counters.items():
                g.set(m.registry.get_sample_value(f"parathinker:{n}_total", {"model_name": m.model_name}) or 0.0)
            time.sleep(every_s)


def build_application(args: ReplicaArgs, ray_config: RayConfig) -> Any:
    """The Ray Serve application: ``ray_config.replicas`` replicas of ``ParaThinkerReplica``."""
    serve = require_ray()
    actor = {"num_cpus": ray_config.cpus_per_replica, "num_gpus": ray_config.gpus_per_replica}
    cls = serve.ingress()(ParaThinkerReplica)
    deployment = serve.deployment(
        cls, name="parathinker", num_replicas=ray_config.replicas, ray_actor_options=actor,
        max_ongoing_requests=10_000,  # the engine queues and batches; Ray should not hold requests back
        health_check_period_s=5, health_check_timeout_s=60,
    )
    return deployment.bind(asdict(args))


def app_builder(args: dict[str, Any]) -> Any:
    """For Ray's ``serve run`` / config files: ``import_path: parathinker.serve.ray_serve:app_builder``.

    ``args``: ReplicaArgs fields (model, device, dtype, threads, cache, serve, decode) and RayConfig's
    (replicas, gpus_per_replica, cpus_per_replica); a config file's ``deployments`` section
    overrides the deployment's options (num_replicas, autoscaling_config, ...).
    """
    args = dict(args or {})
    ray_fields = {k: args.pop(k) for k in ("replicas", "gpus_per_replica", "cpus_per_replica") if k in args}
    unknown = set(args) - set(ReplicaArgs.__dataclass_fields__)
    if unknown:
        raise ConfigError(f"unknown app_builder args {sorted(unknown)}: use {sorted(ReplicaArgs.__dataclass_fields__)}")
    return build_application(ReplicaArgs(**args), RayConfig(**ray_fields))


def deploy(args: ReplicaArgs, ray_config: RayConfig, config: ServeConfig, *, block: bool = True) -> str:
    """Start (or join) Ray, start Serve's proxy on ``config.host:port`` and deploy; return the URL.

    ``block``: serve until Ctrl-C / SIGTERM, then shut the application down.
    """
    serve = require_ray()
    import ray

    if not ray.is_initialized():
        kw: dict[str, Any] = {"log_to_driver": False, "include_dashboard": False}
        if ray_config.ray_address is not None:
            kw["address"] = ray_config.ray_address
        ray.init(**kw)
    serve.start(http_options={"host": config.host, "port": config.port})
    serve.run(build_application(args, ray_config), name="parathinker", route_prefix="/")
    url = f"http://{config.host}:{config.port}"
    if not block:
        return url
    print(f"parathinker: {ray_config.replicas} replica(s) on Ray Serve at {url} (Ctrl-C stops)", flush=True)
    signal.signal(signal.SIGTERM, lambda signum, frame: _interrupt())
    try:
        while True:
            time.sleep(1.0)
    except KeyboardInterrupt:
        pass
    finally:
        serve.delete("parathinker")
        serve.shutdown()
    return url


def _interrupt() -> None:
    raise KeyboardInterrupt


def _interrupt() -> None:
    raise KeyboardInterrupt
