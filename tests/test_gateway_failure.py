"""A model of the gateway that cannot load ends the whole `bentoml serve`, leaving no process behind."""

from __future__ import annotations

import shutil
import subprocess
import time

import psutil
from conftest import ARTIFACTS, ROOT, SMALL_KV_CACHE_ENV
from serving import bento_server, free_port


def test_model_that_cannot_load_stops_the_gateway_and_every_model_service(tmp_path, bentoml_home):
    home = tmp_path / "home"
    shutil.copytree(bentoml_home, home, symlinks=True)
    # Only tiny-think serves the LoRA adapter: its engine starts, then vLLM fails on the adapter,
    # while tiny-dev and tiny-embed load as usual.
    for path in (home / "models" / "llm-bentos-tiny-lora" / "v1").glob("*.safetensors"):
        path.write_bytes(b"not a safetensors file")
    server = bento_server(ROOT / "models" / "tiny-gateway", free_port(), env={"BENTOML_HOME": str(home), **SMALL_KV_CACHE_ENV},
                          log_path=ARTIFACTS / "tiny-gateway-broken.server.log")
    seen: dict[int, str] = {}
    with server:
        supervisor = psutil.Process(server.process.pid)
        deadline = time.monotonic() + 600
        while server.process.poll() is None and time.monotonic() < deadline:
            try:
                seen.update({p.pid: " ".join(p.cmdline()) for p in supervisor.children(recursive=True)})
            except psutil.Error:
                pass
            time.sleep(0.5)
        code = server.process.poll()
        time.sleep(10)  # time for the other services to stop their engines
        left = [cmd for pid, cmd in seen.items() if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]
    log = server.log_path.read_text(errors="replace")
    assert code not in (0, None), log[-3000:]
    assert "vLLM could not start with: vllm serve --model" in log and "tiny-lora" in log
    assert any("--service-name tiny-dev" in cmd for cmd in seen.values()), "the other model services had started"
    assert left == [], f"processes left behind: {left}"
