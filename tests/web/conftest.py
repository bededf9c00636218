"""End-to-end tests of the web client: Playwright drives Debian's chromium (/usr/bin/chromium, which
`make test` installs; nothing is downloaded at run time) against a real `ossai serve` child process on a
loopback port, serving the bundled ossai-demo model from a temporary OSSAI_HOME.

One browser for the session, a new context (fresh storage) per test. Every page is watched: an uncaught
exception in the page or a Content-Security-Policy violation fails the test that caused it; other console
errors (a 401 the client handles, say) are printed with a failure. The tests find things by the accessible
names, roles and data- attributes that docs/web-client.md promises ("The page").
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from ossai.store import demo
from tests.server.conftest import free_port, wait_healthy

CHROMIUM = Path("/usr/bin/chromium")
# No internet here (nor in CI): without these, chromium keeps trying Google's services in the background.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ROOT = Path(__file__).resolve().parents[2]
# The screenshots the tests take go to build/screenshots/ (git-ignored), so a test run leaves the working tree
# clean; OSSAI_UPDATE_SCREENSHOTS=1 writes the committed ones in docs/screenshots/ instead (the README's).
UPDATE_SCREENSHOTS = os.environ.get("OSSAI_UPDATE_SCREENSHOTS") == "1"
SCREENSHOTS = ROOT / ("docs" if UPDATE_SCREENSHOTS else "build") / "screenshots"
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 375, "height": 812}
TIMEOUT_MS = 15_000  # a locator's or an expectation's wait
REPLY_MS = 90_000  # a whole reply (the demo model is fast; a loaded CI machine is not)
COMPLETIONS = "/v1/chat/completions"


def _unavailable(reason: str) -> None:
    """Skip on a developer's machine that lacks the browser; under CI (`make test` installs it) fail."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set: `make test` installs it, so this is a broken set-up)")
    pytest.skip(reason)


# --- servers ---------------------------------------------------------------------------------------------


class OssaiServer:
    """`ossai serve ARGS` as a child process on a fixed loopback port over its own OSSAI_HOME; its output
    goes to a log file in the home (a pipe nobody reads would block it). `restart` keeps port and home."""

    def __init__(self, home: Path, args: list[str], env: dict[str, str] | None = None, api_key: str = ""):
        self.home, self.args, self.api_key = home, args, api_key
        mine = ("OSSAI_API_KEY", "HF_ENDPOINT", "HF_TOKEN", "HF_HUB_OFFLINE")  # the developer's, not ours
        self.env = {k: v for k, v in os.environ.items() if k not in mine}
        self.env.update({"OSSAI_HOME": str(home), **(env or {})})
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.log_path = home / "serve.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> OssaiServer:
        extra = ["--api-key", self.api_key] if self.api_key else []
        command = [sys.executable, "-m", "ossai.cli", "serve", *self.args, *extra, "--port", str(self.port)]
        with self.log_path.open("a") as log:
            self.proc = subprocess.Popen(command, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_healthy(self.url, lambda: self.proc is not None and self.proc.poll() is None, timeout=120)
        except RuntimeError:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"ossai serve did not start:\n{self.log()}") from None
        return self

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            rc = self.proc.wait(timeout=40)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"ossai serve did not stop on SIGTERM:\n{self.log()}") from None
        finally:
            self.proc = None
        assert rc == 0, f"ossai serve exited {rc}:\n{self.log()}"

    def restart(self) -> None:
        self.stop()
        self.start()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:] if self.log_path.exists() else ""

    def api(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """A request to the server's HTTP API, with its API key."""
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        return httpx.request(method, self.url + path, headers=headers, timeout=120, **kwargs)

    def conversation(self, cid: str) -> dict:
        response = self.api("GET", f"/ossai/conversations/{cid}")
        assert response.status_code == 200, response.text
        return response.json()

    def wait_saved(self, cid: str, check: Callable[[dict], bool], timeout: float = 20.0) -> dict:
        """The stored conversation once `check` holds (the client saves after a reply ends)."""
        deadline = time.monotonic() + timeout
        while True:
            response = self.api("GET", f"/ossai/conversations/{cid}")
            if response.status_code == 200 and check(stored := response.json()):
                return stored
            if time.monotonic() > deadline:
                raise AssertionError(f"conversation {cid} not saved as expected: {response.text[:3000]}")
            time.sleep(0.1)


def serve(home: Path, *args: str, env: dict[str, str] | None = None, api_key: str = "") -> OssaiServer:
    if not demo.bundled():
        pytest.skip("this build bundles no ossai-demo")
    # one CPU thread: the demo model needs no more, and CI machines are small
    return OssaiServer(home, ["--threads", "1", "--kv-cache-mb", "64", *args], env, api_key).start()


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OssaiServer]:
    """The session's server: an empty store, so the bundled ossai-demo is served; the python tool runs in
    its bubblewrap sandbox (the default)."""
    handle = serve(tmp_path_factory.mktemp("web-home"))
    yield handle
    handle.stop()


