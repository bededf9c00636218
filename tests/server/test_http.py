"""Raw HTTP: bad input never gives a 5xx, auth, metrics, client disconnects, SIGTERM, and a schemathesis
run over the server's own OpenAPI schema."""

from __future__ import annotations

import json
import signal

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from ossai.config import EngineConfig
from ossai.testing.scripted import ScriptedEngine
from tests.server.conftest import MODEL, spawn_server, start_server

CHAT = "/v1/chat/completions"
HELLO = [{"role": "user", "content": "hi"}]


def _assert_error(response: httpx.Response, status: int, *words: str) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) >= {"message", "type", "param", "code"}
    for word in words:
        assert word in error["message"], error
    return error


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        ({"model": MODEL}, 400, ["messages"]),
        ({"model": MODEL, "messages": "hi"}, 400, ["messages"]),
        ({"model": MODEL, "messages": HELLO, "temperature": "hot"}, 400, ["temperature"]),
        ({"model": MODEL, "messages": HELLO, "max_tokens": -5}, 400, ["max_tokens"]),
        ({"model": MODEL, "messages": HELLO, "max_tokens": 10**9}, 400, ["context"]),
        ({"model": MODEL, "messages": HELLO, "n": 2}, 400, ["n"]),
        ({"model": MODEL, "messages": []}, 400, ["messages"]),
        ({"model": MODEL, "messages": [{"role": "bot", "content": "x"}]}, 400, ["role"]),
        ({"model": MODEL, "messages": [{"role": "user"}]}, 400, []),
        ({"model": MODEL, "messages": HELLO, "reasoning_effort": "max"}, 400, ["reasoning_effort"]),
        (
            {
                "model": MODEL,
                "messages": HELLO,
                "tool_choice": {"type": "function", "function": {"name": "x"}},
            },
            400,
            ["x"],
        ),
        ({"model": "gpt-5", "messages": HELLO}, 404, ["gpt-5"]),
        ({"model": MODEL, "messages": [{"role": "user", "content": "word " * 140_000}]}, 400, ["context"]),
    ],
)
def test_bad_chat_requests(served, body, status, words):
    _assert_error(httpx.post(served.url + CHAT, json=body, timeout=30), status, *words)


def test_malformed_bodies(served):
    url = served.url + CHAT
    _assert_error(
        httpx.post(url, content=b"{not json", headers={"content-type": "application/json"}), 400, "JSON"
    )
    _assert_error(
        httpx.post(url, content=b'{"model": "\xff\xfe"}', headers={"content-type": "application/json"}), 400
    )
    _assert_error(httpx.post(url, content=b"[1, 2]", headers={"content-type": "application/json"}), 400)
    _assert_error(
        httpx.post(served.url + "/v1/completions", json={"model": MODEL, "prompt": [10**9]}), 400, "token"
    )
    _assert_error(httpx.get(served.url + "/v1/nothing"), 404)
    _assert_error(httpx.get(served.url + CHAT), 405)


def test_body_limit(tiny, tmp_path):
    handle = start_server(tiny, tmp_path, max_body_bytes=1000)
    try:
        big = {"model": MODEL, "messages": [{"role": "user", "content": "x" * 5000}]}
        _assert_error(httpx.post(handle.url + CHAT, json=big), 413)

        def chunks():  # no content-length: the limit applies while streaming the body in
            yield b'{"model": "' + b"x" * 3000 + b'"}'

        _assert_error(
            httpx.post(handle.url + CHAT, content=chunks(), headers={"content-type": "application/json"}), 413
        )
    finally:
        handle.stop()


def test_api_key(tiny, tmp_path):
    handle = start_server(tiny, tmp_path, api_keys=("sekret",))
    try:
        assert httpx.get(handle.url + "/health").status_code == 200
        for path in ("/v1/models", "/metrics"):
            _assert_error(httpx.get(handle.url + path), 401, "API key")
            _assert_error(httpx.get(handle.url + path, headers={"Authorization": "Bearer wrong"}), 401)
        ollama = httpx.get(handle.url + "/api/tags")  # Ollama's error shape on its routes
        assert ollama.status_code == 401 and "API key" in ollama.json()["error"]
        ok = httpx.get(handle.url + "/v1/models", headers={"Authorization": "Bearer sekret"})
        assert ok.status_code == 200 and ok.json()["data"][0]["id"] == MODEL
    finally:
        handle.stop()


def test_metrics_after_traffic(served):
    served.engine.script("<|channel|>final<|message|>Hello there.<|return|>")
    r = httpx.post(served.url + CHAT, json={"model": MODEL, "messages": HELLO}, timeout=30)
    assert r.status_code == 200
    httpx.post(served.url + CHAT, json={"model": "nope", "messages": HELLO})
    text = httpx.get(served.url + "/metrics").text
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples.setdefault(s.name, []).append(s)
    ok = [s for s in samples["ossai_http_requests_total"] if s.labels == {"endpoint": CHAT, "status": "200"}]
    missing = [
        s for s in samples["ossai_http_requests_total"] if s.labels == {"endpoint": CHAT, "status": "404"}
    ]
    assert ok[0].value >= 1 and missing[0].value >= 1
    assert samples["ossai_prompt_tokens_total"][0].value > 0
    assert samples["ossai_generation_tokens_total"][0].value > 0
    assert samples["ossai_time_to_first_token_seconds_count"][0].value >= 1
    assert samples["ossai_inter_token_latency_seconds_count"][0].value >= 1
    assert samples["ossai_request_latency_seconds_count"][0].value >= 1
    for gauge in ("ossai_requests_running", "ossai_requests_waiting", "ossai_kv_cache_usage_ratio",
                  "ossai_prefix_cache_hit_ratio"):  # fmt: skip
        assert gauge in samples


