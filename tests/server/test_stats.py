"""/ossai/stats and /ossai/stats/stream on a real server over the tiny checkpoint: the JSON of
docs/web-client.md, figures that move after a real generation, and the server-sent event stream."""

from __future__ import annotations

import json
import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.server.conftest import MODEL

KEYS = {"time", "uptime_s", "version", "cpu", "memory", "gpus", "models", "requests", "tokens", "ttft",
        "kv_usage"}  # fmt: skip
MODEL_KEYS = {"name", "device", "memory_bytes", "context_length", "expires_at", "running", "waiting",
              "kv_usage", "prefix_hit_rate"}  # fmt: skip


def _stats(served) -> dict:
    r = httpx.get(served.url + "/ossai/stats", timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def test_the_json_shape(served):
    stats = _stats(served)
    assert set(stats) == KEYS
    assert abs(stats["time"] - time.time()) < 60 and stats["uptime_s"] >= 0
    assert stats["version"] == httpx.get(served.url + "/health").json()["version"]
    cpu = stats["cpu"]
    assert set(cpu) == {"percent", "per_core", "cores", "threads"}
    assert 0 <= cpu["percent"] <= 100 and len(cpu["per_core"]) == cpu["threads"] >= cpu["cores"] >= 1
    memory = stats["memory"]
    assert set(memory) == {"total", "used", "process_rss"}
    assert 0 < memory["used"] <= memory["total"] and 0 < memory["process_rss"] < memory["total"]
    assert isinstance(stats["gpus"], list)  # empty without a GPU
    for gpu in stats["gpus"]:
        assert set(gpu) == {"index", "name", "utilization", "memory_used", "memory_total"}
    (model,) = stats["models"]
    assert set(model) == MODEL_KEYS
    assert model["name"] == MODEL and model["device"] == "cpu" and model["memory_bytes"] > 0
    assert model["context_length"] > 0 and model["expires_at"] is None  # pinned: never unloaded
    assert set(stats["requests"]) == {"running", "waiting", "total"}
    assert set(stats["tokens"]) == {"generated_total", "prompt_total", "tokens_per_s"}
    assert set(stats["ttft"]) == {"last_ms", "p50_ms", "count"}
    assert 0 <= stats["kv_usage"] <= 1


def test_figures_move_after_a_chat_completion(served):
    served.wait_idle()
    before = _stats(served)
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 6}
    r = httpx.post(served.v1 + "/chat/completions", json=body, timeout=60)
    assert r.status_code == 200, r.text
    usage = r.json()["usage"]
    after = _stats(served)
    tokens = after["tokens"]
    assert tokens["generated_total"] - before["tokens"]["generated_total"] == usage["completion_tokens"]
    assert tokens["prompt_total"] - before["tokens"]["prompt_total"] == usage["prompt_tokens"]
    assert tokens["tokens_per_s"] > 0  # the tokens of the last five seconds
    assert after["requests"]["total"] == before["requests"]["total"] + 1
    assert after["ttft"]["count"] == before["ttft"]["count"] + 1
    assert after["ttft"]["last_ms"] > 0 and after["ttft"]["p50_ms"] > 0
    assert after["requests"]["running"] == 0 and after["requests"]["waiting"] == 0


def test_the_stream_sends_events_until_the_client_goes(served):
    events = []
    with httpx.stream("GET", served.url + "/ossai/stats/stream", params={"interval": 0.25}, timeout=30) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line.removeprefix("data: ")))
            if len(events) == 3:
                break
    assert all(set(e) == KEYS for e in events)
    assert events[0]["time"] < events[1]["time"] < events[2]["time"]
    assert 0.2 < events[2]["time"] - events[0]["time"] < 5

    # the response ends when the client goes: /metrics counts a request only once it has ended
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        families = text_string_to_metric_families(httpx.get(served.url + "/metrics").text)
        samples = [s for f in families for s in f.samples if s.name == "ossai_http_requests_total"]
        ended = [s for s in samples if s.labels["endpoint"] == "/ossai/stats/stream"]
        if ended:
            break
        time.sleep(0.1)
    assert ended


@pytest.mark.parametrize("interval", ["0.1", "11", "0", "-1", "fast"])
def test_the_interval_is_checked(served, interval):
    r = httpx.get(served.url + "/ossai/stats/stream", params={"interval": interval}, timeout=10)
    assert r.status_code == 400 and r.json()["error"]["param"] == "interval"
