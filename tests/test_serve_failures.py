"""A model that cannot load stops `bentoml serve` with a non-zero exit and the reason."""

from __future__ import annotations

import shutil
import subprocess

from conftest import ROOT, serve_folder


def broken_store_model(tmp_path, bentoml_home: str, breakage) -> dict[str, str]:
    """A copy of the BentoML home whose tiny model is broken by `breakage(model_dir)`."""
    home = tmp_path / "home"
    shutil.copytree(bentoml_home, home, symlinks=True)
    model_dir = home / "models" / "llm-bentos-tiny-dev" / "v2"
    breakage(model_dir)
    return {"BENTOML_HOME": str(home)}


def serve_until_exit(env: dict[str, str], name: str, timeout: float = 240) -> tuple[int, str]:
    with serve_folder(ROOT / "models" / "tiny-dev", name, env=env, ready=False) as server:
        try:
            code = server.process.wait(timeout)
        except subprocess.TimeoutExpired:
            code = None
    return code, server.log_path.read_text(errors="replace")


def test_missing_weights_stop_the_server_at_once(tmp_path, bentoml_home):
    def remove_weights(model_dir):
        for path in model_dir.glob("*.safetensors"):
            path.unlink()

    code, log = serve_until_exit(broken_store_model(tmp_path, bentoml_home, remove_weights), "missing-weights", timeout=60)
    assert code not in (0, None), log[-2000:]
    assert "model files missing" in log and "*.safetensors weights" in log


def test_model_missing_from_the_store_stops_the_server(tmp_path):
    code, log = serve_until_exit({"BENTOML_HOME": str(tmp_path / "empty")}, "missing-model", timeout=60)
    assert code not in (0, None)
    assert "llm-bentos-tiny-dev:v2 could not be found" in log


def test_engine_that_cannot_start_stops_the_server(tmp_path, bentoml_home):
    """Weights that are there but broken fail inside vLLM; the server must exit, not respawn."""

    def corrupt_weights(model_dir):
        for path in model_dir.glob("*.safetensors"):
            path.write_bytes(b"not a safetensors file")

    code, log = serve_until_exit(broken_store_model(tmp_path, bentoml_home, corrupt_weights), "corrupt-weights")
    assert code not in (0, None), log[-2000:]
    assert "vLLM could not start with: vllm serve --model" in log
    assert log.count("Service tiny-dev initialized") == 1, "the worker was restarted"
