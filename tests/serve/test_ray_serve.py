"""Replicas on Ray Serve: a local Ray, 2 CPU replicas of the bundled model, 40 concurrent requests."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from helpers import free_port

from parathinker.errors import ConfigError
from parathinker.serve.config import BUNDLED_MODEL_NAME, ServeConfig
from parathinker.serve.ray_serve import REPLICA_HEADER, RayConfig, ReplicaArgs, app_builder, require_ray

PROBLEM = ("graph : 19 > 72 , 73 > 48 , 77 > 49 , 96 > 98 , 52 > 73 , 52 > 77 , 19 > 26 , 62 > 96 , 77 > 62 , "
           "35 > 45 , 93 > 10 , 48 > 57 , 49 > 51 , 48 > 93 , 52 > 35 , 45 > 19 ; find path 52 to 57")


def test_ray_config_is_checked() -> None:
    with pytest.raises(ConfigError, match="replicas must be >= 1"):
        RayConfig(replicas=0)
    assert RayConfig(replicas=2).wanted and RayConfig(ray_address="auto").wanted and not RayConfig().wanted
    with pytest.raises(ConfigError, match="unknown app_builder args"):
        app_builder({"modle": "x"})


def test_without_ray_replicas_say_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from parathinker.cli import main

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray fails, as where it is not installed
    with pytest.raises(ConfigError, match=r"pip install 'parathinker\[ray\]'"):
        require_ray()
    assert main(["serve", "--replicas", "2"]) == 2


def test_config_file_builds_the_application() -> None:
    pytest.importorskip("ray", reason="needs Ray: pip install 'parathinker[ray]'")
    import yaml
    from ray.serve import Application

    cfg = yaml.safe_load((Path(__file__).parents[2] / "configs" / "ray-serve.yaml").read_text())
    app = cfg["applications"][0]
    assert app["import_path"] == "parathinker.serve.ray_serve:app_builder"
    assert isinstance(app_builder(app["args"]), Application)


def test_a_replica_builds_its_engine_from_the_args() -> None:
    """Cache and decode settings reach each replica's LLM (built here outside Ray, as Ray would build it)."""
    pytest.importorskip("ray", reason="needs Ray: pip install 'parathinker[ray]'")
    from dataclasses import asdict

    from parathinker.serve.ray_serve import ParaThinkerReplica

    args = ReplicaArgs(threads="1", cache={"num_pages": 64}, decode={"attention": "reference", "fused_decode": False},
                       serve={"served_model_name": "m"})
    replica = ParaThinkerReplica(asdict(args))
    assert replica.llm.engine.kv_pages_total == 64 - 1  # one page is the padding rows' null page
    assert replica.llm.engine.runner.decoder.name == "reference" and not replica.llm.engine.runner.decoder.fused
    assert replica.config.served_model_name == "m"


@pytest.mark.slow
def test_two_replicas_share_40_concurrent_requests() -> None:
    ray = pytest.importorskip("ray", reason="needs Ray: pip install 'parathinker[ray]'")
    import openai
    from ray import serve

    from parathinker.serve.ray_serve import deploy

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        port = free_port()
        url = deploy(ReplicaArgs(threads="1", cache={"num_pages": 256}), RayConfig(replicas=2, cpus_per_replica=0.5),
                     ServeConfig(port=port), block=False)
        client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=120)

        def ask(seed: int) -> tuple[str, str | None]:
            raw = client.chat.completions.with_raw_response.create(
                model=BUNDLED_MODEL_NAME, messages=[{"role": "user", "content": PROBLEM}], seed=seed,
                extra_body={"num_paths": 8, "max_path_tokens": 128, "summary_max_tokens": 48})
            out = raw.parse()
            return raw.headers[REPLICA_HEADER], out.choices[0].message.content

        with ThreadPoolExecutor(40) as pool:
            results = list(pool.map(ask, range(40)))
        replicas = [r for r, _ in results]
        assert len(results) == 40 and len(set(replicas)) == 2, replicas  # both replicas served some
        right = sum("52 73 48 57" in (text or "") for _, text in results)
        assert right >= 30, right  # the bundled model solves this one nearly always at P=8
    finally:
        serve.shutdown()
        ray.shutdown()


@pytest.mark.parametrize(("cpus", "on"), [(None, True), (1.0, False), (2.0, True)])
def test_a_replica_keeps_the_prefill_thread_only_with_a_reserved_core_for_it(monkeypatch, cpus, on) -> None:  # noqa: ANN001
    """Replicas side by side on one machine each see all its cores: the CPUs Ray reserved decide."""
    pytest.importorskip("ray", reason="needs Ray: pip install 'parathinker[ray]'")
    from dataclasses import asdict

    from parathinker.engine import engine as engine_mod
    from parathinker.serve import ray_serve

    monkeypatch.setattr(engine_mod.os, "cpu_count", lambda: 4)  # a machine with cores to spare
    monkeypatch.setattr(ray_serve, "assigned_cpus", lambda: cpus)
    replica = ray_serve.ParaThinkerReplica(asdict(ReplicaArgs(threads="1", cache={"num_pages": 64})))
    assert replica.llm.engine.prefill_thread is on
