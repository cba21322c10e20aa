"""The Hugging Face path users run: HuggingFaceModel resolving a pinned revision from the HF cache."""

from __future__ import annotations

import subprocess
import sys

import pytest

from scripts import generate
from conftest import ROOT, entry_named, serve_folder
from openai import OpenAI

pytestmark = pytest.mark.serves  # every test here serves a model: not in `make test-quick`

REPO_ID = "llm-bentos-test/tiny-llama"
REVISION = "0123456789abcdef0123456789abcdef01234567"


def test_hf_model_from_an_offline_cache_serves(tmp_path, write_catalog, catalog_data):
    cache = tmp_path / "hf-cache"
    subprocess.run(
        [sys.executable, "-m", "scripts.tiny", "--hf-cache", str(cache), "--repo-id", REPO_ID, "--revision", REVISION],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    entry = entry_named(catalog_data, "tiny-dev")
    entry.update(name="tiny-hf", model={"id": REPO_ID, "revision": REVISION})
    del entry["engine"]["served_model_name"]
    out = tmp_path / "models"
    assert generate.main(["--catalog", str(write_catalog([entry])), "--out", str(out)]) == 0
    assert f'MODEL = HubModel(\n    "{REPO_ID}",\n    revision="{REVISION}"' in (out / "tiny-hf" / "service.py").read_text()

    env = {"BENTOML_HF_CACHE_DIR": str(cache), "HF_HUB_OFFLINE": "1", "BENTOML_HOME": str(tmp_path / "bentoml")}
    with serve_folder(out / "tiny-hf", "hf-cache", env=env) as server:
        client = OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
        assert [m.id for m in client.models.list().data] == [REPO_ID]
        reply = client.chat.completions.create(
            model=REPO_ID, messages=[{"role": "user", "content": "Hi"}], max_tokens=5, extra_body={"ignore_eos": True}
        )
        assert reply.usage.completion_tokens == 5
