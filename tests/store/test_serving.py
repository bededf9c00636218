"""`ossai serve` with no MODEL: the store served with on-demand loading, keep-alive and LRU eviction;
/api/pull (NDJSON progress from the fake hub), /api/delete, /api/ps; `ossai ps` and `ossai rm` against a
real server process."""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import ollama
import openai
import pytest
import uvicorn
from fakehub import layout_size
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from ossai import settings
from ossai.cli import app as cli_app
from ossai.config import EngineConfig
from ossai.errors import BadRequest
from ossai.model.weights import Checkpoint
from ossai.server.app import create_app
from ossai.server.context import ServerConfig
from ossai.server.pool import ModelPool, parse_keep_alive
from ossai.store import import_model, list_models, models, servers
from tests.server.conftest import serve_app, spawn_server

HELLO = [{"role": "user", "content": "hi"}]


def long_completion(model: str) -> dict:
    """A streamed completion still running while a test looks at the server (random weights would
    soon sample a stop token, hence ignore_eos)."""
    return {"model": model, "prompt": "hi", "max_tokens": 300, "ignore_eos": True, "stream": True}


@dataclass
class Store:
    url: str
    pool: ModelPool
    server: uvicorn.Server
    thread: threading.Thread

    def loaded(self) -> list[str]:
        return [m["name"] for m in httpx.get(self.url + "/api/ps").json()["models"]]

    def chat(self, model: str, **extra) -> httpx.Response:
        body = {"model": model, "messages": HELLO, "max_tokens": 4, "temperature": 0, **extra}
        return httpx.post(self.url + "/v1/chat/completions", json=body, timeout=60)


@pytest.fixture
def store_of_two(tiny_checkpoints) -> list[str]:
    for seed, name in ((0, "alpha"), (1, "beta")):
        import_model(tiny_checkpoints(seed, "original"), name, "link", Checkpoint.open)
    return ["alpha", "beta"]


@pytest.fixture
def start_store():
    started: list[Store] = []

    def start(**pool_options) -> Store:
        config = EngineConfig(kv_cache_mb=64, max_num_seqs=4)
        pool = ModelPool(config, **pool_options)
        url, server, thread = serve_app(create_app(pool, ServerConfig(model_name=None, home=settings.home())))
        started.append(Store(url, pool, server, thread))
        return started[-1]

    yield start
    for handle in started:
        handle.server.should_exit = True
        handle.thread.join(timeout=30)
        assert not handle.pool.loaded(), "the server's shutdown unloads every model"


def test_keep_alive_parsing():
    assert parse_keep_alive(None, 300.0) == 300.0
    assert parse_keep_alive("5m", None) == 300.0
    assert parse_keep_alive("1h30m", None) == 5400.0
    assert parse_keep_alive("250ms", None) == 0.25
    assert parse_keep_alive(10, None) == 10.0
    assert parse_keep_alive("10", None) == 10.0
    assert parse_keep_alive(0, 300.0) == 0.0
    assert parse_keep_alive(-1, 300.0) is None
    assert parse_keep_alive("-1m", 300.0) is None
    assert parse_keep_alive("1e12", 300.0) is None  # past a century: forever
    for bad in ("soon", "5 minutes", "m5", "5mm", True, "nan", "inf", float("nan"), float("inf")):
        with pytest.raises(BadRequest, match="keep_alive"):
            parse_keep_alive(bad, None)


