"""templates/supervisor.py: a worker ends only a supervisor that ran the deployment hook, which exits with the worker's status."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

from conftest import ROOT

TEMPLATES = str(ROOT / "templates")

# A stand-in for `bentoml serve` (or, given "other", for any other parent): starts a worker;
# on SIGTERM stops it and exits normally (status 0), as circus does; otherwise exits with
# 100 + the worker's status once the worker ends by itself.
PARENT = textwrap.dedent("""
    import signal, subprocess, sys, time
    from supervisor import exit_with_worker_status
    if sys.argv[2] == "supervisor":
        exit_with_worker_status()
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    worker = subprocess.Popen([sys.executable, "-c", sys.argv[1]])
    while worker.poll() is None and not stopping:
        time.sleep(0.05)
    if stopping:
        print("parent got SIGTERM", flush=True)
        worker.terminate()
        worker.wait()
        sys.exit(0)
    sys.exit(100 + worker.returncode)
""")
WORKER = textwrap.dedent("""
    import logging, time
    logging.basicConfig()
    from supervisor import end_server
    end_server(5, "the model did not load")
    time.sleep(60)  # the supervisor stops; this worker would be stopped with it
""")


def run(code: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": TEMPLATES, **(env or {})})


def test_supervisor_exits_with_the_status_its_worker_recorded():
    result = run(PARENT, WORKER, "supervisor")
    assert result.returncode == 5, result.stderr
    assert "parent got SIGTERM" in result.stdout
    assert "bentoml serve exits with status 5: the model did not load" in result.stderr


def test_a_parent_that_is_not_the_supervisor_is_not_signalled():
    """The worker's parent did not make an exit-status file: the worker exits alone, with its status."""
    result = run(PARENT, WORKER, "other")
    assert result.returncode == 100 + 5, result.stderr
    assert "parent got SIGTERM" not in result.stdout
    assert "Not started by `bentoml serve`: this process exits with status 5." in result.stderr
