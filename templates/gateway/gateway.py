"""The router of a generated gateway: one OpenAI endpoint in front of several model services.

Copied verbatim into every generated gateway folder from templates/gateway/gateway.py by
scripts/generate.py. Each model runs as its own BentoML service (`bentoml.depends`), in its
own worker under `bentoml serve` and as its own deployment on BentoCloud. This ASGI app
reads the JSON `model` of each request and streams the request to, and the reply back
from, the model service that serves that name. Only the request body is read whole (to
find `model`); replies pass through as they arrive. A client that goes away closes the
request to the model service, which makes vLLM abort it and free the engine.

The hop to a model service is plain HTTP/1.1 on kept-alive connections, parsed by httptools
(the C parser uvicorn itself uses). Every token of a stream passes through here, and a
general-purpose client (httpx) spent about 150 µs of CPU per token, more than the model
service's whole HTTP worker; this hop spends about 45 µs (docs/gateway.md).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import ssl
import time
import typing as t
from urllib.parse import quote, unquote, urlparse

import httptools
from prometheus_client import generate_latest
from prometheus_client.core import CounterMetricFamily

logger = logging.getLogger("bentoml.service")

API_KEY_ENV = "VLLM_API_KEY"
LOADING_MESSAGE = "The models are still loading; retry when /readyz answers 200."
# Connection-level headers and the ones this hop sets itself are not passed on.
NOT_FORWARDED = frozenset({
    b"host", b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"te",
    b"trailer", b"upgrade", b"content-length", b"expect",
})
NOT_RETURNED = frozenset({b"connection", b"keep-alive", b"transfer-encoding", b"date", b"server"})
# A reply's bytes held here while the client is slower than the model service: above this,
# reading from the model service pauses until the client has taken them.
HIGH_WATER_BYTES = 1 << 20
# vLLM's routes that change a model service's models (with VLLM_ALLOW_RUNTIME_LORA_UPDATING=True there).
LORA_ROUTES = frozenset({"/v1/load_lora_adapter", "/v1/unload_lora_adapter"})


@dataclasses.dataclass(frozen=True)
class Timeouts:
    """The hop's timeouts: the gateway's `timeouts:` in catalog.yaml (scripts/catalog.py checks them)."""

    connect_s: float = 10.0  # to open a connection to a model service
    # An idle kept-alive connection older than this is closed rather than reused: uvicorn, which
    # serves the model services, closes idle connections after 5 s (BentoML's worker default).
    idle_reuse_s: float = 4.0
    # A request on a reused connection that closes unanswered within this is sent again (the
    # service's idle close crossed it); after it, the service may have started on it.
    retry_window_s: float = 1.0


class UpstreamError(ConnectionError):
    """The model service did not answer, or closed the connection before its reply was complete."""


class Connection(asyncio.Protocol):
    """One HTTP/1.1 connection to a model service; httptools parses its replies."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.idle_since = 0.0  # when it was last put back for reuse; 0 for a new connection
        self.sent_at = 0.0
        self.reset()

    def reset(self) -> None:
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.head_done = False
        self.keep_alive = False
        self.complete = False
        self.received = False  # any byte of the reply
        self.error: BaseException | None = None
        self.parts: list[bytes] = []
        self.buffered = 0
        self.waiter: asyncio.Future | None = None

    # asyncio.Protocol -------------------------------------------------------------------
    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.received = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self.fail(UpstreamError(f"the model service sent a reply that is not HTTP/1.1: {exc}"))
            return
        self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.complete and self.error is None:
            self.error = UpstreamError(f"the model service closed the connection ({exc or 'end of stream'})")
        self._wake()

    # httptools callbacks ----------------------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.keep_alive = self.parser.should_keep_alive()  # asked here, as uvicorn does: after the body it is reset
        self.head_done = True

    def on_body(self, body: bytes) -> None:
        self.parts.append(body)
        self.buffered += len(body)
        if self.buffered > HIGH_WATER_BYTES:
            self.transport.pause_reading()

    def on_message_complete(self) -> None:
        self.complete = True

    # the router's side ------------------------------------------------------------------
    def send_request(self, data: bytes) -> None:
        self.sent_at = time.monotonic()
        self.transport.write(data)

    def fail(self, error: BaseException) -> None:
        """End this connection: the reply is abandoned (a client that went away, a broken reply)."""
        if self.error is None:
            self.error = error
        self.closed = True
        self.transport.close()
        self._wake()

    async def head(self) -> None:
        while not self.head_done:
            await self._wait()

    async def read(self) -> tuple[bytes, bool]:
        """The reply's bytes that arrived since the last read (waiting for some), and whether it is complete."""
        while not self.parts and not self.complete:
            await self._wait()
        data = self.parts[0] if len(self.parts) == 1 else b"".join(self.parts)
        self.parts.clear()
        if self.buffered > HIGH_WATER_BYTES and not self.closed:
            self.transport.resume_reading()
        self.buffered = 0
        return data, self.complete

    async def _wait(self) -> None:
        if self.error is not None:
            raise self.error
        self.waiter = asyncio.get_running_loop().create_future()
        try:
            await self.waiter
        finally:
            self.waiter = None
        if self.error is not None and not self.parts and not self.complete:
            raise self.error

    def _wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)


