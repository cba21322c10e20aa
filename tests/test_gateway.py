"""The tiny gateway served for real: tiny-dev, tiny-think (with the LoRA adapter tiny-lora) and
tiny-embed behind one endpoint, with $VLLM_API_KEY set, driven with the official openai client.

One server for the whole module (it starts three engines). The model services are also
reached directly, on the unix sockets `bentoml serve` gave them, to compare with vLLM's
own answers and to read each engine's metrics.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
from pathlib import Path

import httpx
import openai
import psutil
import pytest
from chat_page import last, new_chat, send
from conftest import ROOT, SMALL_KV_CACHE_ENV, serve_folder
from paused_engine import RawRequest, engine_core, hang_up_mid_request, sse_events, stream_stopped_mid_way

pytestmark = pytest.mark.serves  # every test here serves a model: not in `make test-quick`

KEY = "sk-gateway-" + os.urandom(6).hex()
AUTH = {"Authorization": f"Bearer {KEY}"}
CHAT = [{"role": "user", "content": "Tell me a story about a robot."}]
CHAT_MODELS = ["tiny-dev", "tiny-think", "tiny-lora"]
ALL_MODELS = [*CHAT_MODELS, "tiny-embed"]
HIDDEN_SIZE = 256  # scripts/tiny/llama.py


@pytest.fixture(scope="module")
def gateway(bentoml_home):
    # VLLM_ALLOW_RUNTIME_LORA_UPDATING: vLLM's /v1/load_lora_adapter and /v1/unload_lora_adapter, as a
    # user who loads adapters at run time sets it in the model services' environment.
    env = {"BENTOML_HOME": bentoml_home, "VLLM_API_KEY": KEY, "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True", **SMALL_KV_CACHE_ENV}
    with serve_folder(ROOT / "models" / "tiny-gateway", "tiny-gateway", env=env, timeout=900) as server:
        yield server
    assert KEY not in server.log_path.read_text(errors="replace"), "the key must never be logged"


@pytest.fixture(scope="module")
def client(gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=KEY, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def services(gateway) -> dict[str, httpx.Client]:
    """A client straight to each model service, on the socket BentoML gave it (BENTOML_RUNNER_MAP)."""
    workers = psutil.Process(gateway.process.pid).children()
    runner_map = json.loads(next(w.environ()["BENTOML_RUNNER_MAP"] for w in workers if "BENTOML_RUNNER_MAP" in w.environ()))
    clients = {
        name: httpx.Client(transport=httpx.HTTPTransport(uds=url.removeprefix("file://")), base_url="http://model", headers=AUTH, timeout=60)
        for name, url in runner_map.items() if url.startswith("file://")
    }
    yield clients
    for c in clients.values():
        c.close()


def greedy(client: openai.OpenAI, model: str) -> openai.types.Completion:
    return client.completions.create(model=model, prompt="Once upon a time", max_tokens=16, temperature=0, logprobs=1,
                                     extra_body={"ignore_eos": True})


def test_models_lists_every_model_of_every_service(client):
    assert [m.id for m in client.models.list().data] == ALL_MODELS


def test_each_reply_comes_from_the_named_model(client):
    replies = {model: greedy(client, model) for model in CHAT_MODELS}
    assert {model: r.model for model, r in replies.items()} == {m: m for m in CHAT_MODELS}
    # tiny-dev and tiny-think share their weights; the adapter changes the tokens.
    assert replies["tiny-dev"].choices[0].text == replies["tiny-think"].choices[0].text
    assert replies["tiny-lora"].choices[0].logprobs.tokens != replies["tiny-think"].choices[0].logprobs.tokens
    # Only tiny-think's service has a reasoning parser: its reply is reasoning, tiny-dev's is content.
    think = client.chat.completions.create(model="tiny-think", messages=CHAT, max_tokens=8, temperature=0).choices[0].message
    dev = client.chat.completions.create(model="tiny-dev", messages=CHAT, max_tokens=8, temperature=0).choices[0].message
    assert think.model_dump().get("reasoning") and not dev.model_dump().get("reasoning") and dev.content


def test_reply_through_the_gateway_equals_the_services_own(client, services):
    body = {"model": "tiny-lora", "prompt": "Once upon a time", "max_tokens": 16, "temperature": 0, "ignore_eos": True}
    direct = services["tiny-think"].post("/v1/completions", json=body).json()
    assert greedy(client, "tiny-lora").choices[0].text == direct["choices"][0]["text"]


def test_stream_arrives_chunk_by_chunk(gateway, services):
    """Not buffered: with tiny-dev's engine stopped (SIGSTOP) before the request and then throttled
    (tests/paused_engine.py), the first text reaches the client while most of the
    900-token reply is still to be written. A gateway that held the reply back would send nothing
    until the engine had written all of it, and the helper's check that the reply is mid-way fails."""
    body = {"model": "tiny-dev", "messages": CHAT, "max_tokens": 900, "stream": True, "ignore_eos": True}
    engine = engine_core(gateway, "tiny-dev")
    with httpx.Client(base_url=gateway.url, headers=AUTH, timeout=60) as http:
        try:
            stream = stream_stopped_mid_way(engine, lambda: sse_events(
                http.send(http.build_request("POST", "/v1/chat/completions", json=body), stream=True)))
        finally:
            engine.resume()
        assert stream.done.wait(120) and stream.finishes() == ["length"], (stream.finishes(), stream.error)


