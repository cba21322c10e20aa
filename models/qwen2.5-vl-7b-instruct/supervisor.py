"""End `bentoml serve` from its worker, with a non-zero exit status and the reason.

Copied verbatim into every generated model folder from templates/supervisor.py by
scripts/generate.py.

`bentoml serve` runs a process supervisor (a circus arbiter) that starts this service's
worker. When the worker exits, the supervisor starts it again, forever; in BentoML's
container image (BENTOML_CONTAINERIZED) it starts none and keeps the port open with
nothing behind it. Either way a worker that cannot serve (its model did not load, its
engine died) would never end the container, so no orchestrator would restart it.

So the worker ends the supervisor: it writes the exit status and the reason to the file
that the supervisor made for this, named after the supervisor process
(`exit_with_worker_status`, run in the supervisor by an @bentoml.on_deployment hook),
and sends the supervisor SIGTERM, on which circus stops its workers cleanly and exits. SIGTERM also reaches a supervisor that is PID 1 (as in
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
from pathlib import Path

logger = logging.getLogger("bentoml.service")

# How long the supervisor has to stop this worker after SIGTERM before the worker ends itself.
WORKER_STOP_GRACE_S = 20.0
_files_made: set[Path] = set()


def exit_status_file(process) -> Path:
    """Where the worker of `process` (a psutil.Process) records its exit status, if `process` made it.

    Named by pid and start time, so that it names one process even across PID namespaces
    (every container's supervisor is PID 1) and pid reuse.
    """
    return Path(tempfile.gettempdir()) / f"llm-bentos-exit-status-{process.pid}-{process.create_time():.2f}"


# In the supervisor (`bentoml serve`'s own process).


def exit_with_worker_status() -> None:
    """Make this process exit with the status a worker records, once it has stopped.

    Runs before the supervisor starts its workers (once per model service, in a gateway).
    Python's exit status cannot be changed after the program has ended, so an exit
    handler ends the process with the recorded status.
    """
    import psutil

    path = exit_status_file(psutil.Process())
    if path in _files_made:
        return
    path.write_text("")
    _files_made.add(path)
    atexit.register(_exit_with_recorded_status, path)


def _exit_with_recorded_status(path: Path) -> None:
    try:
        text = path.read_text()
    except OSError:
        return
    finally:
        with contextlib.suppress(OSError):
            path.unlink()
    if not text:
        return
    record = json.loads(text)
    logger.error("bentoml serve exits with status %d: %s", record["status"], record["reason"])
    exit_now(record["status"])


# In the worker.


def end_server(status: int, reason: str) -> None:
    """Stop `bentoml serve` (not just this worker) so that it exits with `status` and says why."""
    supervisor, path = bentoml_supervisor()
    if supervisor is None:
        logger.error("%s. Not started by `bentoml serve`: this process exits with status %d.", reason, status)
        exit_now(status)
    _record_exit_status(path, status, reason)
    logger.info("Stopping `bentoml serve` (pid %d) with SIGTERM; it exits with status %d.", supervisor.pid, status)
    supervisor.send_signal(signal.SIGTERM)
    # The supervisor now stops this worker (SIGTERM; its HTTP server closes and its engine
    # stops). Should that not happen in time, end both.
    deadline = threading.Timer(WORKER_STOP_GRACE_S, _end_after_grace, (supervisor, status))
    deadline.daemon = True
    deadline.start()


def bentoml_supervisor():
    """This process's parent and its exit-status file, when the parent made that file; else (None, None).

    Only a `bentoml serve` that ran `exit_with_worker_status` made one, whatever its pid
    (1 in a container); any other parent (a shell, a test runner, an init) is never
    signalled. The supervisor's command line is no guide: circus renames it `circusd`.
    """
    import psutil

    with contextlib.suppress(psutil.Error):
        parent = psutil.Process().parent()
        if parent is not None and (path := exit_status_file(parent)).is_file():
            return parent, path
    return None, None


def _record_exit_status(path: Path, status: int, reason: str) -> None:
    try:
        path.write_text(json.dumps({"status": status, "reason": reason}))
    except OSError:
        logger.exception("could not record the exit status in %s", path)


def _end_after_grace(supervisor, status: int) -> None:
    import psutil

    logger.error("`bentoml serve` did not stop this worker within %.0f s: killing it", WORKER_STOP_GRACE_S)
    with contextlib.suppress(psutil.Error):
        supervisor.kill()  # a PID 1 supervisor ignores this; it exits once this worker is gone
    exit_now(status)


def exit_now(status: int) -> typing.NoReturn:
    """End this process at once, its log written out."""
    logging.shutdown()  # flushes every handler; os._exit skips the exit handlers that would
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(status)
