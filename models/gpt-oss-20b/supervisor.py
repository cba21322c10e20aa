"""End `bentoml serve` from its worker, with a non-zero exit status and the reason.

Copied verbatim into every generated model folder from templates/supervisor.py by
scripts/generate.py.

`bentoml serve` runs a process supervisor (a circus arbiter) that starts this service's
worker. When the worker exits, the supervisor starts it again, forever; in BentoML's
container image (BENTOML_CONTAINERIZED) it starts none and keeps the port open with
nothing behind it. Either way a worker that cannot serve (its model did not load, its
engine died) would never end the container, so no orchestrator would restart it.

So the worker ends the supervisor: it writes the exit status and the reason to a file
that the supervisor named (`exit_with_worker_status`, run in the supervisor by an
@bentoml.on_deployment hook), and sends the supervisor SIGTERM, on which circus stops
its workers cleanly and exits. SIGTERM also reaches a supervisor that is PID 1 (as in
the container image, whose entrypoint `exec`s `bentoml serve`): PID 1 ignores every
signal it has no handler for, SIGKILL included, and circus handles SIGTERM. On its way
out the supervisor reads the file and exits with the worker's status.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import signal
import sys
import tempfile
import threading
import typing

logger = logging.getLogger("bentoml.service")

# Set by the supervisor for its workers: its own pid, and the file that takes a worker's exit status.
SUPERVISOR_PID_ENV = "LLM_BENTOS_SUPERVISOR_PID"
EXIT_STATUS_FILE_ENV = "LLM_BENTOS_EXIT_STATUS_FILE"
# How long the supervisor has to stop this worker after SIGTERM before the worker ends itself.
WORKER_STOP_GRACE_S = 20.0


# In the supervisor (`bentoml serve`'s own process).


def exit_with_worker_status() -> None:
    """Make this process exit with the status a worker records, once it has stopped.

    Runs before the supervisor starts its workers, which inherit its environment and so
    learn where to record. Python's exit status cannot be changed after the program has
    ended, so an exit handler ends the process with the recorded status.
    """
    fd, path = tempfile.mkstemp(prefix="llm-bentos-exit-status-")
    os.close(fd)
    os.environ[EXIT_STATUS_FILE_ENV] = path
    os.environ[SUPERVISOR_PID_ENV] = str(os.getpid())
    atexit.register(_exit_with_recorded_status, path)


def _exit_with_recorded_status(path: str) -> None:
    try:
        with open(path) as file:
            text = file.read()
    except OSError:
        return
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)
    if not text:
        return
    record = json.loads(text)
    logger.error("bentoml serve exits with status %d: %s", record["status"], record["reason"])
    _flush_and_exit(record["status"])


# In the worker.


def end_server(status: int, reason: str) -> None:
    """Stop `bentoml serve` (not just this worker) so that it exits with `status` and says why."""
    _record_exit_status(status, reason)
    supervisor = bentoml_supervisor()
    if supervisor is None:
        logger.error("%s. Not started by `bentoml serve`: this process exits with status %d.", reason, status)
        _flush_and_exit(status)
    logger.info("Stopping `bentoml serve` (pid %d) with SIGTERM; it exits with status %d.", supervisor.pid, status)
    supervisor.send_signal(signal.SIGTERM)
    # The supervisor now stops this worker (SIGTERM; its HTTP server closes and its engine
    # stops). Should that not happen in time, end both.
    deadline = threading.Timer(WORKER_STOP_GRACE_S, _end_after_grace, (supervisor, status))
    deadline.daemon = True
    deadline.start()


def bentoml_supervisor():
    """This process's parent when it is the `bentoml serve` that ran `exit_with_worker_status`, else None.

    Its pid is what that process recorded, whatever the number (1 in a container); any
    other parent (a shell, a test runner, an init) is never signalled. The supervisor's
    command line is no guide: circus renames its process `circusd`.
    """
    import psutil

    with contextlib.suppress(psutil.Error):
        parent = psutil.Process().parent()
        if parent is not None and str(parent.pid) == os.environ.get(SUPERVISOR_PID_ENV):
            return parent
    return None


def _record_exit_status(status: int, reason: str) -> None:
    path = os.environ.get(EXIT_STATUS_FILE_ENV)
    if not path:
        logger.warning("%s is not set: `bentoml serve` will stop but cannot exit with status %d", EXIT_STATUS_FILE_ENV, status)
        return
    try:
        with open(path, "w") as file:
            json.dump({"status": status, "reason": reason}, file)
    except OSError:
        logger.exception("could not record the exit status in %s", path)


def _end_after_grace(supervisor, status: int) -> None:
    import psutil

    logger.error("`bentoml serve` did not stop this worker within %.0f s: killing it", WORKER_STOP_GRACE_S)
    with contextlib.suppress(psutil.Error):
        supervisor.kill()  # a PID 1 supervisor ignores this; it exits once this worker is gone
    _flush_and_exit(status)


def _flush_and_exit(status: int) -> typing.NoReturn:
    logging.shutdown()  # flushes every handler; os._exit skips the exit handlers that would
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(status)
