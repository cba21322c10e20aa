"""Shared test setup: catalog helpers and served models (pytest.ini puts the root and templates/ on the path)."""

from __future__ import annotations

import contextlib
import copy
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
import typing as t
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
import yaml
from openai import OpenAI

ROOT = Path(__file__).resolve().parents[1]
from scripts.serving.process import ServerProcess, bento_server, end_all, free_port


# `make test` runs the suite on pytest-xdist workers, each taking whole modules (`--dist
# loadscope`, so a module's servers start once) in collection order. These modules serve the
# longest (measured with --durations): they go first, so that no worker is left with one of them
# at the end while the others have finished; every other module keeps its place after them.
LONGEST_FIRST = ("test_container", "test_serve_failures", "test_gateway", "test_serve_hub", "test_gateway_failure",
                 "test_serve_auth_chat", "test_bench", "test_bench_peers", "test_new_model", "test_locks", "test_serve_embed",
                 "test_serve_hf", "test_serve_openai", "test_bento")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        module = Path(str(item.path)).stem
        return LONGEST_FIRST.index(module) if module in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: the tests of a module keep their order


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
        [sys.executable, "-m", "scripts.tiny"],
        cwd=ROOT,
        env={**os.environ, "BENTOML_HOME": str(home)},
        check=True,
        capture_output=True,
    )
    return str(home)


def folder_server(folder: Path, name: str, env: dict[str, str] | None = None, target: str = ".",
                  pid_namespace: bool = False) -> ServerProcess:
    """`bentoml serve` of a model folder (or of a built Bento's tag given as `target`), not started
    yet, on a free port, its log in tests/artifacts/<name>.server.log; as PID 1 of a new PID
    namespace with `pid_namespace=True`, as BentoML's container image runs it."""
    return bento_server(folder, free_port(), env=env, log_path=ARTIFACTS / f"{name}.server.log", target=target,
                        pid_namespace=pid_namespace)


@contextlib.contextmanager
def serve_folder(folder: Path, name: str, env: dict[str, str] | None = None, target: str = ".",
                 ready: bool = True, timeout: float = 300, pid_namespace: bool = False) -> Iterator[ServerProcess]:
    """`folder_server(...)` started, and ready unless `ready=False`; see `served`."""
    with served(folder_server(folder, name, env, target, pid_namespace), ready, timeout) as server:
        yield server


@contextlib.contextmanager
def served(server: ServerProcess, ready: bool = True, timeout: float = 300) -> Iterator[ServerProcess]:
    """A server started, and ready unless `ready=False`. On leaving, the server is stopped and
    every process it started must be gone, the BentoML worker (in a session of its own) and
    vLLM's engine included."""
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


@dataclass
class Exit:
    """How a server that was left to exit by itself ended."""

    code: int | None  # None: still running at the timeout (then stopped)
    ended_at: float  # time.monotonic() when it exited, or at the timeout
    log: str
    commands: list[str]  # the command lines of every process seen below it while it ran


def run_until_exit(server: ServerProcess, timeout: float, each_poll: t.Callable[[], None] = lambda: None,
                   grace: float = 10) -> Exit:
    """Start `server` and wait until it exits by itself, calling `each_poll()` meanwhile. Every
    process seen below it must be gone within `grace` seconds of its exit (as orphans they are
    out of reach of the server's own stop)."""
    seen: dict[int, tuple[psutil.Process, str]] = {}  # each process with its latest non-empty command line
    commands: list[str] = []  # every non-empty command line seen: a fork shows its parent's until it execs,
    # a zombie shows none, and vLLM renames some processes later

    def alive() -> list[psutil.Process]:
        return [p for p, _ in seen.values() if still_running(p)]

    with server:
        deadline = time.monotonic() + timeout
        while server.process.poll() is None and time.monotonic() < deadline:
            for pid, (process, command) in command_lines(server.descendants()).items():
                if command:
                    seen[pid] = process, command
                    if command not in commands:
                        commands.append(command)
                else:
                    seen.setdefault(pid, (process, command))
            each_poll()
            time.sleep(0.1)
        code, ended_at = server.process.poll(), time.monotonic()
        if code is not None:  # its orphans are out of reach of its stop: they must end by themselves
            gone_by = time.monotonic() + grace
            while alive() and time.monotonic() < gone_by:
                time.sleep(0.2)
            left = alive()
    left = alive() if code is None else left  # at the timeout it was stopped: all must be gone now
    end_all(left, grace=5)
    assert not left, f"processes left behind: {[cmd for p, cmd in seen.values() if p in left]}"
    return Exit(code, ended_at, server.log_path.read_text(errors="replace"), commands)


