"""vLLM's own OpenAI-compatible server, run inside a BentoML service process.

Copied verbatim into every generated model folder from templates/vllm_openai.py by
scripts/generate.py (the generator imports it too, to check catalog entries with vLLM's
own argument parser). Nothing here re-implements vLLM: the routes, request validation,
error objects and metrics are vLLM's; this module only starts the engine in the
background, hands requests to vLLM's app once it is ready, ends the server when the
engine cannot start or dies (supervisor.py), and keeps vLLM's metrics cheap inside BentoML (in memory, without
a second copy of BentoML's request metrics).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import typing as t

from patches import VLLM_METRIC_PREFIX, keep_vllm_metrics_in_process, leave_out_http_metrics, send_streamed_chunks_directly
from supervisor import end_server, exit_now

logger = logging.getLogger("bentoml.service")

LOADING_MESSAGE = "The model is still loading; retry when /readyz answers 200."
START_FAILED_STATUS = 3  # `bentoml serve`'s exit status when vLLM could not start
ENGINE_DIED_STATUS = 4  # ... and when vLLM's engine died while serving
ENGINE_DIED_MESSAGE = "vLLM's engine died; the server is stopping so that it can be restarted."
# How often the engine's state is checked, for deaths that no request saw (vLLM checks every 5 s).
# The check is `engine.errored` alone: vLLM's own watchdog (terminate_if_errored) also waits for
# the engine's output handler to end, and that handler starts with the first request when the
# engine is made off the event loop, as here; an idle engine's death would never count.
ENGINE_WATCH_INTERVAL_S = 1.0
# How long /livez and /readyz say 503 (and requests get their error) before the server stops.
STOP_DELAY_S = 2.0


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


def vllm_metrics_text() -> str:
    """vLLM's in-process metrics in Prometheus' text format, to append to BentoML's /metrics."""
    from prometheus_client import REGISTRY, generate_latest

    class VLLMMetrics:
        @staticmethod
        def collect():
            return (m for m in REGISTRY.collect() if m.name.startswith(VLLM_METRIC_PREFIX))

    return generate_latest(VLLMMetrics()).decode()


class EngineDeathHook:
    """What vLLM's engine-error handlers expect at `app.state.server`.

    In `vllm serve` that is its uvicorn server: when the engine has died, vLLM's exception
    handler and its watchdog (`terminate_if_errored`) set `should_exit = True` on it, and
    the server stops. Here setting it calls `on_exit` once, which ends `bentoml serve`.
    """

    def __init__(self, on_exit: t.Callable[[], None]) -> None:
        self._on_exit = on_exit
        self._should_exit = False

    @property
    def should_exit(self) -> bool:
        return self._should_exit

    @should_exit.setter
    def should_exit(self, value: bool) -> None:
        if value and not self._should_exit:
            self._should_exit = True
            self._on_exit()