def test_embeddings_go_to_the_embedding_model(client):
    result = client.embeddings.create(model="tiny-embed", input=["Robots like tea.", "The capital of France is Paris."])
    assert result.model == "tiny-embed"
    assert [len(d.embedding) for d in result.data] == [HIDDEN_SIZE, HIDDEN_SIZE]


def test_unknown_model_is_vllms_own_404(gateway, services):
    body = {"model": "tiny-xl", "messages": CHAT}
    ours = httpx.post(f"{gateway.url}/v1/chat/completions", json=body, headers=AUTH)
    vllms = services["tiny-dev"].post("/v1/chat/completions", json=body)
    assert ours.status_code == vllms.status_code == 404
    ours_error, vllm_error = ours.json()["error"], vllms.json()["error"]
    assert {k: v for k, v in ours_error.items() if k != "message"} == {k: v for k, v in vllm_error.items() if k != "message"}
    assert ours_error["message"].split(" Valid aliases:")[0] == vllm_error["message"].split(" Valid aliases:")[0]
    assert ours_error["message"].endswith("Valid aliases: tiny-dev, tiny-think, tiny-lora, tiny-embed.")
    with pytest.raises(openai.NotFoundError):
        openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=KEY, max_retries=0).chat.completions.create(model="tiny-xl", messages=CHAT)


@pytest.mark.parametrize("body", [{"messages": CHAT}, {"model": None, "messages": CHAT}])
def test_request_without_model_is_a_400(gateway, body):
    response = httpx.post(f"{gateway.url}/v1/chat/completions", json=body, headers=AUTH)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "model" and "`model` is required" in response.json()["error"]["message"]


def test_bad_json_is_a_400_and_the_gateway_keeps_serving(gateway, client):
    response = httpx.post(f"{gateway.url}/v1/chat/completions", content=b"{not json", headers={**AUTH, "content-type": "application/json"})
    assert response.status_code == 400 and response.json()["error"]["type"] == "BadRequestError"
    assert greedy(client, "tiny-dev").choices[0].text


def test_vllm_routes_beyond_chat(gateway):
    tokens = httpx.post(f"{gateway.url}/tokenize", json={"model": "tiny-lora", "prompt": "Hello robots"}, headers=AUTH)
    assert tokens.status_code == 200 and tokens.json()["tokens"]
    reply = httpx.post(f"{gateway.url}/v1/responses", json={"model": "tiny-dev", "input": "Hello", "max_output_tokens": 4},
                       headers=AUTH, timeout=60)
    assert reply.status_code == 200 and reply.json()["model"] == "tiny-dev"


@pytest.mark.parametrize("stream", [True, False], ids=["streaming", "not-streaming"])
def test_client_disconnect_frees_the_engine(gateway, services, stream):
    """A client that hangs up while its request runs in the model's engine ends the request there:
    the engine counts it as no finished request (vLLM counts an abort as none) and writes far
    fewer than its 1000 tokens. The engine is throttled around the hang-up (tests/paused_engine.py),
    so the reply takes ten times its engine time and the client hangs up long before it could end."""
    body = {"model": "tiny-dev", "messages": CHAT, "max_tokens": 1000, "stream": stream, "ignore_eos": True}
    seen = hang_up_mid_request(engine_core(gateway, "tiny-dev"), lambda: RawRequest(gateway.port, "/v1/chat/completions", body, AUTH),
                               lambda: services["tiny-dev"].get("/metrics").text)
    if stream:
        assert seen["received"].startswith(b"HTTP/1.1 200"), seen["received"][:200]  # the stream had begun
    assert seen["finished"] == 0 and seen["generated"] < 1000, seen


