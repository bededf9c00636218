"""The model manager against a server whose hub is a local fake (tests/store/fakehub.py, throttled so a
pull takes seconds): the store's models, load and unload, a pull's progress bar, cancelling a pull, and
deleting a model."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError
from playwright.sync_api import expect

from ossai.testing.checkpoint import PRESETS, write_checkpoint
from tests.store.fakehub import REPO, FakeHub
from tests.web.conftest import OssaiServer, serve

pytestmark = pytest.mark.browser

OTHER = "ossai-tests/tiny-gpt-oss"  # a second repo on the fake hub, for the cancelled pull


@pytest.fixture(scope="module")
def fake_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeHub]:
    root = tmp_path_factory.mktemp("web-hub-repo")
    write_checkpoint(PRESETS["tiny"], root, "original", 0)  # ~50 MiB, nearly all in one safetensors file
    (root / "README.md").write_text("# a random tiny gpt-oss\n")
    with FakeHub() as hub:
        hub.add(REPO, root)
        hub.add(OTHER, root)
        hub.faults.slow = 0.1  # seconds per MiB: a pull of ~5 s
        yield hub


@pytest.fixture(scope="module")
def hub_server(fake_hub: FakeHub, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OssaiServer]:
    home = tmp_path_factory.mktemp("web-models-home")
    env = {
        "HF_ENDPOINT": fake_hub.url,
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_TOKEN_PATH": str(home / "no-such-token"),  # never a token the developer stored
        "HF_HOME": str(home / "hf"),
    }
    handle = serve(home, env=env)
    yield handle
    handle.stop()


@pytest.fixture
def models_page(new_page, hub_server: OssaiServer):
    page = new_page(hub_server)
    page.goto("/#/models")
    expect(page.get_by_role("heading", name="Models", exact=True)).to_be_visible()
    return page


def test_the_store_is_listed_and_a_model_loads_and_unloads(models_page):
    row = models_page.locator('tr[data-model="ossai-demo"]')
    expect(row).to_contain_text("ossai-demo")
    expect(row).to_contain_text("not loaded")
    row.get_by_role("button", name="Load", exact=True).click()
    expect(row.get_by_role("button", name="Unload", exact=True)).to_be_visible(timeout=60_000)
    expect(row).not_to_contain_text("not loaded")
    expect(row).to_contain_text("loaded")
    row.get_by_role("button", name="Unload", exact=True).click()
    expect(row).to_contain_text("not loaded")
    expect(row.get_by_role("button", name="Load", exact=True)).to_be_visible()


def watch_progress(page, until, timeout: float = 60.0) -> list[float]:
    """aria-valuenow of the "Pull progress" bar, sampled every 50 ms until `until()` holds."""
    bar = page.get_by_role("progressbar", name="Pull progress")
    values: list[float] = []
    deadline = time.monotonic() + timeout
    while not until():
        assert time.monotonic() < deadline, f"the pull did not end; progress seen: {values}"
        try:
            value = bar.get_attribute("aria-valuenow", timeout=200)
        except PlaywrightTimeoutError:
            value = None  # not there (yet, or any more)
        if value is not None and (not values or float(value) != values[-1]):
            values.append(float(value))
        page.wait_for_timeout(50)
    return values


def test_a_pull_shows_its_progress_then_the_model(models_page, hub_server: OssaiServer, fake_hub: FakeHub):
    row = models_page.locator('tr[data-model="gpt-oss:20b"]')
    expect(row).to_have_count(0)
    models_page.get_by_role("textbox", name="Model name").fill("gpt-oss:20b")
    with models_page.expect_request(lambda r: r.url.endswith("/api/pull")) as pulled:
        models_page.get_by_role("button", name="Pull", exact=True).click()
    assert pulled.value.post_data_json["model"] == "gpt-oss:20b"
    bar = models_page.get_by_role("progressbar", name="Pull progress")
    expect(bar).to_be_visible()
    values = watch_progress(models_page, lambda: row.count() > 0)
    assert len(values) >= 3 and all(0 <= v <= 100 for v in values), values
    rises = sum(b > a for a, b in itertools.pairwise(values))
    assert rises >= 2 and rises > len(values) // 2, f"the progress did not rise: {values}"
    assert any(0 < v < 100 for v in values), values
    expect(bar).to_have_count(0)
    expect(row).to_contain_text("not loaded")
    names = [m["name"] for m in hub_server.api("GET", "/api/tags").json()["models"]]
    assert "gpt-oss:20b" in names

    row.get_by_role("button", name="Delete", exact=True).click()
    dialog = models_page.get_by_role("dialog")
    expect(dialog).to_contain_text("gpt-oss:20b")
    dialog.get_by_role("button", name="Delete", exact=True).click()
    expect(row).to_have_count(0)
    names = [m["name"] for m in hub_server.api("GET", "/api/tags").json()["models"]]
    assert "gpt-oss:20b" not in names and "ossai-demo" in names


def test_cancel_a_pull(models_page, hub_server: OssaiServer, fake_hub: FakeHub):
    models_page.get_by_role("textbox", name="Model name").fill(OTHER)
    models_page.get_by_role("button", name="Pull", exact=True).click()
    bar = models_page.get_by_role("progressbar", name="Pull progress")
    expect(bar).to_be_visible()
    expect(bar).not_to_have_attribute("aria-valuenow", "0")  # the big file is coming
    models_page.get_by_role("button", name="Cancel pull").click()
    expect(bar).to_have_count(0)
    served = fake_hub.bytes_served
    time.sleep(1.5)  # the server stops downloading at its next chunk
    assert fake_hub.bytes_served - served <= 2 * 2**20, "the server kept downloading"
    expect(models_page.locator(f'tr[data-model="{OTHER}"]')).to_have_count(0)
    names = [m["name"] for m in hub_server.api("GET", "/api/tags").json()["models"]]
    assert OTHER not in names
    partial = list((Path(hub_server.home) / "partial").rglob("*.part"))
    assert partial, "a cancelled pull keeps its partial file, to resume"
