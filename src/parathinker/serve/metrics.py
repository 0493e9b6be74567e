"""Prometheus metrics of one server, named like vLLM's (``vllm:x`` -> ``parathinker:x``).

Gauges read the engine when scraped (running / waiting requests, KV pages); counters and
histograms are updated by the app as requests finish. Each app has its own registry, so
several servers in one process (tests) do not collide.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 320.0, 640.0)


def kv_usage(engine: Any) -> float:
    """``kv_cache_usage_perc``: pages in use over the pages requests may have (``Engine.kv_pages_capacity``)."""
    return engine.kv_pages_used / max(int(engine.kv_pages_capacity), 1)


class _EngineGauges(Collector):
    def __init__(self, engine: Any, model_name: str):
        self.engine = engine
        self.model_name = model_name

    def collect(self) -> Iterator[GaugeMetricFamily]:
        e, labels = self.engine, [self.model_name]

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            g = GaugeMetricFamily(f"parathinker:{name}", doc, labels=["model_name"])
            g.add_metric(labels, value)
            return g

        yield gauge("num_requests_running", "Requests admitted to the engine (prefilling, thinking or summarizing).",
                    e.num_running)
        yield gauge("num_requests_waiting", "Requests queued for KV pages.", e.num_waiting)
        yield gauge("kv_cache_usage_perc", "Fraction of the KV pages requests may have in use (1 = new requests "
                    "wait for pages; a growable pool counts what it may grow to).", kv_usage(e))
        yield gauge("kv_cache_pages_used", "KV pages in use.", e.kv_pages_used)
        yield gauge("kv_cache_pages_total", "KV pages in the pool now.", e.kv_pages_total)


class ServerMetrics:
    """The server's metrics; ``render()`` is the ``/metrics`` body."""

    def __init__(self, engine: Any, model_name: str):
        self.registry = CollectorRegistry()
        self.registry.register(_EngineGauges(engine, model_name))
        lab = ["model_name"]
        self.model_name = model_name
        r = self.registry
        self.prompt_tokens = Counter("parathinker:prompt_tokens", "Prompt tokens prefilled.", lab, registry=r)
        self.generation_tokens = Counter(
            "parathinker:generation_tokens", "Generated tokens: every path plus the summary.", lab, registry=r)
        self.reasoning_tokens = Counter(
            "parathinker:reasoning_tokens", "Generated path tokens (the reasoning part).", lab, registry=r)
        self.request_success = Counter(
            "parathinker:request_success", "Engine requests finished, by finish reason.",
            [*lab, "finished_reason"], registry=r)
        self.request_aborted = Counter(
            "parathinker:request_aborted", "Engine requests aborted (client gone, stop string, shutdown).",
            lab, registry=r)
        self.http_errors = Counter(
            "parathinker:http_errors", "Error responses, by HTTP status.", [*lab, "status"], registry=r)
        self.ttft = Histogram(
            "parathinker:time_to_first_token_seconds", "Seconds from arrival to the first generated token (any path).",
            lab, buckets=LATENCY_BUCKETS, registry=r)
        self.ttfc = Histogram(
            "parathinker:time_to_first_content_token_seconds",
            "Seconds from arrival to the first token of the answer (the summary).", lab, buckets=LATENCY_BUCKETS,
            registry=r)
        self.e2e = Histogram(
            "parathinker:e2e_request_latency_seconds", "Seconds from arrival to the request's end.", lab,
            buckets=LATENCY_BUCKETS, registry=r)

        for m in (self.prompt_tokens, self.generation_tokens, self.reasoning_tokens, self.request_aborted,
                  self.ttft, self.ttfc, self.e2e):
            m.labels(model_name)  # present (at 0) from the start, as scrapers expect

    def render(self) -> bytes:
        return generate_latest(self.registry)