def test_32_concurrent_mixed_requests(gateway):
    client = openai.AsyncOpenAI(base_url=f"{gateway.url}/v1", api_key=KEY, max_retries=0, timeout=300)

    async def one(i: int) -> tuple[str, str]:
        model = ALL_MODELS[i % len(ALL_MODELS)]
        if model == "tiny-embed":
            return model, (await client.embeddings.create(model=model, input=[f"text {i}"])).model
        if i % 3 == 0:
            stream = await client.chat.completions.create(model=model, messages=CHAT, max_tokens=16, stream=True)
            return model, [chunk.model async for chunk in stream][-1]
        return model, (await client.completions.create(model=model, prompt=f"Story {i}:", max_tokens=16)).model

    async def all_of_them():
        try:
            return await asyncio.gather(*(one(i) for i in range(32)))
        finally:
            await client.close()

    results = asyncio.run(all_of_them())
    assert len(results) == 32 and all(asked == answered for asked, answered in results), results


def test_metrics_count_requests_per_model(gateway, client):
    def count(model: str) -> float:
        text = httpx.get(f"{gateway.url}/metrics").text
        found = re.search(rf'^llm_gateway_requests_total\{{model="{model}",status="200"\}} (\S+)$', text, re.M)
        return float(found.group(1)) if found else 0.0

    before = {model: count(model) for model in ("tiny-lora", "tiny-embed")}
    greedy(client, "tiny-lora")
    greedy(client, "tiny-lora")
    client.embeddings.create(model="tiny-embed", input=["one"])
    assert count("tiny-lora") - before["tiny-lora"] == 2
    assert count("tiny-embed") - before["tiny-embed"] == 1


def test_lora_adapters_loaded_at_run_time_are_routed_and_unloaded_ones_forgotten(gateway, client, services, bentoml_home):
    """vLLM's own LoRA routes, served for real: tiny-lora's files loaded again under two new names,
    one through the gateway (`model` names the base model it goes beside), one at tiny-think's
    service itself, which the gateway has not seen. Each is routed on its first request and answers
    as tiny-lora does; each is forgotten once unloaded, through the gateway or at the service."""
    files = str(Path(bentoml_home) / "models" / "llm-bentos-tiny-lora" / "v1")
    expected = greedy(client, "tiny-lora").choices[0].logprobs.tokens
    loaded = httpx.post(f"{gateway.url}/v1/load_lora_adapter", headers=AUTH,
                        json={"model": "tiny-think", "lora_name": "live-gateway", "lora_path": files})
    assert loaded.status_code == 200, loaded.text
    loaded = services["tiny-think"].post("/v1/load_lora_adapter", json={"lora_name": "live-service", "lora_path": files})
    assert loaded.status_code == 200, loaded.text
    for name in ("live-gateway", "live-service"):
        reply = greedy(client, name)
        assert reply.model == name and reply.choices[0].logprobs.tokens == expected
    assert {"live-gateway", "live-service"} <= {m.id for m in client.models.list()}

    unloaded = httpx.post(f"{gateway.url}/v1/unload_lora_adapter", json={"lora_name": "live-gateway"}, headers=AUTH)
    assert unloaded.status_code == 200, unloaded.text
    assert services["tiny-think"].post("/v1/unload_lora_adapter", json={"lora_name": "live-service"}).status_code == 200
    for name in ("live-gateway", "live-service"):
        with pytest.raises(openai.NotFoundError):
            greedy(client, name)
    listed = {m.id for m in client.models.list()}
    assert listed == set(ALL_MODELS), listed
    assert greedy(client, "tiny-lora").choices[0].logprobs.tokens == expected


@pytest.mark.parametrize("path,method", [("/v1/models", "GET"), ("/v1/chat/completions", "POST"), ("/v1/embeddings", "POST")])
def test_missing_or_wrong_key_is_a_401(gateway, path, method):
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        response = httpx.request(method, gateway.url + path, json={"model": "tiny-dev", "messages": CHAT}, headers=headers)
        assert response.status_code == 401 and response.json()["error"]["type"] == "AuthenticationError"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="wrong", max_retries=0).models.list()


