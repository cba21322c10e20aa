"""The catalog's breadth: current families, MoE, FP8, GPTQ, vision, embeddings and a reranker,
each on GPUs its weights and one full-length sequence's KV cache fit, each revision with its source."""

from __future__ import annotations

import re

import pytest
from scripts.catalog import entry_engine_config, load_catalog
from conftest import ROOT, entry_named
from test_catalog import problems

ENTRIES = {e.name: e for e in load_catalog(ROOT / "catalog.yaml")}

# name -> (GB of weights, GB of KV cache for one max_model_len sequence, usable GB on its GPUs):
# params x bytes per weight, kv_bytes_per_token x max_model_len, 90% of utilization x GPU memory.
FIT_NUMBERS = {
    "qwen3-32b": (65.5, 8.6, 129.6),
    "qwen3-30b-a3b": (61.1, 3.2, 129.6),
    "qwen3-235b-a22b-fp8": (235.1, 6.3, 259.2),
    "gpt-oss-20b": (11.8, 6.4, 64.8),
    "gemma3-12b-it": (24.4, 12.9, 64.8),
    "qwen2.5-vl-7b-instruct": (16.6, 0.9, 19.4),
    "llama4-scout-17b-16e-instruct": (217.3, 6.4, 259.2),
    "phi4-14b": (29.3, 3.4, 64.8),
    "mistral-small-24b-instruct-2501": (47.1, 5.4, 64.8),
    "deepseek-r1-distill-llama-8b": (16.1, 2.1, 19.4),
    "qwen2.5-14b-instruct-gptq-int4": (8.3, 6.4, 19.4),
    "qwen3-embedding-0.6b": (1.2, 0.9, 19.4),
    "bge-reranker-v2-m3": (1.1, None, 19.4),
}


def test_catalog_has_the_families_people_serve_today():
    assert len(ENTRIES) >= 28
    ids = {e.model.id for e in ENTRIES.values()}
    assert {"Qwen/Qwen3-8B", "Qwen/Qwen3-32B", "Qwen/Qwen3-30B-A3B", "openai/gpt-oss-20b", "google/gemma-3-12b-it",
            "microsoft/phi-4", "mistralai/Mistral-Small-24B-Instruct-2501", "deepseek-ai/DeepSeek-R1-Distill-Llama-8B",
            "meta-llama/Llama-4-Scout-17B-16E-Instruct", "Qwen/Qwen2.5-VL-7B-Instruct"} <= ids
    gpt_oss = ENTRIES["gpt-oss-20b"]
    assert (gpt_oss.engine["reasoning_parser"], gpt_oss.server["tool_call_parser"]) == ("openai_gptoss", "openai")
    assert any(e.engine.get("quantization") == "fp8" and e.resources.gpu_type == "nvidia-h100-80gb" for e in ENTRIES.values())
    assert any(e.engine.get("quantization", "").startswith("gptq") for e in ENTRIES.values())
    vision = [e for e in ENTRIES.values() if e.accepts_images and e.on_gpu]
    assert len(vision) >= 2 and any("gemma-3" in e.model.id for e in vision)
    assert ENTRIES["qwen3-embedding-0.6b"].task == "embed" and ENTRIES["bge-reranker-v2-m3"].task == "score"
    gated = {"meta-llama", "google", "mistralai"}
    assert all("HF_TOKEN" in e.envs for e in ENTRIES.values() if e.model.id and e.model.id.split("/")[0] in gated)


@pytest.mark.parametrize("name", sorted(FIT_NUMBERS))
def test_new_gpu_entry_fits_with_its_numbers(name):
    fit = ENTRIES[name].gpu_fit
    weights, kv, usable = FIT_NUMBERS[name]
    assert fit.fits, fit.explain()
    assert fit.weights_gb == pytest.approx(weights, abs=0.05)
    assert fit.kv_gb == (pytest.approx(kv, abs=0.05) if kv is not None else None)
    assert fit.usable_gb == pytest.approx(usable, abs=0.05)


# qwen3-30b-a3b would just fit one H100 (64.3 of 64.8 GB): it takes two for KV cache beyond one sequence.
NEED_ALL_THEIR_GPUS = ["llama4-scout-17b-16e-instruct", "qwen3-235b-a22b-fp8", "qwen3-32b"]


@pytest.mark.parametrize("name", NEED_ALL_THEIR_GPUS)
def test_big_entry_does_not_fit_on_half_its_gpus(write_catalog, catalog_data, name):
    entry = entry_named(catalog_data, name)
    entry["resources"]["gpu"] //= 2
    entry["engine"]["tensor_parallel_size"] //= 2
    found = problems(write_catalog, [entry])
    assert any(" > 90% of 0.9 x " in p for p in found), found


def test_every_pinned_revision_says_where_it_came_from():
    lines = (ROOT / "catalog.yaml").read_text().splitlines()
    for number, line in enumerate(lines):
        if re.match(r"\s+revision: [0-9a-f]{40}$", line):
            assert lines[number - 1].strip().startswith("# revision:"), f"catalog.yaml line {number + 1}: no source"


def test_score_entries_run_the_pooling_runner_and_vision_entries_limit_images():
    for entry in ENTRIES.values():
        config = entry_engine_config(entry)
        assert (config.get("runner") == "pooling") == (entry.task in ("embed", "score")), entry.name
        if entry.accepts_images:
            assert entry.task == "generate" and entry.engine["limit_mm_per_prompt"]["image"] >= 1


def test_score_folder_serves_no_chat_page(tmp_path):
    service = (ROOT / "models" / "bge-reranker-v2-m3" / "service.py").read_text()
    readme = (ROOT / "models" / "bge-reranker-v2-m3" / "README.md").read_text()
    assert "chat_page" not in service and "/rerank" in service and "'runner': 'pooling'" in service.replace('"', "'")
    assert "localhost:3000/rerank" in readme and "/chat" not in readme
    vision_readme = (ROOT / "models" / "qwen2.5-vl-7b-instruct" / "README.md").read_text()
    assert '"image_url"' in vision_readme and "up to 2 per request" in vision_readme