class Upstream:
    """Kept-alive HTTP/1.1 connections to one model service: a unix socket under `bentoml serve`,
    http(s) when deployed."""

    def __init__(self, url: str, timeouts: Timeouts = Timeouts()) -> None:
        parsed = urlparse(url)
        self.url = url
        self.timeouts = timeouts
        self.uds = unquote(parsed.path) if parsed.scheme == "file" else None
        self.host = parsed.hostname or "localhost"
        self.port = parsed.port or (443 if parsed.scheme == "https" else 80)
        self.ssl = ssl.create_default_context() if parsed.scheme == "https" else None
        self.host_header = (parsed.netloc or "model-service").encode()
        self.idle: list[Connection] = []

    async def _connect(self) -> Connection:
        loop = asyncio.get_running_loop()
        if self.uds:
            opening = loop.create_unix_connection(Connection, self.uds)
        else:
            opening = loop.create_connection(Connection, self.host, self.port, ssl=self.ssl,
                                             server_hostname=self.host if self.ssl else None)
        try:
            _, connection = await asyncio.wait_for(opening, self.timeouts.connect_s)
        except (OSError, asyncio.TimeoutError) as exc:
            raise UpstreamError(f"cannot connect to {self.url}: {exc!r}") from exc
        return connection

    def _reusable(self) -> Connection | None:
        now = time.monotonic()
        while self.idle:
            connection = self.idle.pop()
            if not connection.closed and now - connection.idle_since < self.timeouts.idle_reuse_s:
                return connection
            connection.fail(UpstreamError("idle"))
        return None

    async def _send(self, method: str, target: str, headers: list[tuple[bytes, bytes]], body: bytes) -> Connection:
        lines = [f"{method} {target} HTTP/1.1".encode(), b"host: " + self.host_header, b"content-length: " + str(len(body)).encode()]
        lines += [name + b": " + value for name, value in headers]
        connection = self._reusable() or await self._connect()
        connection.send_request(b"\r\n".join(lines) + b"\r\n\r\n" + body)
        return connection

    async def request(self, method: str, target: str, headers: list[tuple[bytes, bytes]], body: bytes,
                      watch: t.Callable[[Connection], None]) -> Connection:
        """Send a request and wait for its reply's status and headers; read the body from the result.

        `watch` is given each connection the request goes out on, before the wait (the router
        closes it if its client goes away). A request on a kept-alive connection that the
        service closed at once, without a byte of answer (it closes idle ones), is sent again
        once on a new connection; a later close may be a service that died while working on it.
        """
        connection = await self._send(method, target, headers, body)
        watch(connection)
        try:
            await connection.head()
            return connection
        except UpstreamError:
            reused = connection.idle_since != 0.0
            if connection.received or not reused or time.monotonic() - connection.sent_at > self.timeouts.retry_window_s:
                raise
        connection = await self._send(method, target, headers, body)
        watch(connection)
        await connection.head()
        return connection

    def release(self, connection: Connection) -> None:
        """Keep a connection whose reply was read to the end; close any other."""
        if connection.complete and not connection.closed and connection.keep_alive:
            connection.reset()
            connection.idle_since = time.monotonic()
            self.idle.append(connection)
        elif not connection.closed:
            connection.fail(UpstreamError("not reusable"))

    async def get_json(self, path: str, headers: list[tuple[bytes, bytes]]) -> t.Any:
        connection = await self.request("GET", path, headers, b"", watch=lambda _: None)
        parts = []
        while True:
            data, done = await connection.read()
            parts.append(data)
            if done:
                break
        status = connection.status
        self.release(connection)
        if status != 200:
            raise LookupError(f"{path} answered {status}")
        return json.loads(b"".join(parts))

    def close(self) -> None:
        for connection in self.idle:
            connection.fail(UpstreamError("closed"))
        self.idle.clear()


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


