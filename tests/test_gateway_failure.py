"""A model of the gateway that cannot load ends the whole `bentoml serve`, leaving no process behind."""

from __future__ import annotations

import shutil

import pytest

from conftest import ROOT, SMALL_KV_CACHE_ENV, folder_server, run_until_exit

pytestmark = pytest.mark.serves  # every test here serves a model: not in `make test-quick`


def test_model_that_cannot_load_stops_the_gateway_and_every_model_service(tmp_path, bentoml_home):
    home = tmp_path / "home"
    shutil.copytree(bentoml_home, home, symlinks=True)
    # Only tiny-think serves the LoRA adapter: its engine starts, then vLLM fails on the adapter,
    # while tiny-dev and tiny-embed load as usual.
    for path in (home / "models" / "llm-bentos-tiny-lora" / "v1").glob("*.safetensors"):
        path.write_bytes(b"not a safetensors file")
    server = folder_server(ROOT / "models" / "tiny-gateway", "tiny-gateway-broken",
                           env={"BENTOML_HOME": str(home), **SMALL_KV_CACHE_ENV})
    # No process left behind: run_until_exit gives the other services 10 s to stop their engines.
    ended = run_until_exit(server, timeout=600)
    assert ended.code not in (0, None), ended.log[-3000:]
    assert "vLLM could not start with: vllm serve --model" in ended.log and "tiny-lora" in ended.log
    assert any("--service-name tiny-dev" in cmd for cmd in ended.commands), "the other model services had started"