def test_the_store_is_listed_and_loaded_on_demand(store_of_two, start_store):
    handle = start_store(keep_alive=300.0)
    ids = [m.id for m in openai.OpenAI(base_url=handle.url + "/v1", api_key="x").models.list()]
    assert ids == store_of_two
    client = ollama.Client(host=handle.url)
    assert [m.model for m in client.list().models] == store_of_two
    assert client.show("alpha:latest").modelinfo["gptoss.block_count"] == 4  # no load needed
    bad = httpx.post(handle.url + "/v1/completions", json={"model": "alpha", "prompt": "x", "echo": True})
    assert bad.status_code == 400
    assert handle.loaded() == []  # listing, showing and bad input load nothing

    response = handle.chat("alpha")
    assert response.status_code == 200 and response.json()["model"] == "alpha"
    (card,) = client.ps().models
    assert card.model == "alpha" and card.size_vram == 0 and card.context_length > 0
    assert card.size > handle.pool.entry("alpha").size  # memory: the weights and the KV pool
    assert 250 < card.expires_at.timestamp() - time.time() <= 300  # the server's keep-alive

    r = httpx.post(handle.url + "/api/chat", json={"model": "beta", "messages": [], "keep_alive": -1})
    assert r.json()["done_reason"] == "load"
    by_name = {m.model: m for m in client.ps().models}
    assert set(by_name) == {"alpha", "beta"} and by_name["beta"].expires_at.year > 2100

    missing = handle.chat("gamma")
    assert missing.status_code == 404 and "gamma" in missing.json()["error"]["message"]
    metrics = {
        (s.name, s.labels.get("model")): s.value
        for f in text_string_to_metric_families(httpx.get(handle.url + "/metrics").text)
        for s in f.samples
    }
    assert metrics[("ossai_models_loaded", None)] == 2
    assert metrics[("ossai_model_info", "alpha")] == 1
    assert ("ossai_kv_cache_usage_ratio", "beta") in metrics


def test_least_recently_used_idle_model_makes_room(store_of_two, start_store):
    handle = start_store(max_loaded=1)
    assert handle.chat("alpha").status_code == 200
    assert handle.loaded() == ["alpha"]
    assert handle.chat("beta").status_code == 200
    assert handle.loaded() == ["beta"]


def test_a_model_in_use_is_not_evicted(store_of_two, start_store):
    """With room for one model, a request for the other waits for the streaming one to finish."""
    handle = start_store(max_loaded=1)
    body = long_completion("alpha")
    other: dict[str, object] = {}

    def ask_beta() -> None:
        other["response"] = handle.chat("beta")
        other["at"] = time.monotonic()

    with httpx.stream("POST", handle.url + "/v1/completions", json=body, timeout=120) as response:
        lines = response.iter_lines()
        next(line for line in lines if line.startswith("data:"))
        waiter = threading.Thread(target=ask_beta)
        waiter.start()
        time.sleep(0.5)
        assert [(m.name, m.leases) for m in handle.pool.loaded()] == [("alpha", 1)]  # still streaming
        assert "response" not in other
        (card,) = httpx.get(handle.url + "/api/ps").json()["models"]
        assert card["expires_at"].startswith(str(time.gmtime().tm_year))  # in use: counted from now
        rest = [line for line in lines if line.startswith("data:")]
        alpha_done = time.monotonic()
    waiter.join(timeout=60)
    assert rest[-1] == "data: [DONE]"
    finish = json.loads(rest[-2].removeprefix("data: "))["choices"][0]["finish_reason"]
    assert finish == "length"  # every token: nothing cut the stream short
    assert other["response"].status_code == 200 and other["at"] >= alpha_done  # type: ignore[union-attr]
    assert handle.loaded() == ["beta"]


def test_keep_alive_per_request(store_of_two, start_store):
    handle = start_store(keep_alive=300.0)
    client = ollama.Client(host=handle.url)
    client.generate(model="alpha", prompt="hi", options={"num_predict": 2}, keep_alive="1s")
    assert handle.loaded() == ["alpha"]
    deadline = time.monotonic() + 10
    while handle.loaded() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert handle.loaded() == []  # unloaded about a second after the request

    client.chat(model="beta", messages=HELLO, options={"num_predict": 2}, keep_alive=0)
    deadline = time.monotonic() + 5
    while handle.loaded() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert handle.loaded() == []
    client.generate(model="beta", keep_alive="10m")  # an empty request loads
    assert handle.loaded() == ["beta"]
    assert client.generate(model="beta", keep_alive=0).done_reason == "unload"
    assert handle.loaded() == []
    bad = httpx.post(handle.url + "/api/generate", json={"model": "beta", "keep_alive": "soon"})
    assert bad.status_code == 400 and "keep_alive" in bad.json()["error"]