class ClientGone(Exception):
    """The client went away before its reply was complete."""


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

    def __init__(self, default_model: str | None = None, timeout: float = 300, timeouts: Timeouts = Timeouts()) -> None:
        self.default_model = default_model
        self.timeout = timeout  # BentoML's traffic timeout bounds the wait for a reply's first byte
        self.timeouts = timeouts  # of the hop to each model service
        self.upstreams: list[Upstream] = []
        self.routes: dict[str, Upstream] = {}  # served model name -> its service
        self.model_list = b""
        self.counts = RequestCounts()
        self._discovery: asyncio.Task | None = None
        self._listing = asyncio.Lock()

    @property
    def ready(self) -> bool:
        return bool(self.routes)

    def connect(self, urls: list[str]) -> None:
        """Reach each model service and learn their model names once they are ready (in the background)."""
        self.upstreams = [Upstream(url, self.timeouts) for url in urls]
        self._discovery = asyncio.create_task(self._discover())

    async def close(self) -> None:
        if self._discovery is not None:
            self._discovery.cancel()
        for upstream in self.upstreams:
            upstream.close()

    async def _discover(self) -> None:
        while not await self.refresh():
            await asyncio.sleep(1)
        logger.info("gateway routes: %s", ", ".join(self.routes))

    async def refresh(self) -> bool:
        """Ask every model service for its models again (one listing at a time); False if one did not answer.

        So the routes follow LoRA adapters loaded or unloaded at run time (vLLM's
        /v1/load_lora_adapter and /v1/unload_lora_adapter), through this gateway or not."""
        async with self._listing:
            headers = [(b"authorization", f"Bearer {key}".encode())] if (key := os.environ.get(API_KEY_ENV)) else []
            try:
                listings = await asyncio.gather(*(u.get_json("/v1/models", headers) for u in self.upstreams))
            except (UpstreamError, LookupError, ValueError):
                return False
            data = [model for listing in listings for model in listing["data"]]
            self.model_list = json.dumps({"object": "list", "data": data}).encode()
            self.routes = {model["id"]: u for u, listing in zip(self.upstreams, listings) for model in listing["data"]}
            return True

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
            request = json.loads(body)
            model = request.get("model") or self.default_model
        except (ValueError, AttributeError):
            await send_json(send, 400, openai_error(400, "The gateway routes JSON object bodies by `model`.", "BadRequestError"))
            return
        lora_change = scope["path"] in LORA_ROUTES
        if lora_change and not request.get("model"):  # vLLM's LoRA requests name no model: the adapter's, if known
            adapter = request.get("lora_name")
            model = adapter if isinstance(adapter, str) and adapter in self.routes else self.default_model
        if not isinstance(model, str):
            message = "`model` is required: this gateway serves " + ", ".join(self.routes) + "."
            if lora_change:
                message += " To load a LoRA adapter, name in `model` the base model it goes beside."
            await send_json(send, 400, openai_error(400, message, "BadRequestError", "model"))
            return
        if model not in self.routes:
            await self.refresh()  # a LoRA adapter loaded since the last listing
        upstream = self.routes.get(model)
        if upstream is None:
            message = f"The model `{model}` does not exist. Valid aliases: {', '.join(self.routes)}."
            await send_json(send, 404, openai_error(404, message, "NotFoundError", "model"))
            return
        await self._forward(upstream, scope, receive, send, body, model, lora_change)

    async def _forward(self, upstream: Upstream, scope, receive, send, body: bytes, model: str, lora_change: bool) -> None:
        """Send the request to the model service and pass its reply on as it arrives.

        After a LoRA load or unload it passed on, or a 404 (say, an adapter unloaded at the service),
        it lists the models again before the reply ends: a client that lists them next sees the change."""
        method = scope["method"]
        target = quote(scope["path"]) + ("?" + scope["query_string"].decode("latin-1") if scope["query_string"] else "")
        headers = [(k, v) for k, v in scope["headers"] if k not in NOT_FORWARDED]
        # A client that goes away closes the connection to the model service: vLLM aborts the request.
        gone = asyncio.ensure_future(until_disconnect(receive))
        used: list[Connection] = []

        def watch(connection: Connection) -> None:
            used.append(connection)
            gone.add_done_callback(lambda task: task.cancelled() or connection.complete or connection.fail(ClientGone()))

        try:
            try:
                connection = await upstream.request(method, target, headers, body, watch)
            except UpstreamError as exc:
                self.counts.add(model, 502)
                await send_json(send, 502, openai_error(502, f"The service of `{model}` did not answer: {exc}", "BadGatewayError"))
                return
            self.counts.add(model, connection.status)
            returned = [(k, v) for k, v in connection.headers if k not in NOT_RETURNED]
            await send({"type": "http.response.start", "status": connection.status, "headers": returned})
            while True:
                try:
                    data, done = await connection.read()
                except UpstreamError as exc:
                    await self._broke_off(model, connection, send, exc)
                    return
                if done:
                    if (lora_change and connection.status == 200) or connection.status == 404:
                        await self.refresh()
                    await send({"type": "http.response.body", "body": data})
                    return
                await send({"type": "http.response.body", "body": data, "more_body": True})
        except ClientGone:
            return
        finally:
            gone.cancel()
            for connection in used:
                upstream.release(connection)

    async def _broke_off(self, model: str, connection: Connection, send, exc: UpstreamError) -> None:
        """The model service's reply ended before it was whole (the service died): a stream gets the
        error event vLLM itself sends when its engine dies, `data: {"error": {...}}`, and ends; any
        other reply can only end unfinished, so the client sees the connection close."""
        logger.warning("the reply of `%s` broke off: %s", model, exc)
        if not any(k == b"content-type" and v.startswith(b"text/event-stream") for k, v in connection.headers):
            raise exc
        message = f"The service of `{model}` stopped in the middle of this reply: {exc}"
        event = b"data: " + openai_error(502, message, "BadGatewayError") + b"\n\n"
        await send({"type": "http.response.body", "body": event})
