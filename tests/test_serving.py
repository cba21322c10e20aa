"""scripts/serving/process.py: stopping a server ends every process below it."""

from __future__ import annotations

import os
import sys
import time

import psutil
from scripts.serving.process import ServerProcess

# A server stand-in that starts a child in a session of its own, as BentoML's supervisor
# starts its worker, and prints the child's pid.
SPAWNS_A_SESSION = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True)
print(child.pid, flush=True)
time.sleep(600)
"""


def gone(process: psutil.Process) -> bool:
    try:
        return not process.is_running() or process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_stop_ends_a_descendant_in_another_session(tmp_path):
    server = ServerProcess([sys.executable, "-c", SPAWNS_A_SESSION], port=0, ready_path="/",
                           log_path=tmp_path / "server.log")
    with server:
        deadline = time.monotonic() + 60
        while not server.log_path.read_text().strip() and time.monotonic() < deadline:
            time.sleep(0.1)
        worker = psutil.Process(int(server.log_path.read_text()))
        assert os.getsid(worker.pid) != os.getpgid(server.process.pid)  # out of reach of the group's signal
        assert worker in server.descendants()
    assert server.process.returncode is not None
    assert gone(worker)
