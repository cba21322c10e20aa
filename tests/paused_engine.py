"""A served model's vLLM engine process, stopped (SIGSTOP) or throttled while a test watches a request.

Tests about a request in flight (a client that hangs up, an engine killed mid-stream, a chat
page that stops a reply, a gateway that must not buffer) need the request to be mid-way when
they act. Timing that from the test process fails when the test waits for a CPU (three pytest
workers share two cores) and the tiny model writes the whole reply meanwhile. Here the engine
is stopped before the request goes out (vLLM answers with the headers without it) and then
runs on a duty cycle (`throttled`: 10 ms in every 100 ms) kept by a small driver process at
real-time priority (SCHED_FIFO, as root), so the cycle holds however long the test process waits: a
reply that takes the engine seconds takes at least ten times as long to finish, and the test
acts on what it has seen long before that.

    python tests/paused_engine.py PID ON_S OFF_S   # the driver (started by `throttled`)
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import typing as t
from contextlib import contextmanager

import httpx
import psutil


def engine_core(server, service: str | None = None) -> psutil.Process:
    """vLLM's engine-core process under a `bentoml serve` (ServerProcess); under a gateway, that
    of the model service named `service`."""
    top = psutil.Process(server.process.pid)
    under = top if service is None else next(w for w in top.children() if service in w.cmdline())
    found = [p for p in under.children(recursive=True) if "EngineCore" in " ".join(p.cmdline())]
    assert len(found) == 1, f"one VLLM::EngineCore process under the server: {found}"
    return found[0]


@contextmanager
def paused(engine: psutil.Process) -> t.Iterator[psutil.Process]:
    """The engine stopped: requests are taken but no token comes until the block ends."""
    engine.suspend()
    try:
        yield engine
    finally:
        engine.resume()


@contextmanager
def throttled(engine: psutil.Process, on_s: float = 0.01, off_s: float = 0.09) -> t.Iterator[psutil.Process]:
    """The (stopped) engine runs for `on_s` in every `on_s + off_s` while the block runs, and is
    stopped again when it ends. The cycle is kept by a driver process at real-time priority, not
    by this one: however long this process waits for a CPU, the engine gets at most its share."""
    driver = subprocess.Popen([sys.executable, __file__, str(engine.pid), str(on_s), str(off_s)],
                              stdout=subprocess.PIPE, text=True)
    policy = driver.stdout.readline().strip()
    assert policy in ("SCHED_FIFO", "SCHED_OTHER"), f"the throttle's driver did not start: exit {driver.wait()}"
    try:
        yield engine
    finally:
        driver.send_signal(signal.SIGTERM)  # it stops the engine, then exits
        driver.wait(30)
        if engine.is_running():
            engine.suspend()


def wait_until(condition: t.Callable[[], object], timeout: float = 180, poll_s: float = 0.05) -> bool:
    """Whether `condition()` held within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not (held := condition()) and time.monotonic() < deadline:
        time.sleep(poll_s)
    return bool(held)


def _drive(pid: int, on_s: float, off_s: float) -> None:
    """The throttle's driver: SIGCONT, `on_s`, SIGSTOP, `off_s`, ... until SIGTERM, after which
    the engine is left stopped. Real-time priority, so its timers are kept on a loaded machine."""
    ending = []
    signal.signal(signal.SIGTERM, lambda *_: ending.append(True))
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))
        print("SCHED_FIFO", flush=True)
    except PermissionError:  # not root, no RLIMIT_RTPRIO: the cycle then holds only on a machine with CPU to spare
        print("SCHED_OTHER", flush=True)
    try:
        while not ending:
            os.kill(pid, signal.SIGCONT)
            time.sleep(on_s)
            os.kill(pid, signal.SIGSTOP)
            if not ending:
                time.sleep(off_s)
    except ProcessLookupError:
        pass  # the engine is gone (a test killed it)


def sse_events(response: httpx.Response) -> t.Iterator[dict]:
    """The JSON events of an OpenAI-style server-sent event stream, up to `[DONE]`."""
    assert response.status_code == 200, response.read()
    for line in response.iter_lines():
        payload = line.removeprefix("data: ").strip()
        if payload and payload != "[DONE]":
            yield json.loads(payload)


