"""Shared test setup: the repository's scripts/ and templates/ importable, and catalog helpers."""

from __future__ import annotations

import copy
import os
import secrets
import subprocess
import sys
import typing as t
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from openai import OpenAI

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "scripts"), str(ROOT / "templates")]

from serving import bento_server, free_port  # noqa: E402



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


@pytest.fixture(scope="module")
def tiny_server(bentoml_home, request):
    """`bentoml serve models/tiny-dev`, ready; stopped after the module's tests."""
    server = bento_server(
        ROOT / "models" / "tiny-dev",
        free_port(),
        env={"BENTOML_HOME": bentoml_home},
        log_path=ARTIFACTS / f"{request.module.__name__}.server.log",
    )
    with server:
        server.wait_ready(timeout=300)
        yield server


@pytest.fixture(scope="module")
def client(tiny_server) -> OpenAI:
    return OpenAI(base_url=f"{tiny_server.url}/v1", api_key="unused", max_retries=0, timeout=120)


# A Hugging Face Hub on localhost (scripts/local_hub.py), reached through HF_ENDPOINT.
TINY_REPO = "llm-bentos-test/tiny-chat"
GATED_REPO = "llm-bentos-test/tiny-gated"


@dataclass
class HubForTests:
    url: str
    token: str  # random, made for this run; it opens GATED_REPO
    hub: t.Any  # local_hub.LocalHub: tests may add repositories to hub.repos

    def env(self, tmp_path: Path, token: bool = False) -> dict[str, str]:
        """Environment of a process that talks to this Hub, with a private HF cache (and HF_TOKEN)."""
        env = {"HF_ENDPOINT": self.url, "HF_HOME": str(tmp_path / "hf-home"), "HF_HUB_OFFLINE": "0",
               "HF_HUB_DISABLE_TELEMETRY": "1", "BENTOML_HOME": str(tmp_path / "bentoml-home")}
        return {**env, "HF_TOKEN": self.token} if token else env

    def add(self, repo_id: str, folder: Path, gated: bool = False) -> str:
        """Serve folder as repo_id; return its commit."""
        from local_hub import Repo

        self.hub.repos[repo_id] = Repo(folder, gated=gated)
        return self.hub.repos[repo_id].sha


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory) -> Path:
    """The tiny model as a plain Hugging Face folder, made by the repository's own script."""
    folder = tmp_path_factory.mktemp("tiny-folder") / "tiny"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "tiny_model.py"), "--out", str(folder)], check=True, capture_output=True)
    return folder


@pytest.fixture(scope="session")
def local_hub(tiny_folder) -> t.Iterator[HubForTests]:
    """The Hub stand-in with the tiny model, public and gated; its token exists only in this process."""
    from local_hub import LocalHub, serve_in_thread

    hub = LocalHub({}, token=secrets.token_urlsafe(24))
    with serve_in_thread(hub) as url:
        hub_for_tests = HubForTests(url, hub.token, hub)
        hub_for_tests.add(TINY_REPO, tiny_folder)
        hub_for_tests.add(GATED_REPO, tiny_folder, gated=True)
        yield hub_for_tests
