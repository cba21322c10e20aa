"""LoRA adapters and a reasoning parser, on a catalog entry built from the tiny model."""

from __future__ import annotations

import generate
import httpx
import pytest
import yaml
from conftest import entry_named, serve_folder
from openai import OpenAI

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
    assert "the model's thinking (split off by vLLM's reasoning parser) is\n        not streamed here" in service
    assert f'"tiny-lora": bentoml.models.BentoModel("{tiny_model.DEFAULT_LORA_TAG}")' in service
    with serve_folder(root / "models" / "tiny-features", "tiny-features", env={"BENTOML_HOME": bentoml_home}) as server:
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


def token_id(url: str, text: str) -> int:
    """The one token of `text`, from vLLM's /tokenize."""
    response = httpx.post(f"{url}/tokenize", json={"model": "tiny-features", "prompt": text, "add_special_tokens": False})
    (token,) = response.json()["tokens"]
    return token


def sampled_chat(client: OpenAI, seed: int, **extra) -> dict:
    """One seeded chat of 32 tokens: its reasoning and its answer, as vLLM's parser split them."""
    reply = client.chat.completions.create(
        model="tiny-features", messages=CHAT, max_tokens=32, temperature=1.0, seed=seed,
        extra_body={"ignore_eos": True, **extra},
    )
    message = reply.choices[0].message.model_dump()
    return {"reasoning": message.get("reasoning") or message.get("reasoning_content") or "",
            "content": message["content"] or ""}


def test_reasoning_parser_splits_the_reply_at_the_end_of_thinking(features_server, features_client):
    """deepseek_r1 reads what comes before `</think>` as reasoning and the rest as the answer.

    A random model seldom writes `</think>`: a logit bias of 4 lifts it from about 1 in 512
    tokens to about 1 in 10, so that in 32 sampled tokens it mostly comes, and mostly not
    first. Each seed is repeatable; the first seed whose reply holds the marker past its
    first token is the one checked.
    """
    end = token_id(features_server.url, "</think>")
    tries = {}
    for seed in range(12):
        reply = tries[seed] = sampled_chat(features_client, seed, logit_bias={str(end): 4.0})
        if reply["reasoning"] and reply["content"]:
            break
    assert reply["reasoning"] and reply["content"], f"no seed split the reply: {tries}"
    assert "</think>" not in reply["reasoning"], "the reasoning ends before the marker"


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
