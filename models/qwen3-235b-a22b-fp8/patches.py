"""Five patches of library internals that keep the Bento as fast as plain vLLM, each guarded.

Copied verbatim into every generated model folder from templates/patches.py by
scripts/generate.py.

- `fix_request_timeout`: BentoML's request timeout without a timer and a task per request.
- `keep_vllm_metrics_in_process`: vLLM's Prometheus values in memory, not in BentoML's files.
- `leave_out_http_metrics`: no second copy of BentoML's HTTP request metrics in vLLM's app.
- `cache_request_metric_labels`: BentoML's request metrics find their labelled series once, not per request.
- `send_streamed_chunks_past_middlewares`: a stream's chunks skip BentoML's middlewares, which pass them on unchanged.

Each replaces a private part of a library, measured with the pinned versions
(docs/performance.md). `guarded_patch` applies one only while the code it replaces is, to the
byte, the code it was tested on (a digest of that code's source, so a new version with
the same code still gets it and a changed one does not). Otherwise, or when the patch
itself raises, it logs one warning naming the patch and leaves the library's own
behaviour: the service serves as it would without the patch, only slower.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import importlib.metadata
import inspect
import logging
import typing as t

logger = logging.getLogger("bentoml.service")

VLLM_METRIC_PREFIX = "vllm:"
_warned: set[str] = set()


def source_digest(objects: t.Iterable[object]) -> str:
    """A short digest of the source code of functions and classes."""
    source = "".join(inspect.getsource(o) for o in objects)  # type: ignore[arg-type]
    return hashlib.sha256(source.encode()).hexdigest()[:16]


def installed_versions(modules: t.Iterable[str]) -> str:
    """`name version` of the distributions that provide these top-level modules."""
    try:
        providers = importlib.metadata.packages_distributions()
    except Exception:  # only said in a warning: never a reason to stop
        return "unknown"
    found = []
    for module in modules:
        for dist in providers.get(module, [module]):
            try:
                found.append(f"{dist} {importlib.metadata.version(dist)}")
            except importlib.metadata.PackageNotFoundError:
                found.append(f"{dist} (not installed)")
    return ", ".join(found)


def warn_once(name: str, message: str, *, exc_info: bool = False) -> None:
    if name not in _warned:
        _warned.add(name)
        logger.warning("%s: %s", name, message, exc_info=exc_info)


def guarded_patch(
    *,
    replaces: str,
    tested_with: dict[str, str],
    internals: t.Callable[[], tuple],
    digest: str,
    applied: t.Callable[..., bool],
    needed: t.Callable[..., bool] = lambda *args: True,
) -> t.Callable[[t.Callable[..., None]], t.Callable[..., bool]]:
    """Apply the decorated patch only where the code it replaces is the code it was tested on.

    replaces: what it changes, in words; tested_with: import name -> version it was tested
    with (said in the warning, and checked against constraints.txt by the tests); internals:
    the functions and classes whose source must have `digest`; applied: True once the
    patch is in; needed: False where the case it fixes does not arise. The patched call returns True
    when the library is patched, False when it is left as it was.
    """

    def decorate(patch: t.Callable[..., None]) -> t.Callable[..., bool]:
        name = patch.__name__
        tested = ", ".join(f"{module} {version}" for module, version in tested_with.items())

        @functools.wraps(patch)
        def guarded(*args: t.Any) -> bool:
            try:
                if applied(*args):
                    return True
                if not needed(*args):
                    return False
                found = source_digest(internals())
            except Exception as exc:  # an internal that is gone or moved counts as changed
                found = f"unreadable ({type(exc).__name__}: {exc})"
            if found != digest:
                warn_once(
                    name,
                    f"not applied: {replaces} is not the code it was tested on ({tested}; installed: "
                    f"{installed_versions(tested_with)}; source digest {found}, expected {digest}). "
                    "The library's own behaviour stays: the service works, with more CPU per request.",
                )
                return False
            try:
                patch(*args)
            except Exception:
                warn_once(name, f"failed, so {replaces} keeps the library's own behaviour", exc_info=True)
                return False
            return True

        guarded.replaces = replaces  # type: ignore[attr-defined]
        guarded.tested_with = tested_with  # type: ignore[attr-defined]
        guarded.digest = digest  # type: ignore[attr-defined]
        guarded.internals = internals  # type: ignore[attr-defined]
        return guarded

    return decorate


# 1. BentoML's request timeout ------------------------------------------------------------


def _timeout_middleware():
    from bentoml._internal.server.http.traffic import TimeoutMiddleware

    return TimeoutMiddleware


@guarded_patch(
    replaces="BentoML's TimeoutMiddleware",
    tested_with={"bentoml": "1.4.39"},
    internals=lambda: (_timeout_middleware().__init__, _timeout_middleware().__call__),
    digest="f4843ab4c72ea2c2",
    applied=lambda: _timeout_middleware().__call__ is _timeout_middleware_call,
)
def fix_request_timeout() -> None:
    """Make BentoML's request timeout (`traffic.timeout`) cheap: no timer left behind, no extra task.

    BentoML 1.4's TimeoutMiddleware arms `loop.call_later(timeout, ...)` for every request
    and never cancels it, so each request leaves a timer in the event loop for `timeout`
    seconds after it ended: tens of thousands at a few hundred requests per second and a
    timeout of minutes. It also runs the rest of the app in a task of its own, so every
    request waits one more turn of a busy event loop before vLLM sees it. Both showed in
    the Bento's CPU per request and time to first token (docs/performance.md).
    This keeps BentoML's behaviour (a 504 when no byte is sent within the timeout; the
    timeout bounds only the wait for the first byte) with `asyncio.timeout` in the
    request's own task, disarmed at the first byte.
    """
    _timeout_middleware().__call__ = _timeout_middleware_call


async def _timeout_middleware_call(self, scope, receive, send) -> None:
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
        from starlette.responses import JSONResponse

        resp = JSONResponse({"error": f"Not able to process the request in {self.timeout} seconds"}, status_code=504)
        await resp(scope, receive, send)


# 2. vLLM's Prometheus values in memory ---------------------------------------------------


def _prometheus_value_code() -> tuple:
    """prometheus_client's value classes and the metric constructors that make values."""
    from prometheus_client import metrics, values

    makers = tuple(cls._metric_init for cls in (metrics.Counter, metrics.Gauge, metrics.Summary, metrics.Histogram))
    return (values.MutexValue, values.ValueClass, *makers)


