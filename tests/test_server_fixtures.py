"""conftest's `run_until_exit`, on plain shell commands (no model): it reports how a server ended,
and fails the test when a process the server started outlives it."""

from __future__ import annotations

import random

import psutil
import pytest
from conftest import run_until_exit
from scripts.serving.process import ServerProcess, free_port


def shell_server(script: str, tmp_path) -> ServerProcess:
    return ServerProcess(["bash", "-c", script], port=free_port(), ready_path="/", log_path=tmp_path / "server.log")


def test_run_until_exit_returns_the_exit_code_the_log_and_the_commands_seen(tmp_path):
    ended = run_until_exit(shell_server("echo starting; sleep 3 & wait; echo failed; exit 3", tmp_path), timeout=60)
    assert ended.code == 3
    assert ended.log.splitlines() == ["starting", "failed"]
    assert "sleep 3" in ended.commands, "the child is seen after its exec, not only as a fork of bash"


def test_run_until_exit_fails_when_a_process_outlives_the_server(tmp_path):
    orphan = f"sleep {random.randint(1000, 9999)}"  # in a session of its own, as BentoML's worker is
    with pytest.raises(AssertionError, match=f"processes left behind: .*{orphan}"):
        run_until_exit(shell_server(f"setsid {orphan} & sleep 1; exit 3", tmp_path), timeout=60, grace=1)
    assert not [p for p in psutil.process_iter(["cmdline"]) if " ".join(p.info["cmdline"] or []) == orphan], \
        "the orphan is ended after the failure"