@pytest.fixture(scope="session")
def keyed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OssaiServer]:
    """A server that requires `Authorization: Bearer web-test-key`."""
    handle = serve(tmp_path_factory.mktemp("web-keyed-home"), api_key="web-test-key")
    yield handle
    handle.stop()


@pytest.fixture
def restart_server(server: OssaiServer) -> Callable[[], None]:
    """Stop the session's server and start it again on the same port and home."""
    return server.restart


# --- the browser -------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    if not CHROMIUM.is_file():
        _unavailable(f"{CHROMIUM} is missing: install Debian's chromium (`make test` does)")
    try:
        from playwright.sync_api import expect, sync_playwright
    except ImportError:
        _unavailable("the playwright package is missing: pip install -e '.[test]' (`make test` does)")
    expect.set_options(timeout=TIMEOUT_MS)
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        yield chromium
        chromium.close()


@dataclass
class Watch:
    """What a page reported: uncaught exceptions, CSP violations and other console errors."""

    page_errors: list[str] = field(default_factory=list)
    csp: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)

    def attach(self, page: Any) -> None:
        page.on("pageerror", lambda error: self.page_errors.append(f"{page.url}: {error}"))
        page.on("console", self._console)

    def _console(self, message: Any) -> None:
        text = message.text
        if "Content Security Policy" in text or "Content-Security-Policy" in text:
            self.csp.append(text)
        elif message.type == "error":
            self.console_errors.append(text)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    report = yield
    setattr(item, f"report_{report.when}", report)  # the page fixtures look at it to keep evidence
    return report