def _values_module():
    from prometheus_client import values

    return values


@guarded_patch(
    replaces="prometheus_client's multiprocess ValueClass",
    tested_with={"prometheus_client": "0.26.0"},
    internals=_prometheus_value_code,
    digest="92ff5cf27042df69",
    applied=lambda: getattr(_values_module().ValueClass, "keeps_vllm_in_process", False),
    needed=lambda: getattr(_values_module().ValueClass, "_multiprocess", False),
)
def keep_vllm_metrics_in_process() -> None:
    """Give vLLM's Prometheus metrics plain in-memory values; every other metric keeps BentoML's.

    `bentoml serve` sets PROMETHEUS_MULTIPROC_DIR, so each Prometheus value is an entry in an
    mmap'ed file that BentoML's /metrics merges across workers: about ten times the cost of an
    in-memory value. vLLM observes histograms for every generated token, which made this the
    largest share of the Bento's extra CPU per token (docs/performance.md). This service runs
    one worker, so vLLM's values need no merging; `vllm_openai.vllm_metrics_text` exports
    them. Must run before vLLM creates its metrics, i.e. before vLLM is imported.
    """
    values = _values_module()
    values.ValueClass = _value_class_keeping_vllm_in_process(values.ValueClass, values.MutexValue)


def _value_class_keeping_vllm_in_process(shared: type, in_memory: type) -> type:
    """A stand-in for prometheus_client's `values.ValueClass` that makes vLLM's values in memory.

    A subclass of the multiprocess class it replaces, so every attribute code reads on
    `values.ValueClass` stays (`_multiprocess`, `close_all_files`); only construction differs.
    """

    class ValueClass(shared):  # type: ignore[valid-type,misc]
        keeps_vllm_in_process = True

        def __new__(cls, typ, metric_name, *args, **kwargs):
            chosen = in_memory if metric_name.startswith(VLLM_METRIC_PREFIX) else shared
            return chosen(typ, metric_name, *args, **kwargs)

    return ValueClass


# 3. vLLM's HTTP metrics ------------------------------------------------------------------


def _http_metrics_code() -> tuple:
    """Where vLLM adds its HTTP metrics middleware, and how Starlette builds the app from it."""
    from fastapi import FastAPI
    from prometheus_fastapi_instrumentator import Instrumentator
    from starlette.applications import Starlette
    from vllm.entrypoints.serve.instrumentator.metrics import attach_router

    return (attach_router, Instrumentator.instrument, FastAPI.build_middleware_stack, Starlette.__call__)


def _http_metrics_middleware():
    from prometheus_fastapi_instrumentator.middleware import PrometheusInstrumentatorMiddleware

    return PrometheusInstrumentatorMiddleware