def test_health_metrics_and_chat_page_stay_open(gateway):
    for path in ("/livez", "/readyz", "/metrics", "/chat"):
        assert httpx.get(gateway.url + path).status_code == 200, path
    page = httpx.get(gateway.url + "/chat").text
    assert '<select id="model"' in page  # the model picker, filled from /v1/models


def page_reply(page) -> dict:
    """The reply on a page of one exchange: its folded reasoning (if any) and its answer."""
    reasoning = page.eval_on_selector_all(".assistant .reasoning .thought", "els => els.map(e => e.textContent).join('')")
    return {"reasoning": reasoning or None, "content": last(page, ".assistant .answer") or None}


def streamed_reply(client: openai.OpenAI, model: str, messages: list[dict], max_tokens: int) -> dict:
    """The reasoning and answer of a greedy streamed chat reply, put together as the page does."""
    text = {"reasoning": "", "content": ""}
    for chunk in client.chat.completions.create(model=model, messages=messages, max_tokens=max_tokens, temperature=0,
                                                stream=True, extra_body={"ignore_eos": True}):
        delta = chunk.choices[0].delta.model_dump() if chunk.choices else {}
        for key in text:
            text[key] += delta.get(key) or ""
    return {key: value or None for key, value in text.items()}


def test_chat_page_model_picker_sends_to_the_picked_model(gateway, client, browser):
    """The page lists every model of the gateway; after a pick, its chat goes to that model and shows
    that model's reply (tiny-lora reasons and its adapter changes the tokens; tiny-dev only answers).

    Six tokens of tiny-lora: its greedy reply holds a stray <think> as its 8th token, and vLLM's streaming
    reasoning parser splits the text around a <think> inside the reasoning by how the tokens were
    grouped into chunks, which timing decides; before it, the parts do not depend on the chunks.
    tiny-dev (no reasoning parser) gets 12, as its first six tokens print nothing."""
    shown = {}
    for model, max_tokens in (("tiny-lora", 6), ("tiny-dev", 12)):
        page, sent = new_chat(browser, gateway.url, ALL_MODELS[0], KEY, temperature=0, ignore_eos=True)
        assert page.eval_on_selector_all("#model option", "els => els.map(e => e.value)") == ALL_MODELS
        page.select_option("#model", model)
        send(page, "Tell me a story about a robot.", max_tokens=max_tokens)
        assert page.inner_text("#error") == ""
        assert [body["model"] for body in sent] == [model]
        shown[model] = page_reply(page)
        assert shown[model] == streamed_reply(client, model, sent[0]["messages"], max_tokens=max_tokens)
        page.close()
    assert shown["tiny-lora"]["reasoning"] and not shown["tiny-dev"]["reasoning"] and shown["tiny-dev"]["content"]


def test_engine_death_under_a_stream_is_an_error_event_and_readyz_needs_every_model_service(gateway, client):
    """Last in the module: it kills tiny-dev's engine under a stream read with the openai client."""
    assert gateway.statuses_seen[-1] == 200 and 503 in gateway.statuses_seen
    assert httpx.get(gateway.url + "/readyz").status_code == 200
    engine = engine_core(gateway, "tiny-dev")
    stream = stream_stopped_mid_way(engine, lambda: (chunk.model_dump() for chunk in client.chat.completions.create(
        model="tiny-dev", messages=CHAT, max_tokens=1000, stream=True, extra_body={"ignore_eos": True})))
    engine.kill()
    assert stream.done.wait(60), "the stream ended after the kill"
    assert not stream.finishes(), "the reply ended before the kill"
    assert isinstance(stream.error, openai.APIError), repr(stream.error)
    assert "EngineCore" in str(stream.error) or "stopped in the middle" in str(stream.error), stream.error
    ready = []
    deadline = time.monotonic() + 30
    while 503 not in ready and time.monotonic() < deadline:
        try:
            ready.append(httpx.get(gateway.url + "/readyz", timeout=2).status_code)
        except httpx.TransportError:
            break  # the server has ended (the engine's death ends `bentoml serve`)
        time.sleep(0.1)
    assert 503 in ready, ready