class OpenAIServer:
    """ASGI app that is vLLM's OpenAI app once the engine is ready, and a 503 before.

    A start that fails and an engine that dies end `bentoml serve` with a non-zero status
    (supervisor.end_server); from then until it exits, the probes and requests get a 503.
    """

    def __init__(self) -> None:
        self.app = None
        self.engine = None
        self.failure: str | None = None  # why this server cannot serve, once it cannot
        self._task: asyncio.Task | None = None
        self._stopping: asyncio.Event | None = None

    async def __call__(self, scope, receive, send) -> None:
        app = self.app
        if app is not None and self.failure is None:
            await app(scope, receive, send_streamed_chunks_directly(scope, send))
        elif scope["type"] == "http":
            await send_openai_error(send, 503, self.failure or LOADING_MESSAGE, "ServiceUnavailableError")

    async def stream_chat(self, messages: list[dict], **params: t.Any) -> t.AsyncIterator[str]:
        """Stream the answer of a chat completion through vLLM's own chat serving code.

        With a reasoning parser, vLLM streams the reasoning apart from the answer; only the
        answer (`content`) comes out here.
        """
        from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest

        with self._client_errors():
            request = ChatCompletionRequest(messages=messages, stream=True, **params)
            result = self._check(await self._state().openai_serving_chat.create_chat_completion(request))
        async for event in result:
            payload = event.removeprefix("data: ").strip()
            if payload == "[DONE]":
                break
            chunk = json.loads(payload)
            if "error" in chunk:  # vLLM reports an error met while streaming as an event
                raise self._error(chunk["error"]["code"], chunk["error"]["message"])
            for choice in chunk.get("choices", []):
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
        """vLLM's serving code returns an ErrorResponse where it refuses or fails a request:
        raise it with vLLM's status (4xx the caller's fault, 5xx the server's)."""
        from vllm.entrypoints.serve.engine.protocol import ErrorResponse

        if isinstance(result, ErrorResponse):
            raise OpenAIServer._error(result.error.code, result.error.message)
        return result

    @staticmethod
    def _error(status: int, message: str):
        """The BentoML exception that answers with this HTTP status."""
        from http import HTTPStatus

        from bentoml.exceptions import (
            InternalServerError, InvalidArgument, NotFound, ServiceUnavailable, UnprocessableEntity,
        )

        status = HTTPStatus(status)
        exact = {HTTPStatus.BAD_REQUEST: InvalidArgument, HTTPStatus.NOT_FOUND: NotFound,
                 HTTPStatus.UNPROCESSABLE_ENTITY: UnprocessableEntity, HTTPStatus.SERVICE_UNAVAILABLE: ServiceUnavailable}
        error_type = exact.get(status, InvalidArgument if status < 500 else InternalServerError)
        return error_type(message, error_code=status)

    @staticmethod
    @contextlib.contextmanager
    def _client_errors():
        """pydantic's ValueErrors and vLLM's client errors are the caller's fault: a 400.
        vLLM's server errors are not: a dead engine is a 503 (the probes say so too), any
        other a 500."""
        import bentoml
        from vllm.exceptions import VLLMClientError, VLLMServerError
        from vllm.v1.engine.exceptions import EngineDeadError

        try:
            yield
        except EngineDeadError as exc:
            raise bentoml.exceptions.ServiceUnavailable(f"vLLM's engine has stopped: {exc}") from exc
        except VLLMServerError as exc:
            raise bentoml.exceptions.InternalServerError(str(exc)) from exc
        except (ValueError, VLLMClientError) as exc:
            raise bentoml.exceptions.InvalidArgument(str(exc)) from None

    @property
    def ready(self) -> bool:
        return self.failure is None and self.app is not None and not self.engine.errored

    @property
    def alive(self) -> bool:
        return self.failure is None and (self.engine is None or not self.engine.errored)

    def start(self, argv: list[str]) -> None:
        """Start vLLM's engine and app in the background, so health checks answer meanwhile."""
        keep_vllm_metrics_in_process()
        self._stopping = asyncio.Event()
        self._task = asyncio.create_task(self._run(argv))

    async def stop(self) -> None:
        if self._task is None:
            return
        self._stopping.set()
        if self.app is None and not self._task.done():
            # vLLM is still starting, in a thread that nothing interrupts: waiting for it
            # would hold the stop for minutes, or for ever once its engine processes are stopped.
            logger.warning("Stopped while vLLM was still starting: this worker ends its engine processes and exits.")
            kill_child_processes()
            exit_now(0)
        await self._task

    async def _run(self, argv: list[str]) -> None:
        try:
            async with self._serving(argv):
                await self._stopping.wait()
        except (Exception, SystemExit) as exc:  # SystemExit: vLLM's argument parser refused argv
            if self.app is not None:  # it had served: an error while stopping, not a failed start
                logger.exception("vLLM stopped with an error")
                return
            logger.exception("vLLM could not start with: vllm serve %s", " ".join(argv))
            self._fail(START_FAILED_STATUS, f"vLLM could not start: {failure_text(exc)}")
        finally:
            self.app = None

    def _fail(self, status: int, reason: str) -> None:
        """Answer 503 from now on, and end `bentoml serve` shortly (in-flight requests get their errors)."""
        if self.failure is not None:
            return
        self.failure = reason
        logger.error("%s The server exits with status %d in %.0f s.", reason, status, STOP_DELAY_S)
        asyncio.get_running_loop().call_later(STOP_DELAY_S, end_server, status, reason)

    def _engine_died(self) -> None:
        self._fail(ENGINE_DIED_STATUS, ENGINE_DIED_MESSAGE)

    async def _watch_engine(self, hook: EngineDeathHook, engine) -> None:
        """vLLM's own watchdog, more often: the engine may die while no request is running."""
        from vllm import envs

        while not hook.should_exit:
            await asyncio.sleep(ENGINE_WATCH_INTERVAL_S)
            if engine.errored and not envs.VLLM_KEEP_ALIVE_ON_ENGINE_DEATH:
                hook.should_exit = True

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
            app.state.server = EngineDeathHook(self._engine_died)
            async with app.router.lifespan_context(app):
                self.engine, self.app = engine, app
                logger.info("vLLM is ready: %s serves %s", args.served_model_name, tasks)
                watch = asyncio.create_task(self._watch_engine(app.state.server, engine))
                try:
                    yield
                finally:
                    watch.cancel()
        finally:
            engine.shutdown()


def kill_child_processes() -> None:
    """SIGKILL every process this one started (vLLM's engine processes), children first."""
    import psutil

    for process in reversed(psutil.Process().children(recursive=True)):
        with contextlib.suppress(psutil.Error):
            process.kill()


def failure_text(exc: BaseException) -> str:
    if isinstance(exc, SystemExit):
        return f"vLLM's argument parser refused the arguments (exit status {exc.code}; its message is above)"
    return " ".join(f"{type(exc).__name__}: {exc}".split())[:1000]


def create_engine(args):
    """vLLM's async engine for parsed `vllm serve` arguments, as vLLM's own server makes it."""
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.usage.usage_lib import UsageContext
    from vllm.v1.engine.async_llm import AsyncLLM

    engine_args = AsyncEngineArgs.from_cli_args(args)
    return AsyncLLM.from_engine_args(engine_args, usage_context=UsageContext.OPENAI_API_SERVER)
