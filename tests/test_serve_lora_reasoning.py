"""LoRA adapters and a reasoning parser, on a catalog entry built from the tiny model."""

from __future__ import annotations

import generate
import pytest
import yaml
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
        server.wait_ready(timeout=300)
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
