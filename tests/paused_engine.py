"""A served model's vLLM engine process, stopped (SIGSTOP) and let run in short bursts.

Tests about a request in flight (a client that hangs up, an engine killed mid-stream, a chat
page that stops a reply) need the request to be mid-way when they act. Timing that from the
test process fails when the test waits for a CPU (three pytest workers share two cores) and
the tiny model writes the whole reply meanwhile. Here the engine is stopped before the request
goes out (vLLM answers with the headers without it) and runs only in bursts between the test's
checks, so the reply cannot get ahead of the test by more than one burst.
"""

from __future__ import annotations

import json
import re
import socket
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


def run_in_bursts(engine: psutil.Process, until: t.Callable[[], bool], burst_s: float = 0.02, timeout: float = 120) -> bool:
    """Let a stopped engine run for `burst_s` at a time, stopping it again after each, until
    `until()` holds; whether it did. The engine is stopped on return, however long this process
    waited for a CPU between its calls (a wait stretches a burst, never the time stopped)."""
    deadline = time.monotonic() + timeout
    while not (done := until()) and time.monotonic() < deadline:
        engine.resume()
        time.sleep(burst_s)
        engine.suspend()
    return done


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


def stream_stopped_mid_way(engine: psutil.Process, open_stream: t.Callable[[], t.Iterable[dict]],
                           burst_s: float = 0.02) -> StreamReader:
    """A stream whose engine is stopped after its first event and before its last: the engine is
    stopped, the request sent (vLLM answers with the headers without it), and the engine runs in
    bursts until the first event has reached this process. On return the engine is stopped and
    the reply is mid-way, as long as it needs more of the engine's time than one (possibly
    stretched) burst."""
    engine.suspend()
    reader = StreamReader(open_stream)

    def first_event() -> bool:
        reader.settle(0.05)
        return bool(reader.events) or reader.done.is_set()

    run_in_bursts(engine, first_event, burst_s)
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


def hang_up_mid_request(engine: psutil.Process, send: t.Callable[[], RawRequest], metrics: t.Callable[[], str],
                        burst_s: float = 0.02) -> dict[str, float]:
    """Sends a request (`send()`) with the engine stopped, runs the engine in bursts until vLLM
    counts the request as running, hangs up, and runs it in bursts until it runs none. Returns
    what the engine counted meanwhile: requests finished (an abort is not one), tokens generated,
    and the first bytes the client had received."""
    def counter(name: str) -> float:
        return vllm_metric(metrics(), name)

    def running() -> float:
        return counter("vllm:num_requests_running")

    deadline = time.monotonic() + 60
    while running() > 0:
        assert time.monotonic() < deadline, "the engine runs no request before the test"
        time.sleep(0.2)
    before = {name: counter(name) for name in ("vllm:request_success_total", "vllm:generation_tokens_total")}
    with paused(engine):
        request = send()
        try:
            assert run_in_bursts(engine, lambda: running() == 1, burst_s), "the request ran in the engine"
            received = request.received()
        finally:
            request.close()
        assert run_in_bursts(engine, lambda: running() == 0, burst_s), "the engine ended the request"
    return {"finished": counter("vllm:request_success_total") - before["vllm:request_success_total"],
            "generated": counter("vllm:generation_tokens_total") - before["vllm:generation_tokens_total"],
            "received": received}
