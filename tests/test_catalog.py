"""Every catalog rule, each with an entry it rejects and one it accepts."""

from __future__ import annotations

import json

import pytest
from scripts.catalog import CatalogError, load_catalog
from conftest import ROOT, entry_named


def problems(write_catalog, entries) -> list[str]:
    try:
        load_catalog(write_catalog(entries))
    except CatalogError as exc:
        return exc.problems
    return []


def test_repository_catalog_is_valid_and_complete():
    entries = load_catalog(ROOT / "catalog.yaml")
    assert len(entries) >= 12
    names = {e.name for e in entries}
    assert {"tiny-dev", "llama3.1-8b-instruct", "llama3.3-70b-instruct", "e5-mistral-7b-instruct"} <= names
    assert any(e.task == "embed" for e in entries)
    assert any(not e.on_gpu and e.model.id for e in entries), "a CPU entry with real weights"
    assert any(e.engine.get("reasoning_parser") for e in entries)
    assert any(e.engine.get("tensor_parallel_size", 1) > 1 for e in entries)
    assert any("HF_TOKEN" in e.envs and e.model.id.startswith("google/gemma") for e in entries)


# (field path, bad value, fragment of the message, good value)
FIELD_CASES = [
    (("name",), "../escape", "string should match pattern", "fine-name"),
    (("name",), "has space", "string should match pattern", "has-dash"),
    (("name",), "Org/Model", "string should match pattern", "org.model"),
    (("model", "revision"), "main", "string should match pattern", "0e9e39f249a16976918f6564b8830bc894c89659"),
    (("engine", "max_model_len"), 0, "max_model_len: must be a positive integer", 4096),
    (("engine", "quantization"), "awk", "did you mean 'awq'", "awq"),
    (("resources", "gpu_type"), "nvidia-l5", "not one BentoCloud offers", "nvidia-a100-80gb"),
    (("envs",), ["hf_token"], "string should match pattern", ["HF_TOKEN"]),
    (("engine", "dtype"), "bfloat17", "vllm serve rejects it: argument --dtype: invalid choice", "float16"),
    (("server", "tool_call_parser"), "hermez", "did you mean 'hermes'", "hermes"),
    (("engine", "reasoning_parser"), "qwen4", "not a reasoning parser vLLM knows", "qwen3"),
    (("task",), "classify", "input should be 'generate', 'embed' or 'score'", "embed"),
]


@pytest.mark.parametrize("path,bad,message,good", FIELD_CASES, ids=[".".join(c[0]) + "=" + str(c[1]) for c in FIELD_CASES])
def test_field_rules(write_catalog, catalog_data, path, bad, message, good):
    def with_value(value):
        entry = entry_named(catalog_data, "llama3.1-8b-instruct")
        target = entry
        for key in path[:-1]:
            target = target.setdefault(key, {})
        target[path[-1]] = value
        return entry

    found = problems(write_catalog, [with_value(bad)])
    assert any(message.lower() in p.lower() for p in found), found
    assert all("entry 0" in p for p in found)
    assert problems(write_catalog, [with_value(good)]) == []


def test_unknown_engine_argument_suggests_the_vllm_spelling(write_catalog, catalog_data):
    entry = entry_named(catalog_data, "llama3.1-8b-instruct")
    entry["engine"]["max_model_length"] = 4096
    entry["server"]["tool_parser"] = "hermes"
    found = problems(write_catalog, [entry])
    assert any("engine.max_model_length: not a vLLM engine argument; did you mean 'max_model_len'?" in p for p in found), found
    assert any("server.tool_parser" in p and "did you mean 'tool_call_parser'" in p for p in found), found


def test_model_path_flags_are_the_services_own(write_catalog, catalog_data):
    entry = entry_named(catalog_data, "tiny-dev")
    entry["engine"]["model"] = "/elsewhere"
    assert any("engine.model: set by the service" in p for p in problems(write_catalog, [entry]))


def test_unknown_field_names_file_entry_and_field(write_catalog, catalog_data):
    entry = entry_named(catalog_data, "tiny-dev")
    entry["gpu_count"] = 1
    path = write_catalog([entry_named(catalog_data, "qwen3-8b"), entry])
    with pytest.raises(CatalogError) as exc:
        load_catalog(path)
    assert exc.value.problems == [f"{path}: entry 1 (tiny-dev): gpu_count: unknown field"]


def test_model_source_is_one_of_hub_or_store(write_catalog, catalog_data):
    both = entry_named(catalog_data, "tiny-dev")
    both["model"]["id"] = "org/name"
    neither = entry_named(catalog_data, "tiny-dev")
    neither["model"] = {}
    unpinned = entry_named(catalog_data, "qwen3-8b")
    del unpinned["model"]["revision"]
    found = problems(write_catalog, [both, neither, unpinned])
    assert sum("exactly one of `id`" in p for p in found) == 2
    assert any("entry 2 (qwen3-8b)" in p and "`revision` must pin" in p for p in found)


