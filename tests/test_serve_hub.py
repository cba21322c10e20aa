"""The download path users take on first serve, against a Hub on localhost (scripts/tiny/hub.py).

`make new` pins the commit the Hub resolves for a gated repository; `bentoml serve` of that entry
then downloads exactly that revision through BentoML's HuggingFaceModel into an empty cache and
answers a chat request, and a restart on that cache serves without HF_TOKEN. Without HF_TOKEN
on an empty cache, with a token the Hub refuses, and with a revision the Hub lacks, `bentoml
serve` stops at once with a message naming what to fix.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from scripts import generate
import pytest
import yaml
from conftest import GATED_REPO, ROOT, entry_named, folder_server, last_entry, make_new, run_until_exit, serve_folder
from openai import OpenAI

pytestmark = pytest.mark.serves  # every test here serves a model: not in `make test-quick`

MISSING_REVISION = "0" * 40


@pytest.fixture(scope="module")
def gated_entry(local_hub, tmp_path_factory) -> tuple[Path, dict]:
    """`make new` of the gated tiny model, with the token, on CPU: (catalog path, entry)."""
    root = tmp_path_factory.mktemp("make-new-hub")
    catalog = root / "catalog.yaml"
    shutil.copy(ROOT / "catalog.yaml", catalog)
    result = make_new(local_hub.env(root, token=True), catalog, GATED_REPO, NAME="tiny-gated", GPU="cpu", MAX_MODEL_LEN="1024")
    assert result.returncode == 0, result.stdout + result.stderr
    return catalog, last_entry(catalog)


def quick_start_folder(entry: dict, tiny_dev: dict, root: Path) -> Path:
    """make new's entry rendered with tiny-dev's two start settings (a fixed KV cache, no
    torch.compile: catalog.yaml says why), which spare each serve about 25 s of engine setup
    on this machine and change nothing of the download path."""
    quick = {**entry, "engine": {**entry["engine"], **{k: tiny_dev["engine"][k] for k in ("kv_cache_memory_bytes", "enforce_eager")}}}
    path = root / "quick-start-catalog.yaml"
    path.write_text(yaml.safe_dump({"models": [quick]}, sort_keys=False))
    assert generate.main(["--catalog", str(path), "--out", str(root / "quick-start-models")]) == 0
    return root / "quick-start-models" / entry["name"]


def serve_env(local_hub, tmp_path: Path, token: bool) -> dict[str, str]:
    """A first serve: empty download cache and BentoML home, the local Hub as HF_ENDPOINT."""
    return {**local_hub.env(tmp_path, token=token), "BENTOML_HF_CACHE_DIR": str(tmp_path / "download-cache")}


def serve_until_exit(folder: Path, env: dict[str, str], name: str) -> tuple[int | None, str]:
    ended = run_until_exit(folder_server(folder, name, env=env), timeout=300)
    return ended.code, ended.log


def test_make_new_pins_the_commit_the_hub_resolved_and_marks_the_gated_model(local_hub, gated_entry):
    catalog, entry = gated_entry
    assert entry["model"] == {"id": GATED_REPO, "revision": local_hub.hub.repos[GATED_REPO].sha}
    assert entry["envs"] == ["HF_TOKEN"]
    assert local_hub.token not in catalog.read_text()
    assert local_hub.token not in "".join(p.read_text() for p in (catalog.parent / "models" / "tiny-gated").iterdir())


def ask(server) -> int:
    client = OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=120)
    reply = client.chat.completions.create(
        model=GATED_REPO, messages=[{"role": "user", "content": "Hi"}], max_tokens=5, extra_body={"ignore_eos": True}
    )
    return reply.usage.completion_tokens


def test_first_serve_downloads_the_pinned_revision_and_a_restart_serves_from_the_cache_without_hf_token(
    local_hub, gated_entry, tmp_path, catalog_data
):
    catalog, entry = gated_entry
    folder = quick_start_folder(entry, entry_named(catalog_data, "tiny-dev"), tmp_path)
    with serve_folder(folder, "hub-download", env=serve_env(local_hub, tmp_path, token=True), timeout=600) as server:
        assert ask(server) == 5
    snapshot = tmp_path / "download-cache" / f"models--{GATED_REPO.replace('/', '--')}" / "snapshots" / entry["model"]["revision"]
    assert (snapshot / "model.safetensors").is_file() and (snapshot / "config.json").is_file()
    assert local_hub.token not in server.log_path.read_text(errors="replace")

    # The same cache (weights in the image, or a mounted cache), no HF_TOKEN: it serves.
    with serve_folder(folder, "hub-warm-no-token", env=serve_env(local_hub, tmp_path, token=False), timeout=600) as server:
        assert ask(server) == 5


def test_gated_model_without_a_valid_hf_token_stops_serve_with_a_message_naming_it(local_hub, gated_entry, tmp_path):
    catalog, _ = gated_entry
    folder = catalog.parent / "models" / "tiny-gated"
    code, log = serve_until_exit(folder, serve_env(local_hub, tmp_path / "none", token=False), "hub-gated-no-token")
    assert code not in (0, None), log[-3000:]
    assert f"{GATED_REPO} at revision" in log and "is gated and HF_TOKEN is not set: set it to a token" in log, log[-3000:]
    assert "Environment variable 'HF_TOKEN' is required" not in log  # BentoML's own check lets it through
    wrong = {**serve_env(local_hub, tmp_path / "wrong", token=False), "HF_TOKEN": "not-" + local_hub.token}
    code, log = serve_until_exit(folder, wrong, "hub-gated-wrong-token")
    assert code not in (0, None), log[-3000:]
    assert f"{GATED_REPO} at revision" in log and "is gated: set HF_TOKEN to a token that was granted access" in log, log[-3000:]
    assert "Service tiny-gated initialized" not in log  # it stopped before any worker started


def test_revision_the_hub_lacks_stops_serve_with_a_message_naming_it(local_hub, gated_entry, tmp_path):
    catalog, entry = gated_entry
    moved = {**entry, "name": "tiny-gone", "model": {**entry["model"], "revision": MISSING_REVISION}}
    path = tmp_path / "catalog.yaml"
    path.write_text(yaml.safe_dump({"models": [moved]}, sort_keys=False))
    assert generate.main(["--catalog", str(path), "--out", str(tmp_path / "models")]) == 0
    code, log = serve_until_exit(tmp_path / "models" / "tiny-gone", serve_env(local_hub, tmp_path, token=True), "hub-missing-revision")
    assert code not in (0, None), log[-3000:]
    assert f"the Hub has no revision {MISSING_REVISION}" in log, log[-3000:]
