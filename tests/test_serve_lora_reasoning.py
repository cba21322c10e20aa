"""LoRA adapters and a reasoning parser, on a catalog entry built from the tiny model."""

from __future__ import annotations

import generate
import httpx
import pytest
import yaml
from chat_page import last, new_chat, send
from conftest import ARTIFACTS, entry_named
from openai import OpenAI
from serving import bento_server, free_port

import tiny_model

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
    assert f'"tiny-lora": bentoml.models.BentoModel("{tiny_model.DEFAULT_LORA_TAG}")' in service
    server = bento_server(root / "models" / "tiny-features", free_port(), env={"BENTOML_HOME": bentoml_home},
                          log_path=ARTIFACTS / "tiny-features.server.log")
    with server:
        server.wait_ready(timeout=600)
        yield OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)


def test_adapters_are_listed_as_models(features_server):
    models = {m.id: m for m in features_server.models.list().data}
    assert set(models) == {"tiny-features", "tiny-lora"}


def test_adapter_changes_the_output(features_server):
    def greedy(model: str) -> str:
        reply = features_server.completions.create(
            model=model, prompt="Once upon a time", max_tokens=24, temperature=0, extra_body={"ignore_eos": True}
        )
        assert reply.usage.completion_tokens == 24
        return reply.choices[0].text

    assert greedy("tiny-lora") != greedy("tiny-features")
    assert greedy("tiny-lora") == greedy("tiny-lora")


def test_reasoning_parser_splits_the_reply(features_server):
    # deepseek_r1 reads everything before </think> as reasoning; the random model rarely writes it.
    reply = features_server.chat.completions.create(
        model="tiny-features", messages=CHAT, max_tokens=16, temperature=0, extra_body={"ignore_eos": True}
    )
    message = reply.choices[0].message.model_dump()
    reasoning = message.get("reasoning") or message.get("reasoning_content")
    assert reasoning, message
    assert (message["content"] or "") + reasoning


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


def test_chat_page_shows_reasoning_folded_and_sends_back_only_the_answer(features_server, browser):
    question = "Why is the sky blue?"
    extra, expected = split_reply(features_server, [{"role": "user", "content": question}], max_tokens=24)
    page, sent = new_chat(browser, str(features_server.base_url).removesuffix("/v1/"), "tiny-features", **extra)
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