def test_parallelism_must_match_gpu_count(write_catalog, catalog_data):
    entry = entry_named(catalog_data, "llama3.3-70b-instruct")
    entry["engine"]["tensor_parallel_size"] = 2
    found = problems(write_catalog, [entry])
    assert any("tensor_parallel_size (2) x pipeline_parallel_size (1) = 2 must equal resources.gpu (4)" in p for p in found), found
    entry["engine"]["pipeline_parallel_size"] = 2
    assert problems(write_catalog, [entry]) == []


def test_gpu_type_and_count_go_together(write_catalog, catalog_data):
    no_type = entry_named(catalog_data, "qwen3-8b")
    del no_type["resources"]["gpu_type"]
    type_on_cpu = entry_named(catalog_data, "tiny-dev")
    type_on_cpu["resources"]["gpu_type"] = "nvidia-l4"
    found = problems(write_catalog, [no_type, type_on_cpu])
    assert any("entry 0" in p and "`gpu_type` is required" in p for p in found)
    assert any("entry 1" in p and "`gpu_type` needs `gpu` > 0" in p for p in found)


def test_weights_must_fit_the_gpus_with_room_for_kv_cache(write_catalog, catalog_data):
    entry = entry_named(catalog_data, "llama3.3-70b-instruct")
    del entry["kv_bytes_per_token"]  # without it, the weights alone are checked
    entry["resources"] = {"gpu": 1, "gpu_type": "nvidia-l4"}
    entry["engine"]["tensor_parallel_size"] = 1
    found = problems(write_catalog, [entry])
    assert any("141.1 GB of weights > 90% of 0.9 x 24 GB on 1 x nvidia-l4" in p for p in found), found
    entry["engine"]["quantization"] = "awq"
    entry["resources"] = {"gpu": 1, "gpu_type": "nvidia-a100-80gb"}
    assert problems(write_catalog, [entry]) == []


def test_names_are_unique(write_catalog, catalog_data):
    found = problems(write_catalog, [entry_named(catalog_data, "tiny-dev")] * 2)
    assert found and "entry 1 (tiny-dev): name: duplicate of entry 0" in found[0]


def test_all_problems_are_reported_at_once(write_catalog, catalog_data):
    first = entry_named(catalog_data, "tiny-dev")
    first["engine"]["max_model_len"] = -1
    second = entry_named(catalog_data, "qwen3-8b")
    second["resources"]["gpu_type"] = "nvidia-l5"
    found = problems(write_catalog, [first, second])
    assert any("entry 0 (tiny-dev)" in p for p in found) and any("entry 1 (qwen3-8b)" in p for p in found)


def test_unreadable_catalog(tmp_path):
    broken = tmp_path / "catalog.yaml"
    broken.write_text("models: [\n  - name: x\n")
    with pytest.raises(CatalogError, match="cannot read"):
        load_catalog(broken)
    broken.write_text("- a list, not a mapping\n")
    with pytest.raises(CatalogError, match="expected a mapping with a `models:` list"):
        load_catalog(broken)


def test_lora_adapters_are_sources_with_unique_names(write_catalog, catalog_data):
    entry = entry_named(catalog_data, "tiny-dev")
    entry["lora_adapters"] = [{"name": "sql", "bentoml_tag": "sql-lora:v1"}, {"name": "sql", "id": "org/chat-lora"}]
    found = problems(write_catalog, [entry])
    assert any("lora_adapters.1: Value error, `revision` must pin" in p or "lora_adapters.1: `revision` must pin" in p for p in found), found
    entry["lora_adapters"][1] = {"name": "sql", "id": "org/chat-lora", "revision": "0" * 40}
    assert any("names must differ" in p for p in problems(write_catalog, [entry]))
    entry["lora_adapters"][1]["name"] = "chat"
    assert problems(write_catalog, [entry]) == []


# Phi-3 mini's config.json at the catalog's revision (the fields that choose the classes): it has
# an auto_map to its own code, and model_type phi3, which transformers and vLLM know natively.
PHI3_MINI_CONFIG = {
    "architectures": ["Phi3ForCausalLM"],
    "auto_map": {"AutoConfig": "configuration_phi3.Phi3Config", "AutoModelForCausalLM": "modeling_phi3.Phi3ForCausalLM"},
    "model_type": "phi3", "hidden_size": 3072, "intermediate_size": 8192, "num_hidden_layers": 32,
    "num_attention_heads": 32, "num_key_value_heads": 32, "max_position_embeddings": 4096,
    "original_max_position_embeddings": 4096, "rope_scaling": None, "sliding_window": 2047, "vocab_size": 32064,
}


def test_phi3_mini_loads_without_remote_code(tmp_path, catalog_data):
    from vllm import ModelRegistry
    from vllm.transformers_utils.config import get_config

    assert "trust_remote_code" not in entry_named(catalog_data, "phi3-mini-4k-instruct")["engine"]
    (tmp_path / "config.json").write_text(json.dumps(PHI3_MINI_CONFIG))
    config = get_config(tmp_path, trust_remote_code=False)
    assert type(config).__module__ == "transformers.models.phi3.configuration_phi3"
    assert config.architectures == ["Phi3ForCausalLM"] and "Phi3ForCausalLM" in ModelRegistry.get_supported_archs()


