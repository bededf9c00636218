"""Model output is untrusted: HTML in a reply, its reasoning or a tool's output shows as text, no script
runs, no `javascript:` link survives; and every response of the client carries the strict CSP.

The demo model does not write HTML on request, so the payload goes into a stored conversation through the
conversations API (where a reply's text lands either way) and the page opens it."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from tests.web.conftest import OssaiServer, conversation

pytestmark = pytest.mark.browser

IMG = '<img src=x onerror="window.__xss=1">'
SCRIPT = "<script>window.__xss=2</script>"
ANSWER = f"""Here it is: {IMG}{SCRIPT}

[click me](javascript:window.__xss=3) and <a href="javascript:window.__xss=4">raw link</a>

![pic](javascript:window.__xss=5) <iframe src="javascript:window.__xss=6"></iframe>

<svg onload="window.__xss=7"></svg> <b onmouseover="window.__xss=8">bold?</b>

```html
<script>window.__xss=9</script>
```
"""
TOOL_OUTPUT = f"{IMG}{SCRIPT}\n"
CSP = {
    "default-src 'self'",
    "script-src 'self'",
    "object-src 'none'",
    "base-uri 'none'",
    "frame-ancestors 'none'",
    "connect-src 'self'",
}


def test_html_in_model_output_is_text_and_runs_nothing(page, server: OssaiServer):
    tool = {
        "id": "call_1", "tool": "python", "name": "python", "arguments": f"print('{IMG}')",
        "status": "completed", "output": TOOL_OUTPUT,
    }  # fmt: skip
    body = conversation(
        f"Title {IMG}",
        [
            {"role": "user", "content": f"Say {IMG}{SCRIPT}"},
            {
                "role": "assistant",
                "content": ANSWER,
                "reasoning": f"Thinking {IMG}{SCRIPT}",
                "tools": [tool],
                "status": "done",
            },
        ],
        mode="agent",
    )
    created = server.api("POST", "/ossai/conversations", json=body)
    assert created.status_code == 201, created.text
    page.goto(f"/#/c/{created.json()['id']}")
    reply = page.locator("article[data-role=assistant]")
    expect(reply.locator(".answer")).to_contain_text(IMG)  # shown literally
    expect(reply.locator(".answer")).to_contain_text(SCRIPT)
    expect(reply.locator(".answer")).to_contain_text("click me")
    expect(reply.locator("details.reasoning")).to_contain_text(IMG)
    expect(reply.locator("details.tool-card[data-tool=python]")).to_contain_text(IMG)
    expect(page.locator("article[data-role=user]")).to_contain_text(IMG)
    expect(page.get_by_role("navigation", name="Conversations")).to_contain_text(f"Title {IMG}")

    for details in reply.locator("details").all():  # open every panel: nothing hides in a closed one
        if not details.evaluate("d => d.open"):
            details.locator("summary").first.click()
    reply.get_by_text("bold?").first.hover()
    page.wait_for_timeout(300)  # an onerror or onload would have fired by now
    assert page.evaluate("window.__xss") is None
    dangerous = "img, script, iframe, object, embed, [onerror], [onload], [onmouseover]"
    found = page.locator("article").locator(dangerous)
    assert found.count() == 0, found.evaluate_all("els => els.map(e => e.outerHTML)")
    found = reply.locator(".answer").locator("svg, [style]")  # the client's own icons may be svg; not here
    assert found.count() == 0, found.evaluate_all("els => els.map(e => e.outerHTML)")
    hrefs = page.locator("article a[href]").evaluate_all("els => els.map(e => e.getAttribute('href'))")
    assert not [h for h in hrefs if h.strip().lower().startswith(("javascript:", "data:", "vbscript:"))]
    for link in page.locator("article a[href]").all():
        assert link.get_attribute("target") == "_blank" and "noopener" in link.get_attribute("rel")


def test_every_response_of_the_client_carries_the_csp(server: OssaiServer):
    index = server.api("GET", "/")
    assert index.status_code == 200 and "text/html" in index.headers["content-type"]
    module = server.api("GET", "/web/app.js")
    assert module.status_code == 200 and "javascript" in module.headers["content-type"]
    for response in (index, module):
        directives = {d.strip() for d in response.headers["content-security-policy"].split(";")}
        assert directives >= CSP, directives
        assert not any("unsafe" in d for d in directives if d.startswith(("script-src", "default-src")))
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["referrer-policy"] == "no-referrer"
    assert 'type="module"' in index.text and "<script>" not in index.text  # no inline script to allow
