"""Prometheus metrics: request counts, token counters, latency histograms, and engine gauges read at
scrape time. One registry per app, so tests and several apps in one process never collide.

Beside them, `Recent` keeps the last minute of token counts and times to first token in small
time-stamped ring buffers, for the live figures of /ossai/stats (tokens per second, recent TTFT)."""

from __future__ import annotations

import statistics
import threading
import time
from collections import deque

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
        self.recent = Recent()

    def render(self) -> bytes:
        return generate_latest(self.registry)


class Recent:
    """Totals since start, and the last minute of generated tokens (counted per 0.1 s bucket) and times
    to first token, time-stamped with `time.monotonic()`. Thread-safe; every call is O(1) but the reads,
    which walk at most a minute of entries."""

    BUCKET_S = 0.1
    TOKENS_WINDOW_S = 5.0
    TTFT_WINDOW_S = 60.0

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tokens: deque[list[int]] = deque(maxlen=int(self.TTFT_WINDOW_S / self.BUCKET_S))
        self._ttfts: deque[tuple[float, float]] = deque(maxlen=4096)
        self.requests = 0  # completed generation requests
        self.prompt_tokens = 0
        self.generated_tokens = 0

    def token(self, count: int = 1) -> None:
        bucket = int(time.monotonic() / self.BUCKET_S)
        with self._lock:
            if self._tokens and self._tokens[-1][0] == bucket:
                self._tokens[-1][1] += count
            else:
                self._tokens.append([bucket, count])

    def ttft(self, seconds: float) -> None:
        with self._lock:
            self._ttfts.append((time.monotonic(), seconds))

    def done(self, prompt_tokens: int, completion_tokens: int, request_finished: bool) -> None:
        with self._lock:
            self.prompt_tokens += prompt_tokens
            self.generated_tokens += completion_tokens
            self.requests += request_finished

    def tokens_per_s(self) -> float:
        """Generated tokens per second over the last `TOKENS_WINDOW_S` seconds."""
        since = int((time.monotonic() - self.TOKENS_WINDOW_S) / self.BUCKET_S)
        with self._lock:
            count = sum(n for bucket, n in self._tokens if bucket >= since)
        return count / self.TOKENS_WINDOW_S

    def ttft_window(self) -> list[float]:
        """The times to first token (seconds) of the last `TTFT_WINDOW_S` seconds, oldest first."""
        since = time.monotonic() - self.TTFT_WINDOW_S
        with self._lock:
            return [seconds for at, seconds in self._ttfts if at >= since]

    def ttft_summary(self) -> dict[str, float | int | None]:
        window = self.ttft_window()
        if not window:
            return {"last_ms": None, "p50_ms": None, "count": 0}
        return {
            "last_ms": round(window[-1] * 1000, 1),
            "p50_ms": round(statistics.median(window) * 1000, 1),
            "count": len(window),
        }


class RequestTimer:
    """Feeds one generation's token timings into the histograms (and the recent figures). One timer may
    see several generations (the agent loop's steps): the first token of the first one is the request's
    time to first token, and the request counts as completed once."""

    def __init__(self, metrics: Metrics):
        self.metrics = metrics
        self.started = time.perf_counter()
        self.last: float | None = None
        self.finished = False

    def token(self) -> None:
        now = time.perf_counter()
        if self.last is None:
            self.metrics.ttft.observe(now - self.started)
            self.metrics.recent.ttft(now - self.started)
        else:
            self.metrics.itl.observe(now - self.last)
        self.metrics.recent.token()
        self.last = now

    def done(self, prompt_tokens: int, completion_tokens: int) -> None:
        self.metrics.e2e.observe(time.perf_counter() - self.started)
        self.metrics.prompt_tokens.inc(prompt_tokens)
        self.metrics.generated_tokens.inc(completion_tokens)
        self.metrics.recent.done(prompt_tokens, completion_tokens, not self.finished)
        self.finished = True