def test_kv_cache_of_one_full_sequence_must_fit_beside_the_weights(write_catalog, catalog_data):
    entry = entry_named(catalog_data, "llama3.1-8b-instruct")
    entry["kv_bytes_per_token"] = 2 * 32 * 8 * 128 * 2  # layers x KV heads x head_dim, K and V, bf16
    assert problems(write_catalog, [entry]) == []  # 16.1 GB + 1.1 GB for 8192 tokens on an L4
    entry["engine"]["max_model_len"] = 131072
    found = problems(write_catalog, [entry])
    expected = "16.1 GB of weights + 17.2 GB KV cache of one 131072-token sequence = 33.2 GB > 90% of 0.9 x 24 GB on 1 x nvidia-l4 (19.4 GB)"
    assert any(expected in p for p in found), found
    entry["kv_bytes_per_token"] = 0
    assert any("kv_bytes_per_token" in p and "greater than 0" in p for p in problems(write_catalog, [entry]))


CANARY = "hf_" + "Canary0123456789" * 3  # shaped like a Hugging Face token

# (section, setting, value, the environment variable the message names)
SECRET_CASES = [
    ("engine", "hf_token", CANARY, "HF_TOKEN"),
    ("engine", "hf_token", True, "HF_TOKEN"),  # "the token of `hf auth login`": not in a Bento either
    ("server", "api_key", ["sk-canary"], "VLLM_API_KEY"),
    ("engine", "api_key", "sk-canary", "VLLM_API_KEY"),  # in the wrong section, still a secret
]


@pytest.mark.parametrize("section,key,value,env", SECRET_CASES, ids=[f"{c[0]}.{c[1]}={c[2]!r}" for c in SECRET_CASES])
def test_a_secret_setting_is_refused_with_the_variable_to_use(write_catalog, catalog_data, section, key, value, env):
    entry = entry_named(catalog_data, "llama3.1-8b-instruct")
    entry[section][key] = value
    path = write_catalog([entry])
    found = problems(write_catalog, [entry])
    assert found == [
        f"{path}: entry 0 (llama3.1-8b-instruct): {section}.{key}: a secret would be written into the generated "
        f"service.py; list {env} under `envs:` and give its value in the environment or a BentoCloud secret"
    ]


def test_a_credential_inside_a_json_setting_is_refused(write_catalog, catalog_data):
    entry = entry_named(catalog_data, "llama3.1-8b-instruct")
    entry["engine"]["kv_transfer_config"] = {"kv_connector": "X", "kv_connector_extra_config": {"aws_secret_access_key": "canary"}}
    entry["engine"]["hf_overrides"] = {"eos_token_id": 2, "note": f"token {CANARY}"}  # eos_token_id is no credential
    found = problems(write_catalog, [entry])
    assert len(found) == 2, found
    assert "engine.kv_transfer_config.kv_connector_extra_config.aws_secret_access_key: a secret would be written" in found[0]
    assert "engine.hf_overrides.note: holds a Hugging Face token; list HF_TOKEN under `envs:`" in found[1]
    assert not any("canary" in p.lower() for p in found), "a problem line never repeats the secret"


def test_server_settings_that_do_nothing_in_bentoml_are_refused_with_the_reason(write_catalog, catalog_data):
    from scripts.catalog import NO_EFFECT_SETTINGS

    entry = entry_named(catalog_data, "tiny-dev")
    entry["server"] = {key: 1 for key in NO_EFFECT_SETTINGS}
    found = problems(write_catalog, [entry])
    assert len(found) == len(NO_EFFECT_SETTINGS), found
    for line, (key, reason) in zip(found, NO_EFFECT_SETTINGS.items()):
        assert line.endswith(f"entry 0 (tiny-dev): server.{key}: does nothing inside a BentoML service: {reason}")
    assert "server.port: does nothing inside a BentoML service: BentoML binds the port" in found[1]


def test_the_no_effect_table_names_only_settings_vllm_serve_takes():
    """Each name in the table is a `vllm serve` flag of the pinned vLLM: no typo, none renamed away."""
    from scripts.catalog import NO_EFFECT_SETTINGS, SECRET_SETTINGS
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    flags = {action.dest for action in make_arg_parser(FlexibleArgumentParser())._actions}
    assert set(NO_EFFECT_SETTINGS) | set(SECRET_SETTINGS) <= flags


def test_server_settings_that_vllms_app_reads_are_still_accepted(write_catalog, catalog_data):
    entry = entry_named(catalog_data, "tiny-dev")
    entry["server"] = {"enable_request_id_headers": True, "disable_fastapi_docs": True, "allow_credentials": False}
    assert problems(write_catalog, [entry]) == []
