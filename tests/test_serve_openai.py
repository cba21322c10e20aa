"""The OpenAI API of the served tiny-dev Bento, through the official openai client."""

from __future__ import annotations

import json
import re
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import jsonschema
import pytest
from conftest import ROOT
from paused_engine import RawRequest, engine_core, hang_up_mid_request
from openai import OpenAI

pytestmark = pytest.mark.serves  # every test here serves a model: not in `make test-quick`

CHAT = [{"role": "user", "content": "Tell me a story about a robot."}]
GREEDY = {"temperature": 0.0, "seed": 0}


def test_readiness_went_from_503_to_200(tiny_server):
    assert tiny_server.statuses_seen[-1] == 200
    assert 503 in tiny_server.statuses_seen, "the engine loads in the background while /readyz says 503"
    assert httpx.get(f"{tiny_server.url}/livez").status_code == 200


def test_models_lists_the_served_name(client):
    assert [m.id for m in client.models.list().data] == ["tiny-dev"]


def test_chat_completion(client):
    reply = client.chat.completions.create(model="tiny-dev", messages=CHAT, max_tokens=12)
    assert reply.object == "chat.completion"
    assert reply.choices[0].message.role == "assistant"
    assert reply.usage.completion_tokens <= 12 and reply.usage.prompt_tokens > 0


