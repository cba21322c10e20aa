"""API-key protection and the chat page, on a tiny-dev Bento served with $VLLM_API_KEY set.

The chat-page tests run in Chromium (`make browser`); the last one kills the server's engine."""

from __future__ import annotations

import os

import httpx
import openai
import pytest
from chat_page import CHAT_ROUTE, add_to_requests, last, new_chat, open_chat, roles, send
from conftest import ARTIFACTS, ROOT, serve_folder
from paused_engine import engine_core, paused, throttled, wait_until

pytestmark = pytest.mark.serves  # every test here serves a model: not in `make test-quick`

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
@pytest.mark.parametrize("auth", [None, "Bearer wrong-key", f"Basic {KEY}"], ids=["no-key", "wrong-key", "key-as-basic"])  # ids: the key stays out of test names
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


# Clicks Stop from inside the page when the new reply's answer gets its first text: a
# MutationObserver runs within the page's read loop, which can go on for many chunks without
# giving the browser a frame, so a check that Playwright polls once per frame can miss a whole stream.
STOP_AT_FIRST_TEXT = """() => {
  const before = document.querySelectorAll('.assistant').length;
  new MutationObserver((changes, observer) => {
    const replies = document.querySelectorAll('.assistant .answer');
    if (replies.length > before && replies[replies.length - 1].textContent) {
      observer.disconnect();
      document.getElementById('stop').click();
    }
  }).observe(document.getElementById('log'), { childList: true, subtree: true, characterData: true });
}"""


def test_chat_page_asks_for_the_key_streams_and_stops(keyed_server, browser):
    page = browser.new_page()
    page.goto(f"{keyed_server.url}/chat")
    # No key yet: the page says so and asks for it.
    page.wait_for_selector("#keybox", state="visible")
    assert "API key" in page.inner_text("#error")
    open_chat(page, keyed_server.url, "tiny-dev", KEY)

    send(page, "Tell me a story", max_tokens=40)
    assert page.inner_text(".user") == "Tell me a story"
    assert page.inner_text("#error") == ""

    # The random model may end a reply at once; the test (not the page) asks vLLM to ignore EOS
    # so that there is a long generation to stop. The engine is throttled until the reply is over
    # (tests/paused_engine.py): the page's Stop at its first text lands long before the 900th token
    # however long the browser waits for a CPU.
    add_to_requests(page, ignore_eos=True)
    page.evaluate(STOP_AT_FIRST_TEXT)

    def reply_over() -> bool:
        page.wait_for_timeout(50)
        return page.is_enabled("#send")

    engine = engine_core(keyed_server)
    with paused(engine), throttled(engine):
        page.fill("#max-tokens", "900")
        page.fill("#prompt", "And another one")
        page.press("#prompt", "Enter")
        assert wait_until(reply_over), "the reply ended"
    assert page.inner_text("#error") == ""
    page.screenshot(path=str(ARTIFACTS / "chat-page.png"), full_page=True)
    assert last(page, ".assistant", "el => el.dataset.stopped") == "true", "the generation was stopped from the page"
    assert last(page, ".assistant .answer"), "the text before the stop stays"


def test_rejected_request_leaves_the_history_so_roles_alternate(keyed_server, browser):
    page, sent = new_chat(browser, keyed_server.url, "tiny-dev", KEY, ignore_eos=True)
    send(page, "first", max_tokens=8)
    answer = last(page, ".assistant .answer")
    assert answer

    send(page, "second", max_tokens=-3)  # vLLM answers 400
    assert "max_tokens" in page.inner_text("#error")
    assert last(page, ".user", "el => el.classList.contains('unanswered')")
    assert page.input_value("#prompt") == "second", "the text is kept to send again"

    send(page, "third", max_tokens=8)
    assert page.inner_text("#error") == ""
    assert [m["content"] for m in sent[-1]["messages"]] == ["first", answer, "third"]
    assert roles(sent[-1]) == ["user", "assistant", "user"]


