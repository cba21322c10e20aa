"""A fix to BentoML's HTTP serving that matters under LLM traffic.

Copied verbatim into every generated model folder from templates/bentoml_fixes.py by
scripts/generate.py.
"""

from __future__ import annotations

import asyncio

from bentoml._internal.server.http.traffic import TimeoutMiddleware
from starlette.responses import JSONResponse


def cancel_request_timers() -> None:
    """Make BentoML's request timeout (`traffic.timeout`) cancel its timer once it is moot.

    BentoML 1.4's TimeoutMiddleware arms `loop.call_later(timeout, ...)` for every request
    and never cancels it, so each request leaves a timer in the event loop for `timeout`
    seconds after it ended: tens of thousands at a few hundred requests per second and a
    timeout of minutes. Measured here, about 45 µs more CPU per request, most of what the
    Bento's worker spent beyond plain vLLM's server on short requests (README, Performance).
    This runs BentoML's own logic with one change: the timer is cancelled as soon as the
    first byte goes out (the timeout only bounds the wait for it) or the request ends.
    """
    if "call_later" not in TimeoutMiddleware.__call__.__code__.co_names:
        return  # not the timer-based middleware this fixes (or fixed already)
    TimeoutMiddleware.__call__ = _timeout_middleware_call


async def _timeout_middleware_call(self: TimeoutMiddleware, scope, receive, send) -> None:
    # BentoML 1.4.39's TimeoutMiddleware.__call__, plus the two lines marked "fix".
    if scope["type"] not in ("http", "websocket"):
        return await self.app(scope, receive, send)
    loop = asyncio.get_running_loop()
    waiter = loop.create_future()
    timer = loop.call_later(self.timeout, self._set_timer_out, waiter)  # fix: keep the handle
    waiter.add_done_callback(lambda _: timer.cancel())  # fix: first byte, timeout or cancel

    async def _send(message) -> None:
        if not waiter.done():
            waiter.set_result(None)
        await send(message)

    fut = asyncio.ensure_future(self.app(scope, receive, _send), loop=loop)
    try:
        await waiter
    except asyncio.TimeoutError:
        if fut.cancel():
            resp = JSONResponse(
                {"error": f"Not able to process the request in {self.timeout} seconds"}, status_code=504
            )
            await resp(scope, receive, send)
    else:
        await fut
