"""API-key protection and the chat page, on a tiny-dev Bento served with $VLLM_API_KEY set."""

from __future__ import annotations

import json
import os
import shutil

import httpx
import openai
import pytest
from conftest import ARTIFACTS, ROOT, serve_folder

KEY = "sk-test-" + os.urandom(6).hex()
CHAT = [{"role": "user", "content": "Hello"}]


@pytest.fixture(scope="module")
def keyed_server(bentoml_home):
    with serve_folder(ROOT / "models" / "tiny-dev", "keyed", env={"BENTOML_HOME": bentoml_home, "VLLM_API_KEY": KEY}) as server:
        yield server
    assert KEY not in server.log_path.read_text(errors="replace"), "the key must never be logged"


def client(server, key: str | None) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=key or "", max_retries=0)


@pytest.mark.parametrize("path,method", [("/v1/models", "GET"), ("/v1/chat/completions", "POST"), ("/generate", "POST"), ("/tokenize", "POST")])
@pytest.mark.parametrize("auth", [None, "Bearer wrong-key", f"Basic {KEY}"])
def test_missing_or_wrong_key_is_a_401_openai_error(keyed_server, path, method, auth):
    headers = {"Authorization": auth} if auth else {}
    response = httpx.request(method, keyed_server.url + path, json={"model": "tiny-dev", "messages": CHAT}, headers=headers)
    assert response.status_code == 401
    assert response.json()["error"]["type"] == "AuthenticationError"


@pytest.mark.parametrize("path", ["/livez", "/readyz", "/metrics", "/chat"])
def test_health_metrics_and_page_stay_open(keyed_server, path):
    assert httpx.get(keyed_server.url + path).status_code == 200


def test_right_key_through_the_openai_client(keyed_server):
    with pytest.raises(openai.AuthenticationError):
        client(keyed_server, "wrong").models.list()
    reply = client(keyed_server, KEY).chat.completions.create(model="tiny-dev", messages=CHAT, max_tokens=4)
    assert reply.choices


def test_streaming_with_the_key(keyed_server):
    stream = client(keyed_server, KEY).chat.completions.create(
        model="tiny-dev", messages=CHAT, max_tokens=8, stream=True, extra_body={"ignore_eos": True}
    )
    assert sum(len(c.choices[0].delta.content or "") for c in stream if c.choices) > 0


def test_bentoml_api_with_the_key(keyed_server):
    response = httpx.post(f"{keyed_server.url}/generate", json={"prompt": "Hi", "max_tokens": 4},
                          headers={"Authorization": f"Bearer {KEY}"}, timeout=60)
    assert response.status_code == 200 and response.text


@pytest.fixture(scope="module")
def browser():
    """Headless Debian Chromium driven by playwright; `make browser` installs Chromium."""
    if not shutil.which("chromium"):
        pytest.skip("the chat-page tests need Chromium: run `make browser` (as root: apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=shutil.which("chromium"),
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--no-first-run"],
        )
        yield browser
        browser.close()


def with_ignore_eos(route) -> None:
    body = json.loads(route.request.post_data)
    route.continue_(post_data=json.dumps({**body, "ignore_eos": True}))


# Clicks Stop from inside the page when the new reply's first text appears: a MutationObserver
# runs within the page's read loop, which can go on for many chunks without giving the browser
# a frame, so a check that Playwright polls once per frame can miss a whole stream.
STOP_AT_FIRST_TEXT = """() => {
  const before = document.querySelectorAll('.assistant').length;
  new MutationObserver((changes, observer) => {
    const replies = document.querySelectorAll('.assistant');
    if (replies.length > before && replies[replies.length - 1].textContent) {
      observer.disconnect();
      document.getElementById('stop').click();
    }
  }).observe(document.getElementById('log'), { childList: true, subtree: true, characterData: true });
}"""


def test_chat_page_streams_and_stops(keyed_server, browser):
    page = browser.new_page()
    page.goto(f"{keyed_server.url}/chat")
    # No key yet: the page says so and asks for it.
    page.wait_for_selector("#keybox", state="visible")
    assert "API key" in page.inner_text("#error")
    page.fill("#api-key", KEY)
    page.click("#save-key")
    page.wait_for_function("document.getElementById('model').textContent === 'tiny-dev'")

    page.fill("#max-tokens", "40")
    page.fill("#prompt", "Tell me a story")
    page.press("#prompt", "Enter")
    page.wait_for_function("document.querySelectorAll('.assistant').length === 1 && !document.getElementById('send').disabled")
    assert page.inner_text(".user") == "Tell me a story"
    assert page.inner_text("#error") == ""

    # The random model may end a reply at once; the test (not the page) asks vLLM to ignore EOS
    # so that there is a long generation to stop.
    page.route("**/v1/chat/completions", with_ignore_eos)
    for _ in range(3):
        page.fill("#max-tokens", "900")
        page.fill("#prompt", "And another one")
        page.evaluate(STOP_AT_FIRST_TEXT)
        page.click("#send")
        page.wait_for_function("!document.getElementById('send').disabled")
        assert page.inner_text("#error") == ""
        stopped = page.eval_on_selector_all(".assistant", "els => els[els.length - 1].dataset.stopped")
        if stopped == "true":
            break
        # The whole reply was there before the page could stop it: on 2 busy cores the browser
        # can wait for a CPU until the server has finished. Not a try; start a fresh
        # conversation (the 900-token reply would not fit the model's context again).
        page.reload()
        page.wait_for_function("document.getElementById('model').textContent === 'tiny-dev'")
    page.screenshot(path=str(ARTIFACTS / "chat-page.png"), full_page=True)
    assert stopped == "true", "the generation was stopped from the page"
