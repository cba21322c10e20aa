"""scripts/tiny/llama.py: the offline tiny Llama is deterministic, servable-shaped, and lands where asked."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import importlib
import textwrap
from pathlib import Path

import pytest

from scripts.tiny import common
from scripts.tiny import llama as tiny_model

ROOT = Path(__file__).resolve().parents[1]
SHA = "0123456789abcdef0123456789abcdef01234567"


def file_hashes(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def run_python(code: str, **env: str) -> str:
    """Run code in a fresh interpreter (for settings libraries read once at import) and return its stdout."""
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env={**os.environ, "BENTOML_DO_NOT_TRACK": "true", **env},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory) -> Path:
    return tiny_model.save_hf_folder(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def tokenizer():
    return common.build_tokenizer()


def test_two_builds_are_byte_identical(hf_folder, tmp_path):
    # The second build runs through the CLI in another process, so nothing is shared in memory.
    subprocess.run([sys.executable, "-m", "scripts.tiny", "--out", str(tmp_path / "again")], cwd=ROOT, check=True, capture_output=True)
    first, second = file_hashes(hf_folder), file_hashes(tmp_path / "again")
    assert {"config.json", "model.safetensors", "tokenizer.json", "generation_config.json"} <= set(first)
    assert first == second


def test_config_suits_vllm_on_cpu(hf_folder):
    config = json.loads((hf_folder / "config.json").read_text())
    assert config["head_dim"] >= 64
    assert config["hidden_size"] // config["num_attention_heads"] >= 64
    assert config["vocab_size"] == common.VOCAB_SIZE
    assert config["dtype"] == config["torch_dtype"] == "float32"
    assert config["tie_word_embeddings"] is False


def test_tokenizer_round_trips_text(tokenizer):
    text = "Hello! What is the weather like in Paris? 42 <tool_call>{}</tool_call>"
    ids = tokenizer(text)["input_ids"]
    assert ids[0] == tokenizer.bos_token_id
    assert tokenizer.decode(ids, skip_special_tokens=True) == text
    assert len(tokenizer) == common.VOCAB_SIZE
    for token in common.SPECIAL_TOKENS + common.ADDED_TOKENS:
        assert len(tokenizer(token, add_special_tokens=False)["input_ids"]) == 1, token
    assert tokenizer.eos_token == "<|eot_id|>"


def test_chat_template_renders_generation_prompt(tokenizer):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    without = tokenizer.apply_chat_template(messages, tokenize=False, tools=None)
    assert without.endswith("Hi<|eot_id|>")


def test_chat_template_renders_tools_and_tool_calls(tokenizer):
    tool = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
    messages = [
        {"role": "user", "content": "Weather?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
    ]
    text = tokenizer.apply_chat_template(messages, tools=[tool], tokenize=False, add_generation_prompt=True)
    assert json.dumps(tool) in text
    assert '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>' in text
    assert "<|start_header_id|>tool<|end_header_id|>\n\nsunny<|eot_id|>" in text


def test_store_import_is_idempotent(tmp_path):
    # bentoml reads BENTOML_HOME once, when its container is first used: a fresh process per home.
    out = run_python(
        """
        import bentoml
        from scripts.tiny import llama
        from scripts.tiny.store import import_tiny_model
        first = import_tiny_model(llama.DEFAULT_TAG)
        yaml = bentoml.models.get(first).path_of("model.yaml")
        before = open(yaml).read()
        second = import_tiny_model(llama.DEFAULT_TAG)
        assert open(yaml).read() == before
        print("RESULT", first, second, [str(m.tag) for m in bentoml.models.list()])
        """,
        BENTOML_HOME=str(tmp_path),
        PYTHONPATH=str(ROOT),
    )
    assert f"RESULT {tiny_model.DEFAULT_TAG} {tiny_model.DEFAULT_TAG} ['{tiny_model.DEFAULT_TAG}']" in out
    assert "already in the BentoML model store" in out
    stored = tmp_path / "models" / "llm-bentos-tiny-dev" / "v2"
    assert (stored / "model.safetensors").is_file() and (stored / "tokenizer.json").is_file()


def test_hf_cache_resolves_offline(tmp_path):
    snapshot = tiny_model.place_in_hf_cache(tmp_path, "llm-bentos/tiny-dev", SHA)
    assert snapshot == tmp_path / "models--llm-bentos--tiny-dev" / "snapshots" / SHA
    # huggingface_hub reads HF_HUB_OFFLINE at import.
    out = run_python(
        f"""
        from huggingface_hub import snapshot_download
        print(snapshot_download("llm-bentos/tiny-dev", revision="{SHA}", cache_dir="{tmp_path}"))
        print(snapshot_download("llm-bentos/tiny-dev", cache_dir="{tmp_path}"))
        """,
        HF_HUB_OFFLINE="1",
    )
    assert out.split() == [str(snapshot), str(snapshot)]
    assert (snapshot / "config.json").is_file()


def test_hf_cache_wants_a_commit_sha(tmp_path):
    with pytest.raises(ValueError, match="commit hash"):
        tiny_model.place_in_hf_cache(tmp_path, "llm-bentos/tiny-dev", "main")


@pytest.mark.parametrize("module", ["vl", "rerank"])
def test_vision_and_reranker_builds_are_byte_identical_and_servable_shaped(tmp_path, module):
    builder = importlib.import_module(f"scripts.tiny.{module}")
    first, second = builder.save_hf_folder(tmp_path / "first"), builder.save_hf_folder(tmp_path / "second")
    assert file_hashes(first) == file_hashes(second)
    config = json.loads((first / "config.json").read_text())
    text = config.get("text_config", config)
    assert text["hidden_size"] // text["num_attention_heads"] >= 64  # vLLM's CPU attention
    if module == "vl":
        assert config["architectures"] == ["Idefics3ForConditionalGeneration"]
        tokenizer = json.loads((first / "tokenizer_config.json").read_text())
        assert (first / "processor_config.json").is_file() and tokenizer["tokenizer_class"] == "PreTrainedTokenizerFast"
    else:
        assert config["architectures"] == ["BertForSequenceClassification"] and config["id2label"] == {"0": "LABEL_0"}
