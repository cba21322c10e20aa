"""The router of a generated gateway: one OpenAI endpoint in front of several model services.

Copied verbatim into every generated gateway folder from templates/gateway/gateway.py by
scripts/generate.py. Each model runs as its own BentoML service (`bentoml.depends`), in its
own worker under `bentoml serve` and as its own deployment on BentoCloud. This ASGI app
reads the JSON `model` of each request and streams the request to, and the reply back
from, the model service that serves that name. Only the request body is read whole (to
find `model`); replies pass through chunk by chunk. A client that goes away closes the
request to the model service, which makes vLLM abort it and free the engine.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import typing as t
from urllib.parse import unquote, urlparse

import httpx
from prometheus_client import generate_latest
from prometheus_client.core import CounterMetricFamily

logger = logging.getLogger("bentoml.service")

API_KEY_ENV = "VLLM_API_KEY"
LOADING_MESSAGE = "The models are still loading; retry when /readyz answers 200."
# Connection-level headers and the ones httpx sets itself are not passed on.
NOT_FORWARDED = frozenset({
    b"host", b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"te",
    b"trailer", b"upgrade", b"content-length",
})
NOT_RETURNED = frozenset({b"connection", b"keep-alive", b"transfer-encoding", b"content-length", b"date", b"server"})


def upstream_client(url: str, timeout: float) -> httpx.AsyncClient:
    """A client for one model service: a unix socket under `bentoml serve`, http(s) when deployed."""
    transport = None
    parsed = urlparse(url)
    if parsed.scheme == "file":
        transport = httpx.AsyncHTTPTransport(uds=unquote(parsed.path))
        url = "http://model-service"
    elif parsed.scheme == "tcp":
        url = f"http://{parsed.netloc}"
    return httpx.AsyncClient(
        base_url=url,
        transport=transport,
        timeout=httpx.Timeout(timeout, connect=10),
        limits=httpx.Limits(max_connections=None, max_keepalive_connections=512),
    )


def openai_error(status: int, message: str, err_type: str, param: str | None = None) -> bytes:
    """An error object shaped as vLLM's own."""
    return json.dumps({"error": {"message": message, "type": err_type, "param": param, "code": status}}).encode()


async def send_json(send, status: int, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})


async def read_body(receive) -> bytes | None:
    """The whole request body, or None when the client went away first."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


async def until_disconnect(receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


class RequestCounts:
    """The gateway's own count of requests per model and status, as a Prometheus counter."""

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str], int] = {}

    def add(self, model: str, status: int) -> None:
        key = (model, str(status))
        self.counts[key] = self.counts.get(key, 0) + 1

    def collect(self) -> t.Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(
            "llm_gateway_requests", "Requests the gateway routed, by model and status", labels=["model", "status"]
        )
        for (model, status), count in sorted(self.counts.items()):
            family.add_metric([model, status], count)
        yield family

    def text(self) -> str:
        return generate_latest(self).decode()


class Router:
    """ASGI app: GET /v1/models lists every model service's models; other requests go by `model`."""

    def __init__(self, default_model: str | None = None, timeout: float = 300) -> None:
        self.default_model = default_model
        self.timeout = timeout
        self.clients: list[httpx.AsyncClient] = []
        self.routes: dict[str, httpx.AsyncClient] = {}  # served model name -> its service's client
        self.model_list = b""
        self.counts = RequestCounts()
        self._discovery: asyncio.Task | None = None

    @property
    def ready(self) -> bool:
        return bool(self.routes)

    def connect(self, urls: list[str]) -> None:
        """Open a client to each model service and learn their model names once they are ready."""
        self.clients = [upstream_client(url, self.timeout) for url in urls]
        self._discovery = asyncio.create_task(self._discover())

    async def close(self) -> None:
        if self._discovery is not None:
            self._discovery.cancel()
        await asyncio.gather(*(client.aclose() for client in self.clients))

    async def _discover(self) -> None:
        while True:
            try:
                listings = await asyncio.gather(*(self._models_of(client) for client in self.clients))
                break
            except (httpx.HTTPError, LookupError):
                await asyncio.sleep(1)
        data = [model for listing in listings for model in listing]
        self.model_list = json.dumps({"object": "list", "data": data}).encode()
        self.routes = {model["id"]: client for client, listing in zip(self.clients, listings) for model in listing}
        logger.info("gateway routes: %s", ", ".join(self.routes))

    @staticmethod
    async def _models_of(client: httpx.AsyncClient) -> list[dict]:
        headers = {"authorization": f"Bearer {key}"} if (key := os.environ.get(API_KEY_ENV)) else {}
        response = await client.get("/v1/models", headers=headers)
        if response.status_code != 200:
            raise LookupError(f"/v1/models answered {response.status_code}")
        return response.json()["data"]

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return
        if not self.ready:
            await send_json(send, 503, openai_error(503, LOADING_MESSAGE, "ServiceUnavailableError"))
        elif scope["method"] in ("GET", "HEAD"):
            await self._get(scope, send)
        elif (body := await read_body(receive)) is not None:
            await self._route(scope, receive, send, body)

    async def _get(self, scope, send) -> None:
        if scope["path"] == "/v1/models":
            await send_json(send, 200, self.model_list)
        elif scope["path"] == "/health":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b""})
        else:
            message = f"{scope['path']} is not a GET route of this gateway: GET /v1/models, POST the OpenAI routes."
            await send_json(send, 404, openai_error(404, message, "NotFoundError"))

    async def _route(self, scope, receive, send, body: bytes) -> None:
        try:
            model = json.loads(body).get("model") or self.default_model
        except (ValueError, AttributeError):
            await send_json(send, 400, openai_error(400, "The gateway routes JSON object bodies by `model`.", "BadRequestError"))
            return
        if not isinstance(model, str):
            message = "`model` is required: this gateway serves " + ", ".join(self.routes) + "."
            await send_json(send, 400, openai_error(400, message, "BadRequestError", "model"))
            return
        client = self.routes.get(model)
        if client is None:
            message = f"The model `{model}` does not exist. Valid aliases: {', '.join(self.routes)}."
            await send_json(send, 404, openai_error(404, message, "NotFoundError", "model"))
            return
        forward = asyncio.ensure_future(self._forward(client, scope, send, body, model))
        disconnect = asyncio.ensure_future(until_disconnect(receive))
        try:
            await asyncio.wait((forward, disconnect), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (forward, disconnect):
                task.cancel()
            await asyncio.wait((forward, disconnect))  # the upstream request is closed when this returns
        if not forward.cancelled() and forward.exception() is not None:
            raise forward.exception()

    async def _forward(self, client: httpx.AsyncClient, scope, send, body: bytes, model: str) -> None:
        """Send the request to the model service and stream its answer back as it comes."""
        headers = [(k, v) for k, v in scope["headers"] if k not in NOT_FORWARDED]
        target = scope["path"] + ("?" + scope["query_string"].decode() if scope["query_string"] else "")
        request = client.build_request(scope["method"], target, headers=headers, content=body)
        try:
            response = await client.send(request, stream=True)
        except httpx.HTTPError as exc:
            self.counts.add(model, 502)
            await send_json(send, 502, openai_error(502, f"The service of `{model}` did not answer: {exc!r}", "BadGatewayError"))
            return
        self.counts.add(model, response.status_code)
        try:
            returned = [(k, v) for k, v in response.headers.raw if k.lower() not in NOT_RETURNED]
            await send({"type": "http.response.start", "status": response.status_code, "headers": returned})
            async for chunk in response.aiter_raw():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        finally:
            await response.aclose()