@pytest.fixture
def new_page(browser: Any, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """`new_page(server, viewport=..., color_scheme=...)`: a page in a new browser context whose base URL is
    the server's; checked for page errors and CSP violations when the test ends."""
    made: list[tuple[Any, Any, Watch]] = []

    def make(on: OssaiServer, viewport: dict[str, int] | None = None, **options: Any) -> Any:
        context = browser.new_context(base_url=on.url, viewport=viewport or DESKTOP, **options)
        context.set_default_timeout(TIMEOUT_MS)
        page = context.new_page()
        watch = Watch()
        watch.attach(page)
        made.append((context, page, watch))
        return page

    yield make
    report = getattr(request.node, "report_call", None)
    failed = report is None or report.failed
    problems = []
    for n, (context, page, watch) in enumerate(made):
        if failed and not page.is_closed():
            shot = tmp_path / f"failure-{n}.png"
            try:
                page.screenshot(path=shot, full_page=True)
                print(f"screenshot of the failing page: {shot}")
            except Exception as exc:
                print(f"no screenshot ({exc})")
        if failed and watch.console_errors:
            print("console errors:\n  " + "\n  ".join(watch.console_errors))
        context.close()
        problems += [f"uncaught exception in the page: {e}" for e in watch.page_errors]
        problems += [f"CSP violation: {e}" for e in watch.csp]
    assert not problems, "\n".join(problems)


@pytest.fixture
def page(new_page: Callable[..., Any], server: OssaiServer) -> Any:
    return new_page(server)


@pytest.fixture
def chat(page: Any, server: OssaiServer) -> ChatPage:
    return ChatPage(page, server)


# --- the chat page, as the tests use it --------------------------------------------------------------------


class Throttle:
    """Chrome's network throttling for one page (DevTools protocol), to slow a reply's stream down."""

    def __init__(self, page: Any):
        self.cdp = page.context.new_cdp_session(page)
        self.cdp.send("Network.enable")

    def set(self, bytes_per_s: int | None) -> None:
        rate = bytes_per_s if bytes_per_s else -1  # -1: no throttling
        self.cdp.send(
            "Network.emulateNetworkConditions",
            {"offline": False, "latency": 0, "downloadThroughput": rate, "uploadThroughput": -1},
        )


class ChatPage:
    def __init__(self, page: Any, server: OssaiServer):
        self.page, self.server = page, server

    def open(self, route: str = "#/") -> ChatPage:
        from playwright.sync_api import expect

        self.page.goto("/" + route)
        expect(self.composer).to_be_editable()
        return self

    @property
    def composer(self) -> Any:
        return self.page.get_by_role("textbox", name="Message", exact=True)

    def button(self, name: str) -> Any:
        return self.page.get_by_role("button", name=name, exact=True)

    def articles(self, role: str | None = None) -> Any:
        return self.page.locator(f"article[data-role={role}]" if role else "article[data-role]")

    @property
    def last_reply(self) -> Any:
        return self.articles("assistant").last

    def expect_completion(self) -> Any:
        """`with chat.expect_completion() as info:` ... `info.value` is the POST to /v1/chat/completions."""
        return self.page.expect_request(lambda r: r.method == "POST" and r.url.endswith(COMPLETIONS))

    def send(self, text: str) -> Any:
        """Type and send a message; the chat request it made (its body: `request.post_data_json`)."""
        self.composer.fill(text)
        with self.expect_completion() as info:
            self.button("Send").click()
        return info.value

    def finish(self, request: Any, status: str = "done") -> Any:
        """Wait for the reply `request` streams to end; the reply's article."""
        from playwright.sync_api import expect

        response = request.response()
        assert response is not None and response.ok, response and response.status
        response.finished()  # the whole stream has arrived
        expect(self.last_reply).to_have_attribute("data-status", status, timeout=REPLY_MS)
        return self.last_reply

    def ask(self, text: str) -> Any:
        return self.finish(self.send(text))

    def mode(self, name: str) -> None:
        from playwright.sync_api import expect

        group = self.page.get_by_role("radiogroup", name="Conversation mode")
        radio = group.get_by_role("radio", name=name, exact=True)
        # click where a user clicks (the input may be hidden); `has` is resolved inside each label, so it
        # takes a page-level locator of the radio, not one under the group
        inner = self.page.get_by_role("radio", name=name, exact=True)
        group.locator("label").filter(has=inner).click()
        expect(radio).to_be_checked()

    def effort(self, value: str) -> None:
        self.page.get_by_role("combobox", name="Reasoning effort").select_option(value)

    def settings(self, temperature: float | None = None, confirm_python: bool | None = None) -> None:
        from playwright.sync_api import expect

        self.button("Settings").click()
        dialog = self.page.get_by_role("dialog", name="Conversation settings")
        expect(dialog).to_be_visible()
        if temperature is not None:
            dialog.get_by_label("Temperature", exact=True).fill(str(temperature))
        if confirm_python is not None:
            dialog.get_by_label("Confirm before running Python").set_checked(confirm_python)
        dialog.get_by_role("button", name="Close", exact=True).click()
        expect(dialog).to_be_hidden()

    def conversation_id(self) -> str:
        self.page.wait_for_url(re.compile(r"#/c/[^/]+$"))
        return self.page.url.rsplit("#/c/", 1)[1]


def conversation(title: str, messages: list[dict], **fields: Any) -> dict:
    """A conversation to POST to /ossai/conversations: `messages` as a chain, each the active child."""
    now = time.time()
    chained, active, parent = [], {}, None
    for n, message in enumerate(messages):
        mid = f"m_{n + 1}"
        chained.append({"id": mid, "parent": parent, "created": now + n, **message})
        active[parent or "root"] = mid
        parent = mid
    body = {"title": title, "mode": "chat", "model": demo.NAME, "messages": chained, "active": active}
    return body | fields


def screenshot(page: Any, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=path, animations="disabled")  # a chevron just turned shows turned, not halfway
    return path


@contextmanager
def busy(on: OssaiServer) -> Iterator[None]:
    """Chat requests to the demo model, one after another, while the block runs (for the dashboard)."""
    stop = threading.Event()
    failures: list[str] = []
    body = {
        "model": demo.NAME,
        "messages": [{"role": "user", "content": "What is 123 plus 456?"}],
        "reasoning_effort": "high",
        "max_tokens": 400,
    }

    def run() -> None:
        while not stop.is_set():
            response = on.api("POST", COMPLETIONS, json=body)
            if response.status_code != 200:
                failures.append(response.text)
                return

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=120)
    assert not failures, failures
