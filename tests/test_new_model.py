"""`make new`: from a Hub id (the local Hub), a local folder, a mixture-of-experts and an AWQ config
to a validated catalog entry, its folder, and the reasons; and each refusal writes nothing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from scripts.catalog import load_catalog, output_parsers
from conftest import GATED_REPO, ROOT, last_entry, make_new
from scripts.model_facts import ModelError, read_facts
from scripts.new_model import with_entry
from scripts.parsers import FAMILIES

# Real-shaped configs (numbers of the published config.json files); no weights are needed for sizing.
QWEN3_MOE = {
    "architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe", "torch_dtype": "bfloat16",
    "hidden_size": 2048, "intermediate_size": 6144, "moe_intermediate_size": 768, "num_hidden_layers": 48,
    "num_attention_heads": 32, "num_key_value_heads": 4, "head_dim": 128, "num_experts": 128,
    "num_experts_per_tok": 8, "decoder_sparse_step": 1, "mlp_only_layers": [], "vocab_size": 151936,
    "max_position_embeddings": 40960, "tie_word_embeddings": False, "rope_theta": 1000000.0,
}
QWEN25_AWQ = {
    "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "torch_dtype": "float16",
    "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28, "num_attention_heads": 28,
    "num_key_value_heads": 4, "vocab_size": 152064, "max_position_embeddings": 32768, "tie_word_embeddings": False,
    "quantization_config": {"bits": 4, "group_size": 128, "quant_method": "awq", "version": "gemm", "zero_point": True},
}
LLAMA31_8B = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "torch_dtype": "bfloat16",
    "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
    "num_key_value_heads": 8, "vocab_size": 128256, "max_position_embeddings": 131072, "tie_word_embeddings": False,
}
# Qwen's chat templates render tools and, for Qwen3, <think>; a shortened one says the same.
QWEN3_TEMPLATE = "{% if tools %}<tools>{{ tools | tojson }}</tools>{% endif %}{{ messages }}<think>\n\n</think>"
QWEN25_TEMPLATE = "{% if tools %}<tools>{{ tools | tojson }}</tools>{% endif %}{{ messages }}"


def config_folder(root: Path, name: str, config: dict, chat_template: str | None = None) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config))
    if chat_template is not None:
        (folder / "tokenizer_config.json").write_text(json.dumps({"chat_template": chat_template}))
    return folder


@pytest.fixture
def catalog_copy(tmp_path) -> Path:
    path = tmp_path / "repo" / "catalog.yaml"
    path.parent.mkdir()
    shutil.copy(ROOT / "catalog.yaml", path)
    return path


def assert_nothing_written(result, catalog: Path, message: str) -> None:
    assert result.returncode != 0 and "Error 1" in result.stderr, result.stdout + result.stderr  # make's line for exit 1
    lines = [line for line in result.stderr.splitlines() if line.startswith("make new:")]
    assert len(lines) == 1 and message in lines[0] and lines[0].endswith("nothing was written"), result.stderr
    assert catalog.read_text() == (ROOT / "catalog.yaml").read_text()
    assert not (catalog.parent / "models").exists()


def test_every_parser_in_the_family_table_is_registered_in_vllm():
    registered = output_parsers()
    for family in FAMILIES:
        assert family.tool_call_parser in (None, *registered["server.tool_call_parser"]), family
        assert family.reasoning_parser in (None, *registered["engine.reasoning_parser"]), family


@pytest.mark.parametrize("config,params,active,kv", [
    (LLAMA31_8B, 8.03, None, 2 * 32 * 8 * 128 * 2),
    (QWEN3_MOE, 30.53, 3.35, 2 * 48 * 4 * 128 * 2),
    (QWEN25_AWQ, 7.62, None, 2 * 28 * 4 * 128 * 2),
], ids=["llama3.1-8b", "qwen3-30b-a3b", "qwen2.5-7b-awq"])
def test_parameter_count_and_kv_bytes_from_config_match_the_published_sizes(tmp_path, config, params, active, kv):
    facts = read_facts(config_folder(tmp_path, "m", config))
    assert round(facts.params_billion, 2) == params
    assert (round(facts.active_params_billion, 2) if facts.active_params_billion else None) == active
    assert facts.kv_bytes_per_token == kv


def test_unknown_architecture_without_remote_code_is_refused(tmp_path):
    folder = config_folder(tmp_path, "m", {**LLAMA31_8B, "architectures": ["NoSuchModelForCausalLM"]})
    with pytest.raises(ModelError, match="unknown architecture NoSuchModelForCausalLM"):
        read_facts(folder)
    config = {**LLAMA31_8B, "architectures": ["NoSuchModelForCausalLM"], "auto_map": {"AutoModelForCausalLM": "m.NoSuch"}}
    (folder / "config.json").write_text(json.dumps(config))
    assert "auto_map" in read_facts(folder).remote_code


def test_entry_goes_at_the_end_of_models_before_a_later_list_and_its_comments():
    catalog = "# head comment\nmodels:\n  - name: a  # keep me\n    x: 1\n\n# the gateways\ngateways:\n  - name: g\n"
    result = with_entry(catalog, "  - name: b\n")
    assert result == "# head comment\nmodels:\n  - name: a  # keep me\n    x: 1\n\n  - name: b\n\n# the gateways\ngateways:\n  - name: g\n"
    assert [m["name"] for m in yaml.safe_load(result)["models"]] == ["a", "b"]


def test_moe_config_on_the_hub_gets_an_80gb_gpu_qwen3_parsers_and_the_pinned_commit(local_hub, tmp_path, catalog_copy):
    sha = local_hub.add("Qwen/Qwen3-30B-A3B", config_folder(tmp_path, "moe", QWEN3_MOE, QWEN3_TEMPLATE))
    # The repository's catalog already has an entry named qwen3-30b-a3b.
    result = make_new(local_hub.env(tmp_path), catalog_copy, "Qwen/Qwen3-30B-A3B", NAME="qwen3-moe-from-hub")
    assert result.returncode == 0, result.stderr
    entry = last_entry(catalog_copy)
    assert entry["name"] == "qwen3-moe-from-hub"
    assert entry["model"] == {"id": "Qwen/Qwen3-30B-A3B", "revision": sha}
    assert entry["resources"] == {"gpu": 1, "gpu_type": "nvidia-a100-80gb"}
    assert entry["engine"]["reasoning_parser"] == "qwen3" and "tensor_parallel_size" not in entry["engine"]
    assert entry["server"] == {"enable_auto_tool_choice": True, "tool_call_parser": "hermes"}
    assert (entry["params_billion"], entry["kv_bytes_per_token"], entry.get("envs")) == (30.53, 98304, None)
    assert f"# revision: resolved from main by {local_hub.url}" in catalog_copy.read_text()
    assert "= 62.7 GB <= 90% of 0.9 x 80 GB on 1 x nvidia-a100-80gb (64.8 GB)" in result.stdout
    assert "> 90% of 0.9 x 48 GB on 2 x nvidia-l4 (38.9 GB)" in result.stdout  # the larger option it passed over
    load_catalog(catalog_copy)
    assert '"reasoning_parser": "qwen3"' in (catalog_copy.parent / "models" / "qwen3-moe-from-hub" / "service.py").read_text()


def test_awq_config_gets_a_t4_and_awq_or_marlin_on_an_l4_when_asked(local_hub, tmp_path, catalog_copy):
    local_hub.add("Qwen/Qwen2.5-7B-Instruct-AWQ", config_folder(tmp_path, "awq", QWEN25_AWQ, QWEN25_TEMPLATE))
    env = local_hub.env(tmp_path)
    assert make_new(env, catalog_copy, "Qwen/Qwen2.5-7B-Instruct-AWQ", NAME="awq-t4").returncode == 0
    entry = last_entry(catalog_copy)
    assert entry["resources"] == {"gpu": 1, "gpu_type": "nvidia-tesla-t4"}
    assert entry["engine"]["quantization"] == "awq" and entry["engine"]["dtype"] == "float16"
    assert entry["server"]["tool_call_parser"] == "hermes" and "reasoning_parser" not in entry["engine"]
    result = make_new(env, catalog_copy, "Qwen/Qwen2.5-7B-Instruct-AWQ", NAME="awq-l4", GPU="nvidia-l4")
    assert result.returncode == 0, result.stderr
    assert last_entry(catalog_copy)["engine"]["quantization"] == "awq_marlin"
    assert [e.name for e in load_catalog(catalog_copy)][-2:] == ["awq-t4", "awq-l4"]


def test_local_folder_goes_into_the_model_store_and_the_entry_names_its_tag(tiny_folder, tmp_path, catalog_copy):
    env = {"BENTOML_HOME": str(tmp_path / "bentoml-home"), "HF_HUB_OFFLINE": "1"}
    result = make_new(env, catalog_copy, str(tiny_folder), NAME="my-tiny", GPU="cpu")
    assert result.returncode == 0, result.stderr
    entry = last_entry(catalog_copy)
    name, version = entry["model"]["bentoml_tag"].split(":")
    assert name == "my-tiny" and "id" not in entry["model"]
    stored = tmp_path / "bentoml-home" / "models" / name / version
    assert (stored / "config.json").read_bytes() == (tiny_folder / "config.json").read_bytes()
    assert (stored / "model.safetensors").stat().st_size == (tiny_folder / "model.safetensors").stat().st_size
    assert entry["resources"]["cpu"] and "gpu" not in entry["resources"]
    assert (catalog_copy.parent / "models" / "my-tiny" / "service.py").is_file()


def test_refusals_are_one_line_and_write_nothing(local_hub, tmp_path, catalog_copy):
    env = local_hub.env(tmp_path)
    assert_nothing_written(make_new(env, catalog_copy, "nobody/no-such-model"), catalog_copy,
                           f"nobody/no-such-model: not a model the Hub at {local_hub.url} knows")
    assert_nothing_written(make_new(env, catalog_copy, GATED_REPO), catalog_copy,
                           f"{GATED_REPO} is gated on {local_hub.url}: set HF_TOKEN")
    no_config = tmp_path / "no-config"
    no_config.mkdir()
    assert_nothing_written(make_new(env, catalog_copy, str(no_config)), catalog_copy, "no config.json in this folder")
    local_hub.add("Qwen/Qwen3-30B-A3B", config_folder(tmp_path, "moe", QWEN3_MOE, QWEN3_TEMPLATE))
    assert_nothing_written(make_new(env, catalog_copy, "Qwen/Qwen3-30B-A3B", GPU="nvidia-l4"), catalog_copy,
                           "GPU=nvidia-l4: 61.1 GB of weights + 1.6 GB KV cache of one 16384-token sequence = 62.7 GB > 90%")


def test_offline_hf_cache_snapshot_pins_its_commit_and_says_it_was_not_checked(tmp_path, catalog_copy):
    commit = "1234567890abcdef1234567890abcdef12345678"
    repo = tmp_path / "hf-home" / "hub" / "models--meta-llama--Llama-3.1-8B-Instruct"
    config_folder(repo / "snapshots", commit, LLAMA31_8B, QWEN25_TEMPLATE)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    env = {"HF_HOME": str(tmp_path / "hf-home"), "HF_HUB_OFFLINE": "1", "BENTOML_HOME": str(tmp_path / "bentoml-home")}
    result = make_new(env, catalog_copy, "meta-llama/Llama-3.1-8B-Instruct", NAME="llama-cached")
    assert result.returncode == 0, result.stderr
    entry = last_entry(catalog_copy)
    assert entry["model"] == {"id": "meta-llama/Llama-3.1-8B-Instruct", "revision": commit}
    assert entry["resources"] == {"gpu": 1, "gpu_type": "nvidia-l4"} and entry["server"]["tool_call_parser"] == "llama3_json"
    assert "# revision: the Hugging Face cache's snapshot for main (offline; not checked against the Hub)" in catalog_copy.read_text()
    assert "gated: not known offline" in result.stdout