@guarded_patch(
    replaces="vLLM's HTTP metrics middleware",
    tested_with={"vllm": "0.32.0", "prometheus_fastapi_instrumentator": "8.1.0", "fastapi": "0.136.3", "starlette": "1.10.0"},
    internals=_http_metrics_code,
    digest="d8580b508a05fd3a",
    applied=lambda app: False,
)
def leave_out_http_metrics(app) -> None:
    """Take vLLM's HTTP request metrics (`http_requests_total`, ...) out of its app.

    BentoML's own middleware already counts and times every request, vLLM's routes
    included (`bentoml_service_request_total`, `..._duration_seconds`, by endpoint and
    status). vLLM's copy cost about 60 µs of CPU per request (docs/performance.md) for
    numbers that say the same.
    """
    middleware = _http_metrics_middleware()
    kept = [m for m in app.user_middleware if m.cls is not middleware]
    if len(kept) != len(app.user_middleware) - 1:
        raise LookupError(f"expected one {middleware.__name__} in vLLM's app, found {len(app.user_middleware) - len(kept)}")
    app.user_middleware = kept
    app.middleware_stack = None  # Starlette builds it again, from user_middleware, on the first request


# 4. BentoML's request metrics: each labelled series looked up once ----------------------

# The metrics of BentoML's RunnerTrafficMetricsMiddleware that its __call__ reaches through `.labels(...)`.
REQUEST_METRICS = ("metrics_request_duration", "metrics_request_total", "metrics_request_in_progress",
                   "metrics_websocket_connections", "metrics_websocket_data_received",
                   "metrics_websocket_data_sent", "metrics_last_request_timestamp")
# Distinct label sets kept per metric (one per endpoint and status): past it, the cache starts again.
LABEL_CACHE_SIZE = 1024


def _request_metrics_middleware():
    from bentoml._internal.server.http.instruments import RunnerTrafficMetricsMiddleware

    return RunnerTrafficMetricsMiddleware


class LabelledSeries:
    """A Prometheus metric whose `labels(**names)` remembers the series it found for those names.

    prometheus_client's `labels()` checks, sorts and turns to text every label on every call;
    BentoML's middleware calls it four times per request with the same few label sets. The
    series (and so every value, and /metrics) are the metric's own; anything else is passed on.
    """

    def __init__(self, metric) -> None:
        self.metric = metric
        self._series: dict[tuple, t.Any] = {}

    def labels(self, **names):
        key = tuple(names.items())
        series = self._series.get(key)
        if series is None:
            if len(self._series) >= LABEL_CACHE_SIZE:
                self._series.clear()
            series = self._series[key] = self.metric.labels(**names)
        return series

    def __getattr__(self, name: str):
        return getattr(self.metric, name)


def _setup_with_cached_labels(original: t.Callable[..., None]) -> t.Callable[..., None]:
    @functools.wraps(original)
    def _setup(self, *args, **kwargs) -> None:
        original(self, *args, **kwargs)
        for name in REQUEST_METRICS:
            setattr(self, name, LabelledSeries(getattr(self, name)))

    _setup.caches_labels = True  # type: ignore[attr-defined]
    return _setup


@guarded_patch(
    replaces="BentoML's RunnerTrafficMetricsMiddleware",
    tested_with={"bentoml": "1.4.39"},
    internals=lambda: (_request_metrics_middleware()._setup, _request_metrics_middleware().__call__),
    digest="61d3a367d7954f67",
    applied=lambda: getattr(_request_metrics_middleware()._setup, "caches_labels", False),
)
def cache_request_metric_labels() -> None:
    """Keep BentoML's request metrics, with each labelled series looked up once per label set.

    Under load the profile of the Bento's worker (docs/performance.md, 2026-12-03) showed
    BentoML's request metrics as the largest of its own layers, and more than half of their
    cost in prometheus_client's `labels()`: four calls per request, each validating, sorting
    and stringifying five labels, to find the same series again. The same series are updated
    with the same values; only the look-up is remembered.
    """
    middleware = _request_metrics_middleware()
    middleware._setup = _setup_with_cached_labels(middleware._setup)


# 5. Streamed chunks past BentoML's middlewares ------------------------------------------

# Where the outermost of BentoML's middlewares leaves the `send` it was given, for OpenAIServer.
SEND_CHUNK_KEY = "llm_bentos.send_chunk"


def _service_app_factory():
    from _bentoml_impl.server.app import ServiceAppFactory

    return ServiceAppFactory


