"""A model that cannot load, or an engine that dies, ends `bentoml serve` with a non-zero exit and the reason.

Failures are served as an ordinary child of the test (as from a shell) and, where the real
image does not already prove the same (tests/test_container.py), as PID 1 of a new PID
namespace, which is how BentoML's container image runs `bentoml serve` (its entrypoint
`exec`s it): there a worker's parent is PID 1, which ignores every signal it has no handler for.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from conftest import ROOT, folder_server, run_until_exit, serve_folder
from paused_engine import engine_core, sse_events, stream_stopped_mid_way
from scripts.serving.process import ServerProcess, http_status

pytestmark = pytest.mark.serves  # every test here serves a model: not in `make test-quick`

TINY_DEV = ROOT / "models" / "tiny-dev"
LAUNCHES = {"child": False, "pid1": True}  # pid_namespace for each way of starting the server
START_FAILED = "vLLM could not start"
EXIT_WITHIN_S = 60  # from the failure to the end of `bentoml serve`


def broken_store_model(tmp_path, bentoml_home: str, breakage) -> dict[str, str]:
    """A copy of the BentoML home whose tiny model is broken by `breakage(model_dir)`."""
    home = tmp_path / "home"
    shutil.copytree(bentoml_home, home, symlinks=True)
    model_dir = home / "models" / "llm-bentos-tiny-dev" / "v2"
    breakage(model_dir)
    return {"BENTOML_HOME": str(home)}


def corrupt_weights(model_dir: Path) -> None:
    """Weights that are there but not safetensors: vLLM fails while loading them, in its engine process."""
    for path in model_dir.glob("*.safetensors"):
        path.write_bytes(b"not a safetensors file")


def tiny_dev_copy(tmp_path, old: str, new: str) -> Path:
    """A copy of models/tiny-dev with one edit of its service.py, as a user would make it."""
    folder = tmp_path / "tiny-dev"
    shutil.copytree(TINY_DEV, folder)
    service = folder / "service.py"
    text = service.read_text()
    assert old in text
    service.write_text(text.replace(old, new))
    return folder


class ProbeWatch:
    """Polls /livez and /readyz in a thread, recording (seconds, path, status) until stopped."""

    def __init__(self, url: str, interval: float = 0.2):
        self.url, self.interval = url, interval
        self.seen: list[tuple[float, str, int | None]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._stop.is_set():
            for path in ("/livez", "/readyz"):
                self.seen.append((time.monotonic(), path, http_status(self.url + path, timeout=2)))
            self._stop.wait(self.interval)

    def since(self, moment: float) -> list[tuple[str, int | None]]:
        return [(path, status) for at, path, status in self.seen if at >= moment]

    def __enter__(self) -> ProbeWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


@dataclass
class Ending:
    """How a server that was expected to fail ended."""

    code: int | None
    log: str
    failed_after_s: float | None = None  # when the marker showed in the log, from the start
    exited_after_failure_s: float | None = None
    probes_after_failure: list[tuple[str, int | None]] = field(default_factory=list)


def serve_with_probes(server: ServerProcess, marker: str | None = None, timeout: float = 240) -> Ending:
    """Start `server`, note when `marker` shows in its log, and wait for it to exit by itself."""
    failed_at = []

    def note_failure() -> None:
        if marker and not failed_at and marker in server.log_path.read_text(errors="replace"):
            failed_at.append(time.monotonic())

    with ProbeWatch(server.url) as probes:
        ended = run_until_exit(server, timeout, each_poll=note_failure)
    if not failed_at:
        return Ending(ended.code, ended.log)
    return Ending(ended.code, ended.log, failed_at[0] - server.started_at, ended.ended_at - failed_at[0],
                  probes.since(failed_at[0]))


def serve_until_exit(env: dict[str, str], name: str, *, folder: Path = TINY_DEV, pid_namespace: bool = False,
                     marker: str | None = None, timeout: float = 240) -> Ending:
    return serve_with_probes(folder_server(folder, name, env=env, pid_namespace=pid_namespace), marker, timeout)


def assert_ended_for(ending: Ending, status: int, reason: str) -> None:
    """`bentoml serve` exited by itself with `status`, said why, in time, with 503 probes meanwhile."""
    tail = ending.log[-3000:]
    assert ending.code == status, tail
    assert ending.log.count("Service tiny-dev initialized") == 1, "the worker was restarted"
    assert f"bentoml serve exits with status {status}: {reason}" in ending.log, tail
    assert ending.exited_after_failure_s is not None and ending.exited_after_failure_s < EXIT_WITHIN_S, tail
    statuses = [status for _, status in ending.probes_after_failure]
    assert 200 not in statuses, ending.probes_after_failure
    assert ("/livez", 503) in ending.probes_after_failure and ("/readyz", 503) in ending.probes_after_failure


# Failures BentoML sees before any worker starts: `bentoml serve` itself exits.


def test_missing_weights_stop_the_server_at_once(tmp_path, bentoml_home):
    def remove_weights(model_dir):
        for path in model_dir.glob("*.safetensors"):
            path.unlink()

    ending = serve_until_exit(broken_store_model(tmp_path, bentoml_home, remove_weights), "missing-weights", timeout=60)
    assert ending.code == 1, ending.log[-2000:]
    assert "model files missing" in ending.log and "*.safetensors weights" in ending.log


@pytest.mark.parametrize("launch", LAUNCHES)
def test_model_missing_from_the_store_stops_the_server(tmp_path, launch):
    ending = serve_until_exit({"BENTOML_HOME": str(tmp_path / "empty")}, f"missing-model-{launch}",
                              pid_namespace=LAUNCHES[launch], timeout=60)
    assert ending.code == 1, ending.log[-2000:]
    assert "llm-bentos-tiny-dev:v2 could not be found" in ending.log


# Failures inside the worker, where vLLM starts: the worker ends `bentoml serve`.


def test_engine_that_cannot_start_stops_the_server(tmp_path, bentoml_home):
    """Weights that are there but broken fail inside vLLM; the server must exit, not respawn.
    (As PID 1, in the real image: tests/test_container.py, a start without enough /dev/shm.)"""
    env = broken_store_model(tmp_path, bentoml_home, corrupt_weights)
    ending = serve_until_exit(env, "corrupt-weights-child", marker=START_FAILED)
    assert_ended_for(ending, 3, START_FAILED)
    assert "vLLM could not start with: vllm serve --model" in ending.log


def test_vllm_argument_error_stops_the_server_as_pid_1(tmp_path, bentoml_home):
    """vLLM's parser ends with SystemExit on an unknown flag: a failed start like any other."""
    folder = tiny_dev_copy(tmp_path, '"max_model_len": 1024,', '"max_model_len": 1024, "no_such_vllm_flag": 1,')
    ending = serve_until_exit({"BENTOML_HOME": bentoml_home}, "argument-error-pid1", folder=folder,
                              pid_namespace=True, marker=START_FAILED)
    assert_ended_for(ending, 3, f"{START_FAILED}: vLLM's argument parser refused the arguments (exit status 2")
    assert "vllm serve: error: unrecognized arguments: --no-such-vllm-flag" in ending.log