class StreamReader:
    """A stream opened and read on a thread, so the test can look at what has come without
    blocking on what has not. `open_stream()` sends the request and returns its events as dicts
    (`sse_events`, or an openai client's stream of chunks, dumped)."""

    def __init__(self, open_stream: t.Callable[[], t.Iterable[dict]]):
        self.events: list[dict] = []
        self.error: Exception | None = None  # what cut the stream, if something did
        self.done = threading.Event()
        threading.Thread(target=self._read, args=(open_stream,), daemon=True).start()

    def _read(self, open_stream: t.Callable[[], t.Iterable[dict]]) -> None:
        try:
            for event in open_stream():
                self.events.append(event)
        except Exception as exc:  # noqa: BLE001 - kept for the test to look at
            self.error = exc
        finally:
            self.done.set()

    def finishes(self) -> list[str]:
        """The finish reasons the stream has given so far."""
        return [c["finish_reason"] for e in self.events for c in e.get("choices") or [] if c.get("finish_reason")]

    def settle(self, quiet_s: float, limit_s: float = 10) -> None:
        """Returns once no event has come for `quiet_s`: what was on its way has arrived."""
        deadline = time.monotonic() + limit_s
        seen = -1
        while time.monotonic() < deadline and not self.done.is_set() and seen != len(self.events):
            seen = len(self.events)
            time.sleep(quiet_s)


def stream_stopped_mid_way(engine: psutil.Process, open_stream: t.Callable[[], t.Iterable[dict]]) -> StreamReader:
    """A stream whose engine is stopped after its first event and before its last: the engine is
    stopped, the request sent, and the engine throttled until the first event has reached this
    process. On return the engine is stopped (SIGSTOP) and the reply mid-way."""
    engine.suspend()
    with throttled(engine):
        reader = StreamReader(open_stream)
        wait_until(lambda: reader.events or reader.done.is_set())
    reader.settle(0.5)
    assert reader.events and not reader.finishes() and not reader.done.is_set(), \
        f"the engine stopped mid-reply: {reader.events[-3:]}, ended: {reader.done.is_set()}, error: {reader.error!r}"
    return reader


class RawRequest:
    """An HTTP request on a socket of its own, read without blocking; `close()` is the client
    hanging up, at the moment the test chooses."""

    def __init__(self, port: int, path: str, body: dict, headers: dict[str, str] | None = None):
        payload = json.dumps(body).encode()
        head = "".join(f"{k}: {v}\r\n" for k, v in {"Host": "127.0.0.1", "Content-Type": "application/json",
                                                     "Content-Length": len(payload), **(headers or {})}.items())
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.sendall(f"POST {path} HTTP/1.1\r\n{head}\r\n".encode() + payload)
        self.data = b""

    def received(self) -> bytes:
        """All that has come so far."""
        while True:
            try:
                chunk = self.sock.recv(65536, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return self.data
            if not chunk:
                return self.data
            self.data += chunk

    def close(self) -> None:
        self.sock.close()


def vllm_metric(metrics: str, name: str) -> float:
    """The sum of one of vLLM's series in a /metrics text (over its labels)."""
    return sum(float(v) for v in re.findall(rf"^{re.escape(name)}\{{[^}}]*\}} (\S+)$", metrics, re.M))


def hang_up_mid_request(engine: psutil.Process, send: t.Callable[[], RawRequest], metrics: t.Callable[[], str]) -> dict:
    """Sends a request (`send()`) with the engine stopped, throttles the engine until vLLM counts
    the request as running, hangs up, and waits until it runs none. Returns what the engine
    counted meanwhile: requests finished (an abort is not one) and tokens generated, and the
    bytes the client had received before it hung up."""
    def counter(name: str) -> float:
        return vllm_metric(metrics(), name)

    def running() -> float:
        return counter("vllm:num_requests_running")

    assert wait_until(lambda: running() == 0, timeout=60), "the engine runs no request before the test"
    before = {name: counter(name) for name in ("vllm:request_success_total", "vllm:generation_tokens_total")}
    engine.suspend()
    try:
        with throttled(engine):
            request = send()
            try:
                assert wait_until(lambda: running() == 1), "the request ran in the engine"
                received = request.received()
            finally:
                request.close()
            assert wait_until(lambda: running() == 0), "the engine ended the request"
    finally:
        engine.resume()
    return {"finished": counter("vllm:request_success_total") - before["vllm:request_success_total"],
            "generated": counter("vllm:generation_tokens_total") - before["vllm:generation_tokens_total"],
            "received": received}


if __name__ == "__main__":
    _drive(int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]))
