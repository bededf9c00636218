"""Prometheus metrics: request counts, token counters, latency histograms, and engine gauges read at
scrape time. One registry per app, so tests and several apps in one process never collide."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

from ossai.server.pool import ModelPool

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
ITL_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class _EngineCollector:
    """Engine gauges per loaded model, read at scrape time."""

    def __init__(self, pool: ModelPool):
        self.pool = pool

    def collect(self):
        loaded = self.pool.engines()
        yield GaugeMetricFamily("ossai_models_loaded", "Models loaded in memory", value=len(loaded))
        info = GaugeMetricFamily("ossai_model_info", "A loaded model", labels=["model"])
        families = [
            ("ossai_requests_running", "Requests being generated", lambda s: s.running),
            ("ossai_requests_waiting", "Requests queued", lambda s: s.waiting),
            ("ossai_kv_cache_usage_ratio", "Fraction of KV-cache blocks in use", lambda s: s.kv_usage),
            (
                "ossai_prefix_cache_hit_ratio",
                "Prompt tokens served from the prefix cache / prompt tokens",
                lambda s: s.prefix_hit_rate,
            ),
            ("ossai_preemptions", "Requests preempted for lack of KV cache", lambda s: s.preemptions),
        ]
        gauges = [(GaugeMetricFamily(n, h, labels=["model"]), read) for n, h, read in families]
        for name, engine in loaded:
            stats = engine.stats()
            info.add_metric([name], 1)
            for gauge, read in gauges:
                gauge.add_metric([name], read(stats))
        yield info
        for gauge, _ in gauges:
            yield gauge


class Metrics:
    def __init__(self, pool: ModelPool):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("ossai_http_requests", "HTTP requests", ["endpoint", "status"], registry=r)
        self.prompt_tokens = Counter("ossai_prompt_tokens", "Prompt tokens processed", registry=r)
        self.generated_tokens = Counter("ossai_generation_tokens", "Tokens generated", registry=r)
        self.ttft = Histogram(
            "ossai_time_to_first_token_seconds", "Time to first token", buckets=LATENCY_BUCKETS, registry=r
        )
        self.itl = Histogram(
            "ossai_inter_token_latency_seconds", "Time between tokens", buckets=ITL_BUCKETS, registry=r
        )
        self.e2e = Histogram(
            "ossai_request_latency_seconds", "End-to-end request latency", buckets=LATENCY_BUCKETS, registry=r
        )
        r.register(_EngineCollector(pool))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class RequestTimer:
    """Feeds one generation's token timings into the histograms."""

    def __init__(self, metrics: Metrics):
        self.metrics = metrics
        self.started = time.perf_counter()
        self.last: float | None = None

    def token(self) -> None:
        now = time.perf_counter()
        if self.last is None:
            self.metrics.ttft.observe(now - self.started)
        else:
            self.metrics.itl.observe(now - self.last)
        self.last = now

    def done(self, prompt_tokens: int, completion_tokens: int) -> None:
        self.metrics.e2e.observe(time.perf_counter() - self.started)
        self.metrics.prompt_tokens.inc(prompt_tokens)
        self.metrics.generated_tokens.inc(completion_tokens)
