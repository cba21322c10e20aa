"""vLLM's own OpenAI-compatible server, run inside a BentoML service process.

Copied verbatim into every generated model folder from templates/vllm_openai.py by
scripts/generate.py (the generator imports it too, to check catalog entries with vLLM's
own argument parser). Nothing here re-implements vLLM: the routes, request validation,
error objects and metrics are vLLM's; this module only starts the engine in the
background, hands requests to vLLM's app once it is ready, stops the server when the
engine cannot start, and keeps vLLM's metrics cheap inside BentoML (in memory, without
a second copy of BentoML's request metrics).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import typing as t

logger = logging.getLogger("bentoml.service")

LOADING_MESSAGE = "The model is still loading; retry when /readyz answers 200."
VLLM_METRIC_PREFIX = "vllm:"


def engine_argv(model_path: str, config: t.Mapping[str, t.Any]) -> list[str]:
    """Turn ENGINE_CONFIG into the command line `vllm serve` would take."""
    argv = ["--model", model_path]
    for key, value in config.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            argv.append(flag)
        elif value is False:
            argv.append("--no-" + key.replace("_", "-"))
        elif isinstance(value, dict):
            argv += [flag, json.dumps(value)]
        elif isinstance(value, (list, tuple)):
            argv += [flag, *(json.dumps(v) if isinstance(v, dict) else str(v) for v in value)]
        else:
            argv += [flag, str(value)]
    return argv


def parse_engine_args(argv: list[str]):
    """Parse and check a command line with vLLM's own `vllm serve` parser."""
    from vllm.entrypoints.launchers.cli_args import make_arg_parser, validate_parsed_serve_args
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = make_arg_parser(FlexibleArgumentParser(prog="vllm serve"))
    args = parser.parse_args(argv)
    validate_parsed_serve_args(args)
    return args


async def send_openai_error(send, status: int, message: str, err_type: str) -> None:
    body = json.dumps({"error": {"message": message, "type": err_type, "param": None, "code": status}})
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"retry-after", b"5")],
        }
    )
    await send({"type": "http.response.body", "body": body.encode()})


def keep_vllm_metrics_in_process() -> None:
    """Give vLLM's Prometheus metrics plain in-memory values; every other metric keeps BentoML's.

    `bentoml serve` sets PROMETHEUS_MULTIPROC_DIR, so each Prometheus value is an entry in an
    mmap'ed file that BentoML's /metrics merges across workers: about ten times the cost of an
    in-memory value. vLLM observes histograms for every generated token, which made this the
    largest share of the Bento's extra CPU per token (README, Performance). This service runs
    one worker, so vLLM's values need no merging; `vllm_metrics_text` exports them. Must run
    before vLLM creates its metrics, i.e. before vLLM is imported.
    """
    from prometheus_client import values

    shared_value = values.ValueClass
    if not getattr(shared_value, "_multiprocess", False):  # not multiprocess mode, or done already
        return

    def value_class(typ, metric_name, *args, **kwargs):
        chosen = values.MutexValue if metric_name.startswith(VLLM_METRIC_PREFIX) else shared_value
        return chosen(typ, metric_name, *args, **kwargs)

    values.ValueClass = value_class


def vllm_metrics_text() -> str:
    """vLLM's in-process metrics in Prometheus' text format, to append to BentoML's /metrics."""
    from prometheus_client import REGISTRY, generate_latest

    class VLLMMetrics:
        @staticmethod
        def collect():
            return (m for m in REGISTRY.collect() if m.name.startswith(VLLM_METRIC_PREFIX))

    return generate_latest(VLLMMetrics()).decode()


def leave_out_http_metrics(app) -> None:
    """Take vLLM's HTTP request metrics (`http_requests_total`, ...) out of its app.

    BentoML's own middleware already counts and times every request, vLLM's routes
    included (`bentoml_service_request_total`, `..._duration_seconds`, by endpoint and
    status). vLLM's copy cost about 60 µs of CPU per request (README, Performance) for
    numbers that say the same.
    """
    from prometheus_fastapi_instrumentator.middleware import PrometheusInstrumentatorMiddleware

    app.user_middleware = [m for m in app.user_middleware if m.cls is not PrometheusInstrumentatorMiddleware]
    app.middleware_stack = None  # vLLM's build_app built it already; Starlette rebuilds it on the first request


def stop_server(exit_code: int) -> None:
    """End `bentoml serve` instead of letting its supervisor restart a worker that cannot start.

    The worker's parent is BentoML's process supervisor; it would respawn this worker
    forever. Ending the supervisor first and then this process makes the whole server
    exit with a non-zero status.
    """
    parent = os.getppid()
    if parent > 1:
        with contextlib.suppress(ProcessLookupError):
            os.kill(parent, signal.SIGKILL)
    os._exit(exit_code)


