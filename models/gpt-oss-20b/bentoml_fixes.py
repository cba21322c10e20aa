"""A fix to BentoML's HTTP serving that matters under LLM traffic.

Copied verbatim into every generated model folder from templates/bentoml_fixes.py by
scripts/generate.py.
"""

from __future__ import annotations

import asyncio

from bentoml._internal.server.http.traffic import TimeoutMiddleware
from starlette.responses import JSONResponse


def fix_request_timeout() -> None:
    """Make BentoML's request timeout (`traffic.timeout`) cheap: no timer left behind, no extra task.

    BentoML 1.4's TimeoutMiddleware arms `loop.call_later(timeout, ...)` for every request
    and never cancels it, so each request leaves a timer in the event loop for `timeout`
    seconds after it ended: tens of thousands at a few hundred requests per second and a
    timeout of minutes. It also runs the rest of the app in a task of its own, so every
    request waits one more turn of a busy event loop before vLLM sees it. Both showed in
    the Bento's CPU per request and time to first token (README, Performance).
    This keeps BentoML's behaviour (a 504 when no byte is sent within the timeout; the
    timeout bounds only the wait for the first byte) with `asyncio.timeout` in the
    request's own task, disarmed at the first byte.
    """
    if "call_later" not in TimeoutMiddleware.__call__.__code__.co_names:
        return  # not the timer-based middleware this fixes (or fixed already)
    TimeoutMiddleware.__call__ = _timeout_middleware_call


async def _timeout_middleware_call(self: TimeoutMiddleware, scope, receive, send) -> None:
    # BentoML 1.4.39's TimeoutMiddleware.__call__, without its timer and task per request.
    if scope["type"] not in ("http", "websocket"):
        return await self.app(scope, receive, send)
    deadline = asyncio.timeout(self.timeout)
    started = False

    async def _send(message) -> None:
        nonlocal started
        if not started:
            started = True
            deadline.reschedule(None)  # the first byte is out: no timeout from here on
        await send(message)

    try:
        async with deadline:
            await self.app(scope, receive, _send)
    except TimeoutError:
        if not deadline.expired():
            raise  # the app's own TimeoutError, not this deadline
        resp = JSONResponse({"error": f"Not able to process the request in {self.timeout} seconds"}, status_code=504)
        await resp(scope, receive, send)
