"""BentoML's request timeout, with the generated services' fix: same answers, no timer or task left behind."""

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


async def slow_stream_app(scope, receive, send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await asyncio.sleep(0.5)  # longer than the timeout, after the first byte
    await send({"type": "http.response.body", "body": b"token", "more_body": False})


async def failing_app(scope, receive, send) -> None:
    await asyncio.wait_for(asyncio.sleep(30), 0.01)  # the app's own TimeoutError


async def request_task_app(scope, receive, send) -> None:
    scope["app_task"] = asyncio.current_task()
    await streaming_app(scope, receive, send)


def call(middleware: TimeoutMiddleware) -> tuple[list[dict], int]:
    """One HTTP request through the middleware: the messages sent, and the loop's live timers after it."""
    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    async def run() -> int:
        scope = {"type": "http", "path": "/v1/completions"}
        await middleware(scope, receive, send)
        sent.append({"app_ran_in_request_task": scope.get("app_task") is asyncio.current_task()})
        await asyncio.sleep(0)  # let a cancelled app task finish cancelling
        loop = asyncio.get_running_loop()
        return sum(not handle.cancelled() for handle in loop._scheduled)  # asyncio's pending timers

    live_timers = asyncio.run(run())
    return sent, live_timers


@pytest.fixture
def fixed_timeout(monkeypatch):
    monkeypatch.setattr(TimeoutMiddleware, "__call__", TimeoutMiddleware.__call__)  # restored after the test
    bentoml_fixes.fix_request_timeout()
    bentoml_fixes.fix_request_timeout()  # a second call changes nothing
    assert TimeoutMiddleware.__call__ is bentoml_fixes._timeout_middleware_call


def test_bentoml_alone_leaves_a_timer_per_request():
    """What the fix is for: without it, the timer outlives the request (this BentoML version)."""
    sent, live_timers = call(TimeoutMiddleware(request_task_app, timeout=300))
    assert [m.get("type") for m in sent[:-1]] == ["http.response.start", "http.response.body"]
    assert live_timers == 1
    assert sent[-1] == {"app_ran_in_request_task": False}  # a task of its own per request


def test_fixed_timeout_cancels_its_timer_and_runs_the_app_in_the_request_task(fixed_timeout):
    sent, live_timers = call(TimeoutMiddleware(request_task_app, timeout=300))
    assert [m.get("type") for m in sent[:-1]] == ["http.response.start", "http.response.body"]
    assert live_timers == 0
    assert sent[-1] == {"app_ran_in_request_task": True}


def test_fixed_timeout_bounds_only_the_wait_for_the_first_byte(fixed_timeout):
    sent, live_timers = call(TimeoutMiddleware(slow_stream_app, timeout=0.2))
    assert [m.get("type") for m in sent[:-1]] == ["http.response.start", "http.response.body"]
    assert sent[0]["status"] == 200 and sent[1]["body"] == b"token"
    assert live_timers == 0


def test_fixed_timeout_lets_the_apps_own_timeout_error_through(fixed_timeout):
    with pytest.raises(TimeoutError):
        call(TimeoutMiddleware(failing_app, timeout=300))


def test_fixed_timeout_still_answers_504_when_no_byte_comes(fixed_timeout):
    sent, live_timers = call(TimeoutMiddleware(silent_app, timeout=0.2))
    assert sent[0]["status"] == 504
    assert b"Not able to process the request in 0.2 seconds" in sent[1]["body"]
    assert live_timers == 0