# An engine that dies while serving.


def test_engine_killed_mid_stream_ends_requests_probes_and_server_as_pid_1(tmp_path, bentoml_home):
    """SIGKILL of vLLM's engine core while a stream is in flight, with `bentoml serve` as PID 1.

    (As an ordinary child the worker signals its parent the same way, as the failed starts above show.)
    """
    # A reply long enough (8,000 tokens, about 20 s of the engine's CPU here) that the engine is
    # stopped mid-way even when this process waits seconds for a CPU: tiny-dev with a longer
    # context than its catalog entry's 1,024 (its random weights take any position).
    folder = tiny_dev_copy(tmp_path, '"max_model_len": 1024,', '"max_model_len": 8192,')
    env = {"BENTOML_HOME": bentoml_home, "VLLM_ALLOW_LONG_MAX_MODEL_LEN": "1"}
    request = {"model": "tiny-dev", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8000,
               "ignore_eos": True, "stream": True}
    with serve_folder(folder, "engine-death-pid1", env=env, timeout=600, pid_namespace=True) as server:
        engine = engine_core(server)
        with ProbeWatch(server.url) as probes, httpx.Client(base_url=server.url, timeout=60) as client:
            stream = stream_stopped_mid_way(engine, lambda: sse_events(
                client.send(client.build_request("POST", "/v1/chat/completions", json=request), stream=True)))
            engine.kill()
            killed_at = time.monotonic()
            stream.done.wait(30)
            stream_ended_s = time.monotonic() - killed_at
            events, cut = stream.events, stream.error
            try:
                after = client.post("/v1/chat/completions", json={**request, "stream": False}, timeout=10).status_code
            except httpx.TransportError as exc:  # the server may be gone already: an error too
                after = repr(exc)
            code = server.process.wait(EXIT_WITHIN_S)
            exited_s = time.monotonic() - killed_at
        log = server.log_path.read_text(errors="replace")

    print(f"engine killed: stream ended after {stream_ended_s:.1f} s ({cut or events[-1]}), next request {after}, "
          f"exit {code} after {exited_s:.1f} s")
    assert stream_ended_s < 10, (stream_ended_s, events[-3:])
    assert not {"length", "stop"} & set(stream.finishes()), stream.finishes()
    assert cut is not None or "error" in events[-1], (cut, events[-3:])
    assert after in (500, 503) or isinstance(after, str), after
    assert code == 4, log[-3000:]
    assert exited_s < EXIT_WITHIN_S
    assert "bentoml serve exits with status 4: vLLM's engine died" in log
    after_kill = probes.since(killed_at)
    assert ("/livez", 503) in after_kill and ("/readyz", 503) in after_kill, after_kill
    first_503 = after_kill.index(("/livez", 503))
    assert 200 not in [status for path, status in after_kill[first_503:] if path == "/livez"], after_kill


IDLE_DEATH_EXIT_S = 15  # plain `vllm serve` exits about 4 s after the same kill


def test_engine_killed_while_idle_ends_the_server(bentoml_home):
    """SIGKILL of vLLM's engine core with no request in flight (and none ever made), as from
    `make serve`: the server must notice by itself, say so on its probes and exit with 4."""
    with serve_folder(TINY_DEV, "engine-death-idle", env={"BENTOML_HOME": bentoml_home}, timeout=600) as server:
        with ProbeWatch(server.url) as probes:
            engine_core(server).kill()
            killed_at = time.monotonic()
            try:
                code = server.process.wait(IDLE_DEATH_EXIT_S)
            except subprocess.TimeoutExpired:
                code = None
            exited_s = time.monotonic() - killed_at
        log = server.log_path.read_text(errors="replace")

    print(f"idle engine killed: exit {code} after {exited_s:.1f} s")
    assert code == 4, log[-3000:]
    assert exited_s < IDLE_DEATH_EXIT_S
    assert "bentoml serve exits with status 4: vLLM's engine died" in log
    after_kill = probes.since(killed_at)
    assert ("/livez", 503) in after_kill and ("/readyz", 503) in after_kill, after_kill
