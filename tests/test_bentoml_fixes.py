"""BentoML's request timeout, with the generated services' fix: same answers, no timer left behind."""

from __future__ import annotations

import asyncio

import pytest
from bentoml._internal.server.http.traffic import TimeoutMiddleware

import bentoml_fixes


async def streaming_app(scope, receive, send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"token", "more_body": False})


async def silent_app(scope, receive, send) -> None:
    await asyncio.sleep(30)  # never sends a byte


def call(middleware: TimeoutMiddleware) -> tuple[list[dict], int]:
    """One HTTP request through the middleware: the messages sent, and the loop's live timers after it."""
    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    async def run() -> int:
        await middleware({"type": "http", "path": "/v1/completions"}, receive, send)
        await asyncio.sleep(0)  # let a cancelled app task finish cancelling
        loop = asyncio.get_running_loop()
        return sum(not handle.cancelled() for handle in loop._scheduled)  # asyncio's pending timers

    live_timers = asyncio.run(run())
    return sent, live_timers


@pytest.fixture
def fixed_timeout(monkeypatch):
    monkeypatch.setattr(TimeoutMiddleware, "__call__", TimeoutMiddleware.__call__)  # restored after the test
    bentoml_fixes.cancel_request_timers()
    bentoml_fixes.cancel_request_timers()  # a second call changes nothing
    assert TimeoutMiddleware.__call__ is bentoml_fixes._timeout_middleware_call


def test_bentoml_alone_leaves_a_timer_per_request():
    """What the fix is for: without it, the timer outlives the request (this BentoML version)."""
    sent, live_timers = call(TimeoutMiddleware(streaming_app, timeout=300))
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    assert live_timers == 1


def test_fixed_timeout_cancels_its_timer(fixed_timeout):
    sent, live_timers = call(TimeoutMiddleware(streaming_app, timeout=300))
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    assert live_timers == 0


def test_fixed_timeout_still_answers_504_when_no_byte_comes(fixed_timeout):
    sent, live_timers = call(TimeoutMiddleware(silent_app, timeout=0.2))
    assert sent[0]["status"] == 504
    assert b"Not able to process the request in 0.2 seconds" in sent[1]["body"]
    assert live_timers == 0
