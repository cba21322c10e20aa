"""Start a model server as a child process, wait until it is ready, stop it cleanly.

Used by `make demo`, the benchmark and the end-to-end tests, for both a generated
Bento (`bentoml serve`) and plain vLLM (`python -m vllm.entrypoints.openai.api_server`).
With `pid_namespace=True` the server is PID 1 of a new PID namespace, as `bentoml serve`
is in BentoML's container image (needs root, for `unshare`).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil

BIN = Path(sys.executable).parent
# Runs a command as PID 1 of a new PID namespace, with its own /proc, as a container runtime does.
# --kill-child: when unshare ends, so does that PID 1, and with it every process in the namespace.
AS_PID_1 = ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http_status(url: str, timeout: float = 5) -> int | None:
    """The status code of a GET, or None when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None


class ServerProcess:
    """A server command in its own process group, with its output in a log file."""

    def __init__(self, command: list[str], *, port: int, ready_path: str, cwd: Path | None = None,
                 env: dict[str, str] | None = None, log_path: Path | None = None, pid_namespace: bool = False):
        self.command = [*AS_PID_1, *command] if pid_namespace else command
        self.port, self.ready_path, self.cwd = port, ready_path, cwd
        self.env = {**os.environ, **(env or {})}
        self.log_path = log_path or Path(f"/tmp/llm-bentos-server-{port}.log")
        self.process: subprocess.Popen | None = None
        self.started_at = 0.0
        self.statuses_seen: list[int | None] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ServerProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("wb")
        self.started_at = time.monotonic()
        self.process = subprocess.Popen(
            self.command, cwd=self.cwd, env=self.env, stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )
        return self

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def wait_ready(self, timeout: float = 300, progress: bool = False) -> float:
        """Poll the ready route until 200; return seconds since start. Raise if the server dies."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log_tail()}")
            status = http_status(self.url + self.ready_path)
            if not self.statuses_seen or self.statuses_seen[-1] != status:
                self.statuses_seen.append(status)
                if progress:
                    print(f"  {time.monotonic() - self.started_at:5.1f}s  {self.ready_path} -> {status or 'no answer yet'}", flush=True)
            if status == 200:
                return time.monotonic() - self.started_at
            time.sleep(0.25)
        self.stop()
        raise TimeoutError(f"not ready after {timeout:.0f}s:\n{self.log_tail()}")

    def descendants(self) -> list[psutil.Process]:
        """Every process below the server, whatever its session (BentoML's worker has its own)."""
        try:
            return psutil.Process(self.process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def wait_exit(self, timeout: float) -> int | None:
        """The exit code once the server exits by itself, or None if it still runs after timeout."""
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, grace: float = 30) -> int | None:
        """SIGTERM the process group (the server stops its workers and engine), then SIGKILL
        whatever is left of it and of every descendant, which may live in other sessions."""
        if self.process is None:
            return None
        family = self.descendants()  # now: once their parent exits, orphans cannot be found by a walk
        if self.process.poll() is None:
            with_group(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(grace)
            except subprocess.TimeoutExpired:
                pass
        family += [p for p in self.descendants() if p not in family]
        with_group(self.process.pid, signal.SIGKILL)  # engine processes left behind, if any
        self.process.wait()
        end_all(family, grace=5)
        return self.process.returncode

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def end_all(processes: list[psutil.Process], grace: float) -> None:
    """SIGTERM the processes still running, SIGKILL those still there after `grace` seconds."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for process in processes:
            try:
                process.send_signal(sig)
            except psutil.NoSuchProcess:
                pass
        _, processes = psutil.wait_procs(processes, timeout=grace)


def with_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


# Set by `make test-quick`: a test that starts a server without the `serves` mark fails there, naming itself.
NO_SERVERS_ENV = "LLM_BENTOS_NO_SERVERS"


def refuse_when_no_servers(what: str) -> None:
    if os.environ.get(NO_SERVERS_ENV):
        raise RuntimeError(f"{NO_SERVERS_ENV} is set (make test-quick), so {what} is not started: "
                           "a test that serves must be marked @pytest.mark.serves")


def bento_server(folder: Path, port: int, env: dict[str, str] | None = None, log_path: Path | None = None,
                 target: str = ".", pid_namespace: bool = False) -> ServerProcess:
    """`bentoml serve` of a model folder, or of a built Bento's tag given as `target`."""
    refuse_when_no_servers(f"`bentoml serve` of {folder}")
    return ServerProcess(
        [str(BIN / "bentoml"), "serve", target, "--host", "127.0.0.1", "--port", str(port)],
        port=port, ready_path="/readyz", cwd=folder, env=env, log_path=log_path, pid_namespace=pid_namespace,
    )


def vllm_server(argv: list[str], port: int, env: dict[str, str] | None = None, log_path: Path | None = None) -> ServerProcess:
    """Plain vLLM's OpenAI server with the given `vllm serve` arguments."""
    refuse_when_no_servers("plain vLLM")
    return ServerProcess(
        [sys.executable, "-m", "vllm.entrypoints.openai.api_server", *argv, "--port", str(port), "--host", "127.0.0.1"],
        port=port, ready_path="/health", env=env, log_path=log_path,
    )


def bento_http_server(folder: Path, port: int, depends: dict[str, str], env: dict[str, str] | None = None,
                      log_path: Path | None = None) -> ServerProcess:
    """One service of a folder alone, its dependencies reached at the given URLs (service name -> URL),
    as BentoCloud runs each service of a distributed deployment: BentoML's standalone HTTP server,
    `python -m bentoml_cli._internal.start start-http-server` (what the image's entrypoint runs for
    `start-http-server`; BentoML 1.4.39's `bentoml` command has no such subcommand). A dependency
    named in `depends` is not started."""
    refuse_when_no_servers(f"BentoML's standalone server of {folder}")
    flags = [flag for name, url in depends.items() for flag in ("--depends", f"{name}={url}")]
    return ServerProcess(
        [sys.executable, "-m", "bentoml_cli._internal.start", "start-http-server", str(folder), *flags,
         "--host", "127.0.0.1", "--port", str(port)],
        port=port, ready_path="/readyz", cwd=folder, env=env, log_path=log_path,
    )