def test_pull_streams_progress_then_serves_the_model(fake_hub, repo_dir, start_store):
    handle = start_store()
    client = ollama.Client(host=handle.url)
    statuses = list(client.pull("gpt-oss:20b", stream=True))
    names = [s.status for s in statuses]
    assert names[0] == "pulling manifest" and names[-1] == "success"
    assert "verifying sha256 digest" in names and "writing manifest" in names
    big = [s for s in statuses if s.status == "pulling original/model.safetensors"]
    sha = models.sha256_file(repo_dir / "original" / "model.safetensors")
    assert big[0].digest == f"sha256:{sha}" and big[-1].completed == big[-1].total > 0
    assert all(a.completed <= b.completed for a, b in itertools.pairwise(big))
    assert fake_hub.bytes_served == layout_size(repo_dir, "original")

    assert [m.model for m in client.list().models] == ["gpt-oss:20b"]
    reply = client.chat(model="gpt-oss:20b", messages=HELLO, options={"num_predict": 2})
    assert reply.done and reply.model == "gpt-oss:20b"
    again = httpx.post(handle.url + "/api/pull", json={"model": "gpt-oss:20b", "stream": False}, timeout=60)
    assert again.json() == {"status": "success", "model": "gpt-oss:20b"}  # already complete


def test_pull_errors(fake_hub, start_store):
    handle = start_store()
    client = ollama.Client(host=handle.url)
    with pytest.raises(ollama.ResponseError, match="no such model repo"):
        list(client.pull("openai/nothing-here", stream=True))  # the error arrives as an NDJSON line
    missing = httpx.post(handle.url + "/api/pull", json={"model": "openai/nothing-here", "stream": False})
    assert missing.status_code == 404 and "no such model repo" in missing.json()["error"]
    bad = httpx.post(handle.url + "/api/pull", json={"model": "not a repo"})
    assert bad.status_code == 400 and "not a model to pull" in bad.json()["error"]
    assert httpx.post(handle.url + "/api/pull", json={}).status_code == 400
    assert list_models() == []


def test_a_pull_whose_client_leaves_stops_and_resumes(fake_hub, repo_dir, start_store):
    handle = start_store()
    fake_hub.faults.slow = 0.05  # 50 ms per MiB: a 50 MB file takes seconds
    body = {"model": "gpt-oss:20b"}
    with httpx.stream("POST", handle.url + "/api/pull", json=body, timeout=30) as response:
        for line in response.iter_lines():
            status = json.loads(line)
            if status.get("completed", 0) > 0:
                break
    time.sleep(1.0)  # the download notices at its next chunk
    served = fake_hub.bytes_served
    time.sleep(0.5)
    assert fake_hub.bytes_served == served < layout_size(repo_dir, "original")  # stopped, not finished
    assert list_models() == []
    fake_hub.faults.slow = 0.0
    done = httpx.post(handle.url + "/api/pull", json={**body, "stream": False}, timeout=60)
    assert done.json()["status"] == "success"
    assert fake_hub.bytes_served < 1.5 * layout_size(repo_dir, "original")  # resumed, not restarted


def test_delete(store_of_two, start_store, tiny_checkpoints):
    handle = start_store()
    assert handle.chat("alpha").status_code == 200
    gone = httpx.request("DELETE", handle.url + "/api/delete", json={"model": "alpha"})
    assert gone.status_code == 200
    assert handle.loaded() == [] and [m.name for m in list_models()] == ["beta"]
    assert tiny_checkpoints(0, "original").is_dir()  # a linked import's files stay
    again = httpx.request("DELETE", handle.url + "/api/delete", json={"model": "alpha"})
    assert again.status_code == 404 and "alpha" in again.json()["error"]

    body = long_completion("beta")
    with httpx.stream("POST", handle.url + "/v1/completions", json=body, timeout=120) as response:
        lines = response.iter_lines()
        next(lines)
        assert [(m.name, m.leases) for m in handle.pool.loaded()] == [("beta", 1)]
        busy = httpx.request("DELETE", handle.url + "/api/delete", json={"name": "beta"})
        assert busy.status_code == 409 and "generating" in busy.json()["error"]
    assert [m.name for m in list_models()] == ["beta"]