class OpenAIServer:
    """ASGI app that is vLLM's OpenAI app once the engine is ready, and a 503 before."""

    def __init__(self) -> None:
        self.app = None
        self.engine = None
        self._task: asyncio.Task | None = None
        self._stopping: asyncio.Event | None = None

    async def __call__(self, scope, receive, send) -> None:
        app = self.app
        if app is not None:
            await app(scope, receive, send)
        elif scope["type"] == "http":
            await send_openai_error(send, 503, LOADING_MESSAGE, "ServiceUnavailableError")

    async def stream_chat(self, messages: list[dict], **params: t.Any) -> t.AsyncIterator[str]:
        """Stream the text of a chat completion through vLLM's own chat serving code."""
        from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest

        with self._client_errors():
            request = ChatCompletionRequest(messages=messages, stream=True, **params)
            result = self._check(await self._state().openai_serving_chat.create_chat_completion(request))
        async for event in result:
            payload = event.removeprefix("data: ").strip()
            if payload == "[DONE]":
                break
            for choice in json.loads(payload).get("choices", []):
                if text := choice.get("delta", {}).get("content"):
                    yield text

    async def embed(self, texts: list[str]) -> list[list[float]]:
        """Embed texts through vLLM's own /v1/embeddings serving code."""
        from vllm.entrypoints.pooling.embed.protocol import EmbeddingCompletionRequest

        with self._client_errors():
            request = EmbeddingCompletionRequest(input=texts)
            result = self._check(await self._state().serving_embedding(request, None))
        # vLLM answers with its ready HTTP response (a JSONResponse) on success.
        return [item["embedding"] for item in json.loads(result.body)["data"]]

    def _state(self):
        import bentoml

        if self.app is None:
            raise bentoml.exceptions.ServiceUnavailable(LOADING_MESSAGE)
        return self.app.state

    @staticmethod
    def _check(result):
        """vLLM's serving code returns an ErrorResponse for bad requests: raise it as a 4xx."""
        import bentoml
        from vllm.entrypoints.serve.engine.protocol import ErrorResponse

        if isinstance(result, ErrorResponse):
            raise bentoml.exceptions.InvalidArgument(result.error.message)
        return result

    @staticmethod
    @contextlib.contextmanager
    def _client_errors():
        """pydantic's ValueErrors and vLLM's client errors are the caller's fault: a 400."""
        import bentoml
        from vllm.exceptions import VLLMClientError

        try:
            yield
        except (ValueError, VLLMClientError) as exc:
            raise bentoml.exceptions.InvalidArgument(str(exc)) from None

    @property
    def ready(self) -> bool:
        return self.app is not None and not self.engine.errored

    @property
    def alive(self) -> bool:
        return self.engine is None or not self.engine.errored

    def start(self, argv: list[str]) -> None:
        """Start vLLM's engine and app in the background, so health checks answer meanwhile."""
        keep_vllm_metrics_in_process()
        self._stopping = asyncio.Event()
        self._task = asyncio.create_task(self._run(argv))

    async def stop(self) -> None:
        if self._task is not None:
            self._stopping.set()
            await self._task

    async def _run(self, argv: list[str]) -> None:
        try:
            async with self._serving(argv):
                await self._stopping.wait()
        except Exception:
            if self.app is not None:  # it had served: an error while stopping, not a failed start
                logger.exception("vLLM stopped with an error")
                return
            logger.exception("vLLM could not start with: vllm serve %s", " ".join(argv))
            stop_server(3)
        finally:
            self.app = None

    @contextlib.asynccontextmanager
    async def _serving(self, argv: list[str]):
        from vllm.entrypoints.launchers.api_server.app_state import init_app_state
        from vllm.entrypoints.launchers.app import build_app

        # vLLM's imports and engine start block for many seconds: do them off the event
        # loop, so that /livez and /readyz (503) answer while the model loads.
        args = await asyncio.to_thread(parse_engine_args, argv)
        engine = await asyncio.to_thread(create_engine, args)
        try:
            await engine.reset_mm_cache()
            tasks = await engine.get_supported_tasks()
            app = build_app(args, tasks, engine.model_config)
            leave_out_http_metrics(app)
            await init_app_state(engine, app.state, args, tasks)
            async with app.router.lifespan_context(app):
                self.engine, self.app = engine, app
                logger.info("vLLM is ready: %s serves %s", args.served_model_name, tasks)
                yield
        finally:
            engine.shutdown()


def create_engine(args):
    """vLLM's async engine for parsed `vllm serve` arguments, as vLLM's own server makes it."""
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.usage.usage_lib import UsageContext
    from vllm.v1.engine.async_llm import AsyncLLM

    engine_args = AsyncEngineArgs.from_cli_args(args)
    return AsyncLLM.from_engine_args(engine_args, usage_context=UsageContext.OPENAI_API_SERVER)