def test_stop_before_any_text_leaves_the_history(keyed_server, browser):
    page, sent = new_chat(browser, keyed_server.url, "tiny-dev", KEY, ignore_eos=True)
    send(page, "first", max_tokens=8)
    with paused(engine_core(keyed_server)):
        page.fill("#prompt", "second")
        with page.expect_request(CHAT_ROUTE):
            page.click("#send")
        page.click("#stop")
        page.wait_for_function("!document.getElementById('send').disabled")
    assert last(page, ".assistant", "el => el.dataset.stopped") == "true"
    assert last(page, ".assistant .answer") == ""
    assert page.inner_text("#error") == ""

    send(page, "third", max_tokens=8)
    assert roles(sent[-1]) == ["user", "assistant", "user"]
    assert [m["content"] for m in sent[-1]["messages"]][::2] == ["first", "third"]


def tokens(server, messages: list[dict]) -> int:
    response = httpx.post(f"{server.url}/tokenize", json={"model": "tiny-dev", "messages": messages, "add_generation_prompt": True},
                          headers={"Authorization": f"Bearer {KEY}"}, timeout=60)
    return response.json()["count"]


def test_history_is_cut_to_the_context_oldest_turns_first(keyed_server, browser):
    max_model_len = httpx.get(f"{keyed_server.url}/v1/models", headers={"Authorization": f"Bearer {KEY}"}).json()["data"][0]["max_model_len"]
    page, sent = new_chat(browser, keyed_server.url, "tiny-dev", KEY, ignore_eos=True)
    send(page, "first question", max_tokens=8)
    send(page, "second question", max_tokens=8)
    whole = [*sent[-1]["messages"], {"role": "assistant", "content": last(page, ".assistant .answer")},
             {"role": "user", "content": "third question"}]
    # max_tokens that the last exchange and the new turn leave room for, and the whole history not.
    max_tokens = max_model_len - tokens(keyed_server, whole[2:])
    # The reply itself may end at once (the test's stop strings): what counts is what was sent.
    page.unroute(CHAT_ROUTE)
    add_to_requests(page, sent, stop=[" ", "e", "a", "t"])
    send(page, "third question", max_tokens=max_tokens)

    assert page.inner_text("#error") == "", "vLLM took the request"
    kept = sent[-1]["messages"]
    assert kept == whole[2:], "the oldest exchange was left out, and only that"
    assert tokens(keyed_server, kept) + max_tokens <= max_model_len < tokens(keyed_server, whole) + max_tokens
    assert page.eval_on_selector_all(".forgotten", "els => els.map(el => el.textContent)") == [whole[0]["content"], whole[1]["content"]]


FIRST_ANSWER = "(document.querySelector('.assistant .answer') || {}).textContent || ''"


def paused_mid_stream(browser, server, engine) -> tuple[object, str, list[int]]:
    """A fresh chat page sending a 900-token request while the engine is throttled, stopped
    (SIGSTOP) once the page shows the reply's first text: (page, that text, the statuses of its
    chat requests). The page is then mid-stream however long this process waits for a CPU."""
    page, _ = new_chat(browser, server.url, "tiny-dev", KEY, ignore_eos=True)
    statuses: list[int] = []
    page.on("response", lambda r: statuses.append(r.status) if r.url.endswith("/v1/chat/completions") else None)
    page.fill("#max-tokens", "900")
    page.fill("#prompt", "Tell me a long story")
    engine.suspend()  # and left stopped: the test kills it

    def text_shown() -> bool:
        page.wait_for_timeout(50)
        return bool(page.evaluate(FIRST_ANSWER))

    with throttled(engine):
        page.click("#send")
        wait_until(text_shown)
    text = page.evaluate(FIRST_ANSWER)
    assert text and page.is_disabled("#send"), "the engine was stopped in the middle of the stream"
    return page, text, statuses


# Last in this module: it kills the server's engine.
def test_error_event_in_the_stream_is_shown_after_the_text(keyed_server, browser):
    engine = engine_core(keyed_server)
    page, first_text, statuses = paused_mid_stream(browser, keyed_server, engine)
    engine.kill()  # vLLM ends the open stream with data: {"error": ...}

    page.wait_for_function("!document.getElementById('send').disabled", timeout=120_000)
    page.screenshot(path=str(ARTIFACTS / "chat-page-error.png"), full_page=True)
    assert statuses == [200], "the error came inside a stream that had begun"
    assert page.inner_text("#error").startswith("EngineCore encountered an issue")  # vLLM's EngineDeadError
    assert last(page, ".assistant .answer").startswith(first_text), "the text before the error stays"