def test_pinned_model_cannot_be_deleted_or_unloaded(tiny):
    from tests.server.conftest import MODEL, start_server

    import_model(tiny, MODEL, "link", Checkpoint.open)
    handle = start_server(tiny, settings.home())
    try:
        r = httpx.request("DELETE", handle.url + "/api/delete", json={"model": MODEL})
        assert r.status_code == 409 and "started with" in r.json()["error"]
        r = httpx.post(handle.url + "/api/generate", json={"model": MODEL, "keep_alive": 0})
        assert r.json()["done_reason"] == "unload"
        assert [m["name"] for m in httpx.get(handle.url + "/api/ps").json()["models"]] == [MODEL]
    finally:
        handle.stop()


# --- `ossai serve` (no MODEL), `ossai ps` and `ossai rm` as separate processes ------------------------------


def _cli(*args: str, input: str | None = None):
    return CliRunner().invoke(cli_app, list(args), input=input)


@pytest.fixture
def store_server(store_of_two) -> Iterator[str]:
    proc, url = spawn_server(["--kv-cache-mb", "32", "--keep-alive", "10m"], settings.home())
    try:
        yield url
        proc.terminate()
        assert proc.wait(timeout=30) == 0
        assert servers.running() == []  # its status file is gone with it
    finally:
        if proc.poll() is None:
            proc.kill()


def test_ps_and_rm_against_a_running_server(store_server):
    ps = _cli("ps")
    assert ps.exit_code == 0 and "no models loaded" in ps.output
    reply = ollama.Client(host=store_server).chat(model="alpha", messages=HELLO, options={"num_predict": 2})
    assert reply.done
    (row,) = json.loads(_cli("ps", "--json").stdout)
    assert (row["name"], row["server"], row["device"]) == ("alpha", store_server, "cpu")
    assert 500 < row["expires_at"] - time.time() <= 600 and row["memory_bytes"] > 0
    table = _cli("ps").stdout
    assert "alpha" in table and "in 10 minutes" in table

    refused = _cli("rm", "alpha", "-y")
    assert refused.exit_code != 0 and "loaded by the ossai server" in str(refused.exception)
    assert [m.name for m in list_models()] == ["alpha", "beta"]
    assert _cli("rm", "beta", "-y").exit_code == 0  # not loaded: removed

    unload = httpx.post(store_server + "/api/generate", json={"model": "alpha", "keep_alive": 0})
    assert unload.json()["done_reason"] == "unload"
    assert json.loads(_cli("ps", "--json").stdout) == []
    assert _cli("rm", "alpha", "-y").exit_code == 0
    assert list_models() == []


def test_ps_without_a_server_and_a_stale_status_file(tmp_path):
    result = _cli("ps")
    assert result.exit_code == 0 and "no ossai server is running" in result.output
    stale = servers.run_dir() / "999999999.json"
    stale.write_text(json.dumps({"pid": 999999999, "url": "http://x", "models": [{"name": "m"}]}))
    assert servers.running() == [] and not stale.exists()
    assert json.loads(_cli("ps", "--json").stdout) == []


def test_serve_refuses_options_of_the_other_mode(tiny):
    result = _cli("serve", "--name", "x")
    assert result.exit_code != 0 and "--name" in str(result.exception)
    result = _cli("serve", str(tiny), "--keep-alive", "1m")
    assert result.exit_code != 0 and "--keep-alive" in str(result.exception)
    result = _cli("serve", "--device", "tpu")
    assert result.exit_code != 0 and "tpu" in str(result.exception)
    assert not Path(settings.home(), "run").exists() or servers.running() == []
