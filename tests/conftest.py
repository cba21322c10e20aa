"""Shared test setup: the repository's scripts/ and templates/ importable, and catalog helpers."""

from __future__ import annotations

import contextlib
import copy
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import yaml
from openai import OpenAI

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "scripts"), str(ROOT / "templates")]

from serving import ServerProcess, bento_server, free_port  # noqa: E402


@pytest.fixture(scope="session")
def catalog_data() -> dict:
    """The repository's catalog.yaml as plain data; tests change deep copies of it."""
    return yaml.safe_load((ROOT / "catalog.yaml").read_text())


@pytest.fixture
def write_catalog(tmp_path, catalog_data):
    """Write a catalog made of the given entries (default: two real ones) and return its path."""

    def write(entries: list[dict] | None = None, name: str = "catalog.yaml") -> Path:
        if entries is None:
            entries = [entry_named(catalog_data, "tiny-dev"), entry_named(catalog_data, "llama3.1-8b-instruct")]
        path = tmp_path / name
        path.write_text(yaml.safe_dump({"models": entries}, sort_keys=False))
        return path

    return write


def entry_named(catalog_data: dict, name: str) -> dict:
    return copy.deepcopy(next(m for m in catalog_data["models"] if m["name"] == name))


# Served models: real vLLM engine, real BentoML server, offline.
ARTIFACTS = ROOT / "tests" / "artifacts"


@pytest.fixture(scope="session")
def bentoml_home(tmp_path_factory) -> str:
    """A private BentoML home holding the tiny model, made by the repository's own script."""
    home = tmp_path_factory.mktemp("bentoml-home")
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "tiny_model.py")],
        env={**os.environ, "BENTOML_HOME": str(home)},
        check=True,
        capture_output=True,
    )
    return str(home)


@contextlib.contextmanager
def serve_folder(folder: Path, name: str, env: dict[str, str] | None = None, target: str = ".",
                 ready: bool = True, timeout: float = 300) -> Iterator[ServerProcess]:
    """`bentoml serve` of a model folder (or of a built Bento's tag given as `target`), its log
    in tests/artifacts/<name>.server.log; ready unless `ready=False`. On leaving, the server
    is stopped and every process it started must be gone, the BentoML worker (in a session of
    its own) and vLLM's engine included."""
    server = bento_server(folder, free_port(), env=env, log_path=ARTIFACTS / f"{name}.server.log", target=target)
    family = []
    try:
        with server:
            if ready:
                server.wait_ready(timeout=timeout)
            yield server
            family = server.descendants()
    finally:
        left = [p for p in family if still_running(p)]
        assert not left, f"still running after the server stopped: {[(p.pid, p.name()) for p in left]}"


def still_running(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.fixture(scope="module")
def tiny_server(bentoml_home, request):
    """`bentoml serve models/tiny-dev`, ready; stopped after the module's tests."""
    with serve_folder(ROOT / "models" / "tiny-dev", request.module.__name__, env={"BENTOML_HOME": bentoml_home}) as server:
        yield server


@pytest.fixture(scope="module")
def client(tiny_server) -> OpenAI:
    return OpenAI(base_url=f"{tiny_server.url}/v1", api_key="unused", max_retries=0, timeout=120)


# Tests that start several engines at once (a gateway): 1 GiB of KV cache each, plenty for
# the tiny model, instead of each its catalog share of this shared machine's memory.
SMALL_KV_CACHE_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1"}