def test_chat_streaming_with_usage(client):
    chunks = list(
        client.chat.completions.create(
            model="tiny-dev", messages=CHAT, max_tokens=16, stream=True,
            stream_options={"include_usage": True}, extra_body={"ignore_eos": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len(chunks) > 3 and text
    assert chunks[-1].usage.completion_tokens == 16


def test_completions(client):
    reply = client.completions.create(model="tiny-dev", prompt="Once upon a time", max_tokens=10, extra_body={"ignore_eos": True})
    assert reply.object == "text_completion" and reply.choices[0].text
    assert reply.usage.completion_tokens == 10


def test_n_choices(client):
    reply = client.chat.completions.create(model="tiny-dev", messages=CHAT, max_tokens=8, n=3)
    assert sorted(c.index for c in reply.choices) == [0, 1, 2]


def test_greedy_output_repeats(client):
    first, second = (
        client.chat.completions.create(model="tiny-dev", messages=CHAT, max_tokens=24, **GREEDY).choices[0].message.content
        for _ in range(2)
    )
    assert first == second and first


@pytest.mark.parametrize("max_tokens", [1, 7, 33])
def test_max_tokens_is_exact_with_ignore_eos(client, max_tokens):
    reply = client.chat.completions.create(
        model="tiny-dev", messages=CHAT, max_tokens=max_tokens, extra_body={"ignore_eos": True}
    )
    assert reply.usage.completion_tokens == max_tokens
    assert reply.choices[0].finish_reason == "length"


def test_stop_string_ends_the_output(client):
    free = client.completions.create(model="tiny-dev", prompt="The", max_tokens=40, extra_body={"ignore_eos": True}, **GREEDY)
    text = free.choices[0].text
    stop = text[len(text) // 2 : len(text) // 2 + 2]
    assert stop.strip(), f"need a visible stop string in {text!r}"
    cut = client.completions.create(model="tiny-dev", prompt="The", max_tokens=40, stop=[stop], extra_body={"ignore_eos": True}, **GREEDY)
    assert cut.choices[0].finish_reason == "stop"
    assert stop not in cut.choices[0].text and text.startswith(cut.choices[0].text)


def test_logprobs(client):
    reply = client.chat.completions.create(model="tiny-dev", messages=CHAT, max_tokens=5, logprobs=True, top_logprobs=3, extra_body={"ignore_eos": True})
    content = reply.choices[0].logprobs.content
    assert len(content) == 5
    assert all(len(t.top_logprobs) == 3 and t.logprob <= 0 for t in content)


def test_sampling_parameters_are_accepted(client):
    reply = client.chat.completions.create(
        model="tiny-dev", messages=CHAT, max_tokens=8, temperature=1.3, top_p=0.8,
        frequency_penalty=0.5, presence_penalty=0.5, seed=7, extra_body={"top_k": 20, "ignore_eos": True},
    )
    assert reply.usage.completion_tokens == 8


def test_bentoml_generate_streams(tiny_server):
    pieces = []
    with httpx.stream("POST", f"{tiny_server.url}/generate", json={"prompt": "Hello", "max_tokens": 16}, timeout=60) as response:
        assert response.status_code == 200
        pieces = [piece for piece in response.iter_text() if piece]
    assert len(pieces) > 1 and "".join(pieces)


def test_bentoml_generate_rejects_bad_input(tiny_server):
    response = httpx.post(f"{tiny_server.url}/generate", json={"prompt": "Hello", "max_tokens": -1}, timeout=60)
    assert 400 <= response.status_code < 500


BAD_REQUESTS = {
    "negative max_tokens": (400, {"model": "tiny-dev", "messages": CHAT, "max_tokens": -3}),
    "zero max_tokens": (400, {"model": "tiny-dev", "messages": CHAT, "max_tokens": 0}),
    "negative temperature": (400, {"model": "tiny-dev", "messages": CHAT, "temperature": -1}),
    "unknown model": (404, {"model": "gpt-17", "messages": CHAT}),
    "prompt over max_model_len": (400, {"model": "tiny-dev", "messages": [{"role": "user", "content": "robot " * 3000}]}),
    "messages as a string": (400, {"model": "tiny-dev", "messages": "hello"}),
    "empty messages": (400, {"model": "tiny-dev", "messages": []}),
    "missing messages": (400, {"model": "tiny-dev"}),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_input_gets_an_openai_error(tiny_server, case):
    status, body = BAD_REQUESTS[case]
    response = httpx.post(f"{tiny_server.url}/v1/chat/completions", json=body, timeout=60)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["message"] and error["type"]


def test_malformed_json_gets_an_openai_error(tiny_server):
    response = httpx.post(
        f"{tiny_server.url}/v1/chat/completions", content=b'{"model": "tiny-dev", "messages": [', headers={"content-type": "application/json"}, timeout=60
    )
    assert response.status_code == 400, response.text
    assert response.json()["error"]["message"]


def test_server_still_serves_after_bad_input(client, tiny_server):
    for status, body in BAD_REQUESTS.values():
        httpx.post(f"{tiny_server.url}/v1/chat/completions", json=body, timeout=60)
    assert client.chat.completions.create(model="tiny-dev", messages=CHAT, max_tokens=4).choices


def test_client_disconnect_aborts_the_request_in_the_engine(tiny_server):
    """A long stream dropped once the engine runs it ends in vLLM's engine without finishing: the
    engine counts no finished request (vLLM counts a request it aborts as none) and far fewer
    tokens than were asked for. The engine is throttled around the hang-up (tests/paused_engine.py),
    so the reply takes ten times its engine time and the client hangs up long before it could end."""
    body = {"model": "tiny-dev", "messages": CHAT, "max_tokens": 1000, "stream": True, "ignore_eos": True}
    seen = hang_up_mid_request(engine_core(tiny_server), lambda: RawRequest(tiny_server.port, "/v1/chat/completions", body),
                               lambda: httpx.get(f"{tiny_server.url}/metrics", timeout=10).text)
    assert seen["received"].startswith(b"HTTP/1.1 200"), seen["received"][:200]
    assert seen["finished"] == 0 and seen["generated"] < 1000, seen


def test_32_concurrent_chats(tiny_server):
    client = OpenAI(base_url=f"{tiny_server.url}/v1", api_key="unused", max_retries=0, timeout=120)

    def chat(i: int) -> int:
        reply = client.chat.completions.create(
            model="tiny-dev", messages=[{"role": "user", "content": f"Request {i}"}], max_tokens=16, extra_body={"ignore_eos": True}
        )
        return reply.usage.completion_tokens

    with ThreadPoolExecutor(32) as pool:
        assert list(pool.map(chat, range(32))) == [16] * 32


def test_metrics_has_bentoml_and_vllm_series(tiny_server):
    body = {"model": "tiny-dev", "messages": CHAT, "max_tokens": 2}
    assert httpx.post(f"{tiny_server.url}/v1/chat/completions", json=body, timeout=60).status_code == 200
    metrics = httpx.get(f"{tiny_server.url}/metrics", timeout=10).text
    assert "vllm:generation_tokens" in metrics and "vllm:time_to_first_token_seconds" in metrics
    # BentoML counts and times vLLM's routes; vLLM's duplicate http_* series are left out.
    assert re.search(r'^bentoml_service_request_total\{endpoint="/v1/chat/completions",http_response_code="200"', metrics, re.M)
    assert re.search(r'^bentoml_service_request_duration_seconds_count\{endpoint="/v1/chat/completions"', metrics, re.M)
    assert not re.search(r"^http_requests_total", metrics, re.M)
    families = re.findall(r"^# TYPE (\S+) ", metrics, re.M)
    assert len(families) == len(set(families)), "every metric family is exported once"


def test_a_streamed_reply_is_whole_and_bentoml_counts_times_and_logs_it(tiny_server, client):
    """A stream's middle chunks go past BentoML's middlewares (templates/patches.py,
    send_streamed_chunks_past_middlewares): the reply still comes whole, chunk by chunk, and
    BentoML's request metrics and access log still see the request once, with its status."""
    def counted() -> tuple[float, float]:
        metrics = httpx.get(f"{tiny_server.url}/metrics", timeout=10).text
        return tuple(sum(float(v) for v in re.findall(rf'^{name}\{{endpoint="/v1/chat/completions",http_response_code="200"[^}}]*\}} (\S+)$',
                                                       metrics, re.M))
                     for name in ("bentoml_service_request_total", "bentoml_service_request_duration_seconds_count"))

    def logged() -> int:
        return len(re.findall(r"method=POST,path=/v1/chat/completions[,)][^)]*\) \(status=200", tiny_server.log_path.read_text()))

    log = tiny_server.log_path.read_text()
    assert "send_streamed_chunks_past_middlewares: not applied" not in log, "the patch is applied in the service"
    before, lines_before = counted(), logged()
    stream = client.chat.completions.create(model="tiny-dev", messages=CHAT, max_tokens=24, stream=True,
                                            stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
    chunks = list(stream)
    texts = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(texts) >= 12 and chunks[-1].usage.completion_tokens == 24, "the reply came chunk by chunk, whole"
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["length"]
    assert counted() == (before[0] + 1, before[1] + 1)
    deadline = time.monotonic() + 10
    while logged() == lines_before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert logged() == lines_before + 1


WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city.",
        "strict": True,  # OpenAI's strict mode: vLLM pins the arguments to the schema
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "enum": ["Paris", "Rome", "Oslo"]}, "celsius": {"type": "boolean"}},
            "required": ["city", "celsius"],
            "additionalProperties": False,
        },
    },
}
ANSWER_SCHEMA = {
    "type": "object",
    "properties": {
        "answer": {"type": "string", "enum": ["yes", "no", "maybe"]},
        "confidence": {"type": "integer", "minimum": 0, "maximum": 100},
        "code": {"type": "string", "pattern": "^[A-Z]{3}$"},
    },
    "required": ["answer", "confidence", "code"],
    "additionalProperties": False,
}


def test_structured_output_matches_the_schema(client):
    for seed in range(3):
        reply = client.chat.completions.create(
            model="tiny-dev", messages=CHAT, max_tokens=200, seed=seed,
            response_format={"type": "json_schema", "json_schema": {"name": "answer", "schema": ANSWER_SCHEMA}},
        )
        jsonschema.validate(json.loads(reply.choices[0].message.content), ANSWER_SCHEMA)


def test_invalid_schema_is_a_400(tiny_server):
    broken = {"type": "object", "properties": {"a": {"type": "no-such-type"}}}
    body = {"model": "tiny-dev", "messages": CHAT, "max_tokens": 20,
            "response_format": {"type": "json_schema", "json_schema": {"name": "broken", "schema": broken}}}
    response = httpx.post(f"{tiny_server.url}/v1/chat/completions", json=body, timeout=60)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["message"]


@pytest.mark.parametrize("tool_choice", [{"type": "function", "function": {"name": "get_weather"}}, "required"])
def test_tool_call_arguments_match_the_parameters(client, tool_choice):
    reply = client.chat.completions.create(
        model="tiny-dev", messages=[{"role": "user", "content": "Weather in Paris?"}], max_tokens=200,
        tools=[WEATHER_TOOL], tool_choice=tool_choice, parallel_tool_calls=False,
    )
    calls = reply.choices[0].message.tool_calls
    # parallel_tool_calls=False lets the grammar allow one call; a random model would otherwise add calls until max_tokens.
    assert calls and len(calls) == 1 and calls[0].function.name == "get_weather"
    jsonschema.validate(json.loads(calls[0].function.arguments), WEATHER_TOOL["function"]["parameters"])


def test_forced_call_of_a_non_strict_tool_matches_the_parameters(client):
    """A named tool_choice for a tool without "strict": held to the schema all the same,
    because the catalog serves entries with a tool parser at tool_strict_level parameter."""
    tool = {"type": "function", "function": {k: v for k, v in WEATHER_TOOL["function"].items() if k != "strict"}}
    for seed in range(3):
        reply = client.chat.completions.create(
            model="tiny-dev", messages=[{"role": "user", "content": "Weather in Paris?"}], max_tokens=200, seed=seed,
            tools=[tool], tool_choice={"type": "function", "function": {"name": "get_weather"}},
        )
        (call,) = reply.choices[0].message.tool_calls
        jsonschema.validate(json.loads(call.function.arguments), tool["function"]["parameters"])


CLIENT_PYTHON = ROOT / ".client-env" / "bin" / "python"
WEATHER_VALUE = {  # tests/clients/forced_tools.py's Weather, as JSON Schema
    "type": "object",
    "properties": {"city": {"enum": ["Paris", "Rome", "Oslo"]}, "celsius": {"type": "boolean"}},
    "required": ["city", "celsius"],
    "additionalProperties": False,
}


@pytest.mark.parametrize("client_name", ["instructor", "langchain"])
def test_forced_tool_path_of_a_client_gets_valid_arguments(tiny_server, client_name):
    """instructor's TOOLS mode and LangChain's with_structured_output(method="function_calling"),
    run from their own environment; each seed is one request that must parse into the model."""
    if not CLIENT_PYTHON.exists():
        pytest.skip("instructor and langchain-openai are not installed: run `make client-env` (they pin openai "
                    "apart from vLLM, so they live in .client-env)")
    done = subprocess.run(
        [str(CLIENT_PYTHON), str(ROOT / "tests" / "clients" / "forced_tools.py"), f"{tiny_server.url}/v1", "tiny-dev",
         client_name, "0", "1", "2"],
        capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = [json.loads(line) for line in done.stdout.splitlines()]
    assert [r["seed"] for r in results] == [0, 1, 2]
    assert all(r["ok"] for r in results), results
    for result in results:
        jsonschema.validate(result["value"], WEATHER_VALUE)
