"""Driving the chat page (templates/chat.html) in the browser: open it, change and record its requests."""

from __future__ import annotations

import json

CHAT_ROUTE = "**/v1/chat/completions"


def open_chat(page, url: str, model: str, key: str | None = None) -> None:
    """Load /chat, give it the key if one is needed, and wait until it shows the model's name."""
    page.set_default_timeout(300_000)  # replies on 2 cores shared with other work can take minutes
    page.goto(f"{url}/chat")
    if key:
        page.wait_for_selector("#keybox", state="visible")
        page.fill("#api-key", key)
        page.click("#save-key")
    page.wait_for_function(f"document.getElementById('model').value === {json.dumps(model)}")  # the picker's choice


def add_to_requests(page, sent: list[dict] | None = None, **fields) -> None:
    """Add fields to every chat request the page sends (the test's, not the page's: ignore_eos, seed);
    the page's own bodies are appended to `sent`."""

    def handle(route) -> None:
        body = json.loads(route.request.post_data)
        if sent is not None:
            sent.append(body)
        route.continue_(post_data=json.dumps({**body, **fields}))

    page.route(CHAT_ROUTE, handle)


def new_chat(browser, url: str, model: str, key: str | None = None, **fields) -> tuple[object, list[dict]]:
    """A fresh page on /chat whose chat requests get `fields` added; returns it and the list of
    the bodies it sends."""
    page, sent = browser.new_page(), []
    add_to_requests(page, sent, **fields)
    open_chat(page, url, model, key)
    return page, sent


def send(page, text: str, max_tokens: int) -> None:
    """Type a message and send it; returns once the reply is over (Send is enabled again)."""
    page.fill("#max-tokens", str(max_tokens))
    page.fill("#prompt", text)
    page.press("#prompt", "Enter")
    page.wait_for_function("!document.getElementById('send').disabled")


def last(page, selector: str, script: str = "el => el.textContent"):
    return page.eval_on_selector_all(selector, f"els => ({script})(els[els.length - 1])")


def roles(body: dict) -> list[str]:
    return [m["role"] for m in body["messages"]]