def _blocks_all_free(served) -> bool:
    b = served.engine.runner.blocks
    return b.full.num_free == b.full.num_blocks and b.sliding.num_free == b.sliding.num_blocks


def test_stream_disconnect_frees_kv(served):
    body = {"model": MODEL, "messages": HELLO, "max_tokens": 3000, "temperature": 1.0, "stream": True}
    with httpx.stream("POST", served.url + CHAT, json=body, timeout=30) as response:
        lines = response.iter_lines()
        for _ in range(5):
            next(lines)
        assert served.engine.stats().running == 1
    served.wait_idle()
    assert _blocks_all_free(served)


def test_non_stream_disconnect_frees_kv(served):
    body = {"model": MODEL, "messages": HELLO, "max_tokens": 3000, "temperature": 1.0}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(served.url + CHAT, json=body, timeout=1.0)
    served.wait_idle(timeout=5)  # far sooner than 3000 tokens would take
    assert _blocks_all_free(served)


def test_sigterm_drains_and_exits_zero(tiny, tmp_path):
    args = [str(tiny), "--name", MODEL, "--kv-cache-mb", "32", "--grace-period", "10"]
    proc, url = spawn_server(args, tmp_path)
    try:
        body = {"model": MODEL, "messages": HELLO, "max_tokens": 20, "temperature": 0}
        with httpx.stream("POST", url + CHAT, json={**body, "stream": True}, timeout=30) as response:
            lines = response.iter_lines()
            next(lines)
            proc.send_signal(signal.SIGTERM)
            rest = [line for line in lines if line]  # the request in flight is finished, not cut
        assert rest[-1] == "data: [DONE]"
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_schemathesis_finds_no_5xx(tiny, tmp_path):
    schemathesis = pytest.importorskip("schemathesis")
    engine = ScriptedEngine.load(tiny, config=EngineConfig(kv_cache_mb=16, max_model_len=96))
    handle = start_server(tiny, tmp_path, engine=engine)
    try:
        schema = schemathesis.openapi.from_url(handle.url + "/openapi.json")
        failures, calls = [], []
        for operation in schema.get_all_operations():
            op = operation.ok()
            strategy = op.as_strategy()
            from hypothesis import HealthCheck, given, settings

            @settings(max_examples=25, deadline=None, database=None,
                      suppress_health_check=list(HealthCheck))  # fmt: skip
            @given(case=strategy)
            def check(case):
                response = case.call(timeout=30)
                calls.append((case.path, response.status_code))
                if response.status_code >= 500:
                    failures.append((case.method, case.path, response.status_code, response.text[:200]))

            check()
        assert not failures, failures
        paths = {path for path, _ in calls}
        assert {"/v1/chat/completions", "/v1/completions", "/v1/models"} <= paths, paths
        assert any(status == 200 for _, status in calls) and any(status == 400 for _, status in calls)
    finally:
        handle.stop()


def test_cors_preflight_and_headers(tiny, tmp_path):
    handle = start_server(tiny, tmp_path, cors_origins=("http://app.example",), api_keys=("k",))
    try:
        headers = {"Origin": "http://app.example", "Access-Control-Request-Method": "POST",
                   "Access-Control-Request-Headers": "authorization,content-type"}  # fmt: skip
        pre = httpx.options(handle.url + CHAT, headers=headers)  # preflights carry no key
        assert pre.status_code == 200
        assert pre.headers["access-control-allow-origin"] == "http://app.example"
        ok = httpx.get(
            handle.url + "/v1/models", headers={"Origin": "http://app.example", "Authorization": "Bearer k"}
        )
        assert ok.headers["access-control-allow-origin"] == "http://app.example"
        other = httpx.get(
            handle.url + "/v1/models", headers={"Origin": "http://evil.example", "Authorization": "Bearer k"}
        )
        assert "access-control-allow-origin" not in other.headers
    finally:
        handle.stop()


def test_curl_style_json_bodies_are_read_as_json(served):
    """`curl -d '{...}'` sends application/x-www-form-urlencoded; like Ollama, ossai reads it as JSON."""
    served.engine.script("<|channel|>final<|message|>Hello there.<|return|>")
    body = json.dumps({"model": MODEL, "messages": HELLO})
    headers = {"content-type": "application/x-www-form-urlencoded"}
    r = httpx.post(served.url + CHAT, content=body, headers=headers, timeout=30)
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "Hello there."


def test_a_web_page_cannot_send_form_encoded_json(served):
    """A page may POST a form-encoded body to any site without a CORS preflight: not read as JSON."""
    body = json.dumps({"model": MODEL, "messages": HELLO})
    headers = {"content-type": "application/x-www-form-urlencoded", "origin": "https://evil.example"}
    r = httpx.post(served.url + CHAT, content=body, headers=headers, timeout=30)
    assert r.status_code == 400