def command_lines(processes: list[psutil.Process]) -> dict[int, tuple[psutil.Process, str]]:
    found = {}
    for process in processes:
        try:
            found[process.pid] = process, " ".join(process.cmdline())
        except psutil.Error:
            pass
    return found


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


# A Hugging Face Hub on localhost (scripts/tiny/hub.py), reached through HF_ENDPOINT.
TINY_REPO = "llm-bentos-test/tiny-chat"
GATED_REPO = "llm-bentos-test/tiny-gated"


@dataclass
class HubForTests:
    url: str
    token: str  # random, made for this run; it opens GATED_REPO
    hub: t.Any  # scripts.tiny.hub.LocalHub: tests may add repositories to hub.repos

    def env(self, tmp_path: Path, token: bool = False) -> dict[str, str]:
        """Environment of a process that talks to this Hub, with a private HF cache (and HF_TOKEN)."""
        env = {"HF_ENDPOINT": self.url, "HF_HOME": str(tmp_path / "hf-home"), "HF_HUB_OFFLINE": "0",
               "HF_HUB_DISABLE_TELEMETRY": "1", "BENTOML_HOME": str(tmp_path / "bentoml-home")}
        return {**env, "HF_TOKEN": self.token} if token else env

    def add(self, repo_id: str, folder: Path, gated: bool = False) -> str:
        """Serve folder as repo_id; return its commit."""
        from scripts.tiny.hub import Repo

        self.hub.repos[repo_id] = Repo(folder, gated=gated)
        return self.hub.repos[repo_id].sha


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory) -> Path:
    """The tiny model as a plain Hugging Face folder, made by the repository's own script."""
    folder = tmp_path_factory.mktemp("tiny-folder") / "tiny"
    subprocess.run([sys.executable, "-m", "scripts.tiny", "--out", str(folder)], cwd=ROOT, check=True, capture_output=True)
    return folder


@pytest.fixture(scope="session")
def local_hub(tiny_folder) -> t.Iterator[HubForTests]:
    """The Hub stand-in with the tiny model, public and gated; its token exists only in this process."""
    from scripts.tiny.hub import LocalHub, serve_in_thread

    hub = LocalHub({}, token=secrets.token_urlsafe(24))
    with serve_in_thread(hub) as url:
        hub_for_tests = HubForTests(url, hub.token, hub)
        hub_for_tests.add(TINY_REPO, tiny_folder)
        hub_for_tests.add(GATED_REPO, tiny_folder, gated=True)
        yield hub_for_tests


def make_new(env: dict[str, str], catalog: Path, model_id: str, **variables: str) -> subprocess.CompletedProcess:
    """`make new MODEL_ID=... [NAME=... GPU=...]` against a copy of the catalog."""
    args = [f"MODEL_ID={model_id}", f"NEW_ARGS=--catalog {catalog}"] + [f"{k}={v}" for k, v in variables.items()]
    return subprocess.run(["make", "-s", "new", *args], cwd=ROOT, env={**os.environ, **env},
                          capture_output=True, text=True, timeout=900)


def last_entry(catalog: Path) -> dict:
    return yaml.safe_load(catalog.read_text())["models"][-1]
@pytest.fixture(scope="module")
def browser():
    """Headless Debian Chromium driven by playwright; `make browser` installs Chromium."""
    if not shutil.which("chromium"):
        pytest.skip("the chat-page tests need Chromium: run `make browser` (as root: apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=shutil.which("chromium"),
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--no-first-run"],
        )
        yield browser
        browser.close()