def _bypassed_middlewares() -> dict[str, type]:
    """The middlewares a streamed chunk goes around, by name: each does nothing with an HTTP
    body message that has more to come (tracing only where the route is excluded from it)."""
    from _bentoml_impl.server.app import ContextMiddleware
    from bentoml._internal.server.http.access import AccessLogMiddleware
    from bentoml._internal.server.http.instruments import RunnerTrafficMetricsMiddleware
    from bentoml._internal.server.http.traffic import MaxConcurrencyMiddleware, TimeoutMiddleware
    from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
    from starlette.middleware.cors import CORSMiddleware
    from starlette.middleware.exceptions import ExceptionMiddleware

    return {cls.__name__: cls for cls in (RunnerTrafficMetricsMiddleware, OpenTelemetryMiddleware, AccessLogMiddleware,
                                          TimeoutMiddleware, MaxConcurrencyMiddleware, CORSMiddleware, ContextMiddleware,
                                          ExceptionMiddleware)}


def _chunk_shortcut_code() -> tuple:
    """BentoML's middleware list, the `__call__` of each middleware a chunk goes around, and
    the request timeout's, which is patch 1's (this patch is applied only on top of it)."""
    bypassed = _bypassed_middlewares()
    return (_service_app_factory().middlewares.fget,
            *(cls.__call__ for name, cls in bypassed.items() if name != "TimeoutMiddleware"), _timeout_middleware_call)


class StreamedChunkShortcut:
    """The outermost of BentoML's middlewares: it leaves the `send` it was given in the request's
    scope, for requests that BentoML's tracing skips (the service's `tracing.excluded_urls`)."""

    def __init__(self, app, excluded_urls=None) -> None:
        from opentelemetry.instrumentation.asgi import get_host_port_url_tuple  # the URL tracing matches

        self.app = app
        self.excluded_urls = excluded_urls
        self._url = lambda scope: get_host_port_url_tuple(scope)[2]

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and self.excluded_urls is not None and self.excluded_urls.url_disabled(self._url(scope)):
            scope[SEND_CHUNK_KEY] = send
        await self.app(scope, receive, send)


def send_streamed_chunks_directly(scope, send):
    """The `send` for vLLM's app: a body message with more to come goes straight to the `send`
    that StreamedChunkShortcut kept, past BentoML's middlewares; the response's start and its
    last body message go through all of them (status, metrics, access log, timeout)."""
    direct = scope.get(SEND_CHUNK_KEY)
    if direct is None:
        return send
    started = False

    async def send_chunk(message) -> None:
        nonlocal started
        if started and message["type"] == "http.response.body" and message.get("more_body", False):
            await direct(message)
            return
        started = True
        await send(message)

    return send_chunk


def _with_chunk_shortcut(original: t.Callable[..., list]) -> t.Callable[..., list]:
    def middlewares(self) -> list:
        from starlette.middleware import Middleware

        stack = original(self)
        known = _bypassed_middlewares()
        unknown = [m.cls for m in stack if m.cls not in known.values() and getattr(m.cls, "__name__", "") != "APIKeyMiddleware"]
        if unknown:  # a middleware this was not tested with may change chunks: every chunk goes through it
            warn_once("send_streamed_chunks_past_middlewares",
                      f"not applied: the service has middlewares it was not tested with ({unknown}); every "
                      "streamed chunk goes through BentoML's middlewares, with more CPU per token.")
            return stack
        from bentoml._internal.container import BentoMLContainer

        return [Middleware(StreamedChunkShortcut, excluded_urls=BentoMLContainer.tracing_excluded_urls.get()), *stack]

    middlewares.shortcuts_chunks = True  # type: ignore[attr-defined]
    return middlewares


@guarded_patch(
    replaces="BentoML's middleware stack for streamed chunks",
    tested_with={"bentoml": "1.4.39", "starlette": "1.10.0"},  # and OpenTelemetry's ASGI middleware, in the digest
    internals=_chunk_shortcut_code,
    digest="d3f4fade8792b72e",
    applied=lambda: getattr(_service_app_factory().middlewares.fget, "shortcuts_chunks", False),
    needed=lambda: _timeout_middleware().__call__ is _timeout_middleware_call,  # patch 1 is in
)
def send_streamed_chunks_past_middlewares() -> None:
    """Send a streamed response's chunks past BentoML's middlewares, which do nothing with them.

    Every chunk of a stream went through BentoML's request metrics, access log, request
    timeout and Starlette's exception handler, each an `await` that passes the message on
    unchanged; under load that was the whole of the Bento's extra serving CPU per token over
    plain vLLM (docs/performance.md, 2026-12-07: the event-loop thread, 1.10x; 1.02x with this).
    The response's start and its last body message still go through every middleware: the
    status, the request metrics, the access-log line and the timeout are BentoML's. Only for
    routes BentoML does not trace (tracing would record each chunk), and only where the service
    runs no middleware but these (and web.py's key check): a middleware of the user's may change
    chunks, and then every chunk goes through it.
    """
    factory = _service_app_factory()
    factory.middlewares = property(_with_chunk_shortcut(factory.middlewares.fget))
