"""LoRA adapters and a reasoning parser, on a catalog entry built from the tiny model."""

from __future__ import annotations

from scripts import generate
import httpx
import pytest
import yaml
from chat_page import last, new_chat, send
from conftest import ARTIFACTS, entry_named, serve_folder
from openai import OpenAI

from scripts.tiny import llama as tiny_model

pytestmark = pytest.mark.serves  # every test here serves a model: not in `make test-quick`

CHAT = [{"role": "user", "content": "Tell me a story about a robot."}]


@pytest.fixture(scope="module")
def features_server(bentoml_home, tmp_path_factory, catalog_data):
    entry = entry_named(catalog_data, "tiny-dev")
    entry["name"] = "tiny-features"
    entry["engine"].update(served_model_name="tiny-features", reasoning_parser="deepseek_r1")
    entry["lora_adapters"] = [{"name": "tiny-lora", "bentoml_tag": tiny_model.DEFAULT_LORA_TAG}]
    root = tmp_path_factory.mktemp("features")
    (root / "catalog.yaml").write_text(yaml.safe_dump({"models": [entry]}, sort_keys=False))
    assert generate.main(["--catalog", str(root / "catalog.yaml"), "--out", str(root / "models")]) == 0
    service = (root / "models" / "tiny-features" / "service.py").read_text()
    assert '"reasoning_parser": "deepseek_r1"' in service and '"enable_lora": True' in service
    assert "the model's thinking (split off by vLLM's reasoning parser) is\n        not streamed here" in service
    assert f'"tiny-lora": bentoml.models.BentoModel("{tiny_model.DEFAULT_LORA_TAG}")' in service
    with serve_folder(root / "models" / "tiny-features", "tiny-features", env={"BENTOML_HOME": bentoml_home},
                      timeout=600) as server:
        yield server


@pytest.fixture(scope="module")
def features_client(features_server) -> OpenAI:
    return OpenAI(base_url=f"{features_server.url}/v1", api_key="unused", max_retries=0)


def test_adapters_are_listed_as_models(features_client):
    models = {m.id: m for m in features_client.models.list().data}
    assert set(models) == {"tiny-features", "tiny-lora"}


def test_adapter_changes_the_output(features_client):
    def greedy(model: str) -> str:
        reply = features_client.completions.create(
            model=model, prompt="Once upon a time", max_tokens=24, temperature=0, extra_body={"ignore_eos": True}
        )
        assert reply.usage.completion_tokens == 24
        return reply.choices[0].text

    assert greedy("tiny-lora") != greedy("tiny-features")
    assert greedy("tiny-lora") == greedy("tiny-lora")


def test_reasoning_parser_splits_the_reply_at_the_end_of_thinking(features_client):
    """deepseek_r1 reads what comes before `</think>` as reasoning and the rest as the answer.

    A random model seldom writes `</think>`: `split_reply` nudges it with a logit bias and
    finds a seeded reply that holds the marker past its first token (repeatable per seed).
    """
    _, message = split_reply(features_client, CHAT, max_tokens=32)
    assert message["reasoning"] and message["content"], message
    assert "</think>" not in message["reasoning"], "the reasoning ends before the marker"


def test_generate_streams_the_answer_without_the_reasoning(features_server, features_client):
    """The service's `generate` API streams `content` only, as its docstring says."""
    body = {"prompt": CHAT[0]["content"], "max_tokens": 32, "temperature": 0}
    with httpx.stream("POST", f"{features_server.url}/generate", json=body, timeout=120) as response:
        assert response.status_code == 200
        streamed = "".join(response.iter_text())
    reply = features_client.chat.completions.create(model="tiny-features", messages=CHAT, max_tokens=32, temperature=0)
    message = reply.choices[0].message.model_dump()
    reasoning = message.get("reasoning") or message.get("reasoning_content")
    assert reasoning, "the same request has reasoning on /v1/chat/completions"
    assert streamed == (message["content"] or "")
    assert reasoning not in streamed


# In the page, the reasoning of the reply goes into a <details> that stays closed, as it streams.
WATCH_REASONING = """() => {
  window.reasoningSeen = null;
  new MutationObserver((changes, observer) => {
    const box = document.querySelector('.assistant .reasoning');
    if (box && box.textContent) {
      observer.disconnect();
      window.reasoningSeen = { open: box.open, streaming: document.getElementById('send').disabled };
    }
  }).observe(document.getElementById('log'), { childList: true, subtree: true, characterData: true });
}"""


def split_reply(client: OpenAI, messages: list[dict], max_tokens: int) -> tuple[dict, dict]:
    """Extra sampling settings (a seed, a nudge towards </think>; temperature 1) under which the random model's reply has
    both reasoning and an answer, and that reply."""
    url = str(client.base_url).removesuffix("/v1/")
    end_of_thinking = httpx.post(f"{url}/tokenize", json={"model": "tiny-features", "prompt": "</think>", "add_special_tokens": False}).json()["tokens"]
    for seed in range(40):
        extra = {"seed": seed, "logit_bias": {str(end_of_thinking[0]): 4.0}, "ignore_eos": True}
        reply = client.chat.completions.create(model="tiny-features", messages=messages, max_tokens=max_tokens,
                                               temperature=1.0, extra_body=extra)
        message = reply.choices[0].message.model_dump()
        if message.get("reasoning") and message.get("content"):
            return extra, message
    pytest.fail("no seed gave a reply with both reasoning and an answer")


def test_chat_page_shows_reasoning_folded_and_sends_back_only_the_answer(features_server, features_client, browser):
    question = "Why is the sky blue?"
    extra, expected = split_reply(features_client, [{"role": "user", "content": question}], max_tokens=24)
    page, sent = new_chat(browser, features_server.url, "tiny-features", **extra)
    page.fill("#temperature", "1")
    page.evaluate(WATCH_REASONING)
    send(page, question, max_tokens=24)

    assert page.evaluate("window.reasoningSeen") == {"open": False, "streaming": True}
    assert page.inner_text("#error") == ""
    assert last(page, ".assistant .reasoning .thought") == expected["reasoning"]
    assert last(page, ".assistant .answer") == expected["content"]
    assert not last(page, ".assistant .reasoning", "el => el.open"), "folded when the reply is over"
    page.screenshot(path=str(ARTIFACTS / "chat-page-reasoning.png"), full_page=True)

    send(page, "And why red at dusk?", max_tokens=4)
    assert sent[-1]["messages"][:2] == [{"role": "user", "content": question}, {"role": "assistant", "content": expected["content"]}]
