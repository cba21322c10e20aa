"""The gateway's router (templates/gateway/gateway.py: Router) as an ASGI app, in front of a
scripted model service on a unix socket that keeps a list of models as vLLM does: LoRA
adapters loaded and unloaded at run time become routable and are forgotten, and a stream
that the service cuts off ends with vLLM's error event instead of a bare close."""

from __future__ import annotations

import asyncio
import json

import gateway  # templates/gateway/gateway.py, on the path by pytest.ini


class ScriptedService:
    """GET /v1/models lists `models`; POST /v1/load_lora_adapter and /v1/unload_lora_adapter
    change it, as vLLM does with VLLM_ALLOW_RUNTIME_LORA_UPDATING; POST /v1/completions
    answers for a listed model (404 for another), or, with "cut": true, streams one event and
    closes the connection, as a service that dies mid-stream."""

    def __init__(self, models: list[str]) -> None:
        self.models = list(models)
        self.requests: list[tuple[str, dict]] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                method, path = head.split(b" ")[:2]
                length = int(next((line.split(b":")[1] for line in head.split(b"\r\n")
                                   if line.lower().startswith(b"content-length")), b"0"))
                body = json.loads(await reader.readexactly(length) or b"{}")
                self.requests.append((f"{method.decode()} {path.decode()}", body))
                if not await self.answer(method.decode(), path.decode(), body, writer):
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    async def answer(self, method: str, path: str, body: dict, writer) -> bool:
        if method == "GET" and path == "/v1/models":
            return reply(writer, 200, {"object": "list", "data": [{"id": m, "object": "model"} for m in self.models]})
        if path == "/v1/load_lora_adapter":
            self.models.append(body["lora_name"])
            return reply(writer, 200, f"Success: LoRA adapter '{body['lora_name']}' added successfully.")
        if path == "/v1/unload_lora_adapter":
            self.models.remove(body["lora_name"])
            return reply(writer, 200, f"Success: LoRA adapter '{body['lora_name']}' removed successfully.")
        if body.get("model") not in self.models:
            return reply(writer, 404, {"error": {"message": f"The model `{body.get('model')}` does not exist.",
                                                 "type": "NotFoundError", "param": "model", "code": 404}})
        if body.get("cut"):
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
            event = b'data: {"choices": [{"text": "Hi"}]}\n\n'
            writer.write(b"%x\r\n%s\r\n" % (len(event), event))
            await writer.drain()
            return False  # the connection closes with the stream unfinished
        return reply(writer, 200, {"object": "text_completion", "model": body["model"], "choices": [{"text": "ok"}]})


def reply(writer, status: int, body) -> bool:
    data = json.dumps(body).encode()
    writer.write(b"HTTP/1.1 %d X\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (status, len(data), data))
    return True


async def call(router: gateway.Router, path: str, body: dict | None = None) -> tuple[int, bytes]:
    """One request through the router's ASGI interface: its status and whole body."""
    data = json.dumps(body).encode() if body is not None else b""
    scope = {"type": "http", "method": "POST" if body is not None else "GET", "path": path, "query_string": b"",
             "headers": [(b"content-type", b"application/json")]}
    sent = asyncio.Event()
    messages: list[dict] = []

    async def receive() -> dict:
        if not sent.is_set():
            sent.set()
            return {"type": "http.request", "body": data, "more_body": False}
        await asyncio.Event().wait()  # the client stays

    async def send(message: dict) -> None:
        messages.append(message)

    await router(scope, receive, send)
    status = next(m["status"] for m in messages if m["type"] == "http.response.start")
    return status, b"".join(m.get("body", b"") for m in messages if m["type"] == "http.response.body")


def with_router(tmp_path, service: ScriptedService, scenario, default_model: str | None = None) -> None:
    async def main() -> None:
        path = str(tmp_path / "service.sock")
        server = await asyncio.start_unix_server(service.handle, path)
        router = gateway.Router(default_model=default_model)
        router.connect([f"file://{path}"])
        try:
            for _ in range(200):
                if router.ready:
                    break
                await asyncio.sleep(0.05)
            await asyncio.wait_for(scenario(router), 30)
        finally:
            await router.close()
            server.close()

    asyncio.run(main())


def model_ids(body: bytes) -> list[str]:
    return [m["id"] for m in json.loads(body)["data"]]


def test_lora_adapter_loaded_through_the_gateway_is_routable_and_forgotten_once_unloaded(tmp_path):
    service = ScriptedService(["base"])

    async def scenario(router):
        assert (await call(router, "/v1/load_lora_adapter", {"model": "base", "lora_name": "sql", "lora_path": "/a"}))[0] == 200
        assert model_ids((await call(router, "/v1/models"))[1]) == ["base", "sql"]
        status, body = await call(router, "/v1/completions", {"model": "sql", "prompt": "x"})
        assert (status, json.loads(body)["model"]) == (200, "sql")
        # vLLM's own unload request names no model: the gateway sends it to the adapter's service.
        assert (await call(router, "/v1/unload_lora_adapter", {"lora_name": "sql"}))[0] == 200
        assert model_ids((await call(router, "/v1/models"))[1]) == ["base"]
        status, body = await call(router, "/v1/completions", {"model": "sql", "prompt": "x"})
        assert status == 404 and "Valid aliases: base." in json.loads(body)["error"]["message"]

    with_router(tmp_path, service, scenario)
    assert ("POST /v1/unload_lora_adapter", {"lora_name": "sql"}) in service.requests


def test_adapter_loaded_at_the_service_directly_is_learned_before_the_gateway_answers_404(tmp_path):
    service = ScriptedService(["base"])

    async def scenario(router):
        service.models.append("loaded-elsewhere")
        status, body = await call(router, "/v1/completions", {"model": "loaded-elsewhere", "prompt": "x"})
        assert (status, json.loads(body)["model"]) == (200, "loaded-elsewhere")
        service.models.remove("loaded-elsewhere")  # unloaded at the service: its 404 makes the gateway forget it
        assert (await call(router, "/v1/completions", {"model": "loaded-elsewhere", "prompt": "x"}))[0] == 404
        assert "loaded-elsewhere" not in router.routes

    with_router(tmp_path, service, scenario)


def test_lora_load_without_a_model_to_go_beside_is_a_400_that_says_what_to_send(tmp_path):
    async def scenario(router):
        for name in ("sql", ["not", "a", "name"]):
            status, body = await call(router, "/v1/load_lora_adapter", {"lora_name": name, "lora_path": "/a"})
            error = json.loads(body)["error"]
            assert (status, error["param"]) == (400, "model")
            assert "name in `model` the base model it goes beside" in error["message"]

    with_router(tmp_path, ScriptedService(["base", "other"]), scenario)


def test_stream_the_service_cut_off_ends_with_an_openai_error_event(tmp_path):
    async def scenario(router):
        status, body = await call(router, "/v1/completions", {"model": "base", "prompt": "x", "stream": True, "cut": True})
        assert status == 200
        events = [line.removeprefix("data: ") for line in body.decode().split("\n\n") if line]
        assert json.loads(events[0]) == {"choices": [{"text": "Hi"}]}
        error = json.loads(events[-1])["error"]
        assert (error["type"], error["code"]) == ("BadGatewayError", 502)
        assert "The service of `base` stopped in the middle of this reply" in error["message"]

    with_router(tmp_path, ScriptedService(["base"]), scenario)
