"""templates/vllm_openai.py: vLLM's errors keep their HTTP class in the BentoML APIs.

A refused request is the caller's fault (4xx); a failing or dead engine is not (5xx), and
must not reach a client as a 400 that tells it to change its request. Checked with vLLM's
own error objects and exceptions, as its serving code returns and raises them.
"""

from __future__ import annotations

import asyncio
import json
from http import HTTPStatus

import bentoml
import pytest
from vllm.entrypoints.serve.exception_handling.error_response import create_error_response
from vllm.exceptions import GenerationError, RetryableRequestError, VLLMValidationError
from vllm.v1.engine.exceptions import EngineDeadError, EngineGenerateError
from vllm_openai import OpenAIServer

# vLLM's exception -> the status vLLM itself answers with on /v1 -> the BentoML exception.
CASES = {
    "validation": (VLLMValidationError("max_tokens must be at least 1", parameter="max_tokens"), 400,
                   bentoml.exceptions.InvalidArgument),
    "generation failed": (GenerationError(), 500, bentoml.exceptions.InternalServerError),
    "retryable": (RetryableRequestError(), 503, bentoml.exceptions.ServiceUnavailable),
    "engine dead": (EngineDeadError(), 500, bentoml.exceptions.InternalServerError),
    "generate error": (EngineGenerateError("boom"), 500, bentoml.exceptions.InternalServerError),
}


@pytest.mark.parametrize("case", list(CASES))
def test_error_response_keeps_vllms_status(case):
    exc, status, error_type = CASES[case]
    response = create_error_response(exc)
    assert response.error.code == status  # what vLLM's own /v1 routes answer
    with pytest.raises(error_type) as raised:
        OpenAIServer._check(response)
    assert raised.value.error_code == status and raised.value.message == response.error.message


def test_a_5xx_without_a_class_of_its_own_is_still_a_5xx():
    response = create_error_response("upstream timed out", "GatewayTimeout", HTTPStatus.GATEWAY_TIMEOUT)
    with pytest.raises(bentoml.exceptions.InternalServerError) as raised:
        OpenAIServer._check(response)
    assert raised.value.error_code == HTTPStatus.GATEWAY_TIMEOUT


def test_a_successful_result_passes_through():
    result = object()
    assert OpenAIServer._check(result) is result


@pytest.mark.parametrize("exc,error_type,status", [
    (EngineDeadError(), bentoml.exceptions.ServiceUnavailable, 503),
    (EngineGenerateError("boom"), bentoml.exceptions.InternalServerError, 500),
    (GenerationError(), bentoml.exceptions.InternalServerError, 500),
    (VLLMValidationError("bad", parameter="x"), bentoml.exceptions.InvalidArgument, 400),
    (ValueError("1 validation error for ChatCompletionRequest"), bentoml.exceptions.InvalidArgument, 400),
])
def test_raised_errors_are_the_callers_only_when_vllm_says_so(exc, error_type, status):
    with pytest.raises(error_type) as raised:
        with OpenAIServer._client_errors():
            raise exc
    assert raised.value.error_code == status


class StreamingChat:
    """vLLM's chat serving as `stream_chat` meets it: a stream of SSE events, here one
    text chunk and then the error event vLLM writes when generation fails mid-stream."""

    def __init__(self, error: Exception):
        self.error = error

    async def create_chat_completion(self, request):
        chunk = {"choices": [{"index": 0, "delta": {"content": "Hello"}}]}
        error = json.dumps(create_error_response(self.error).model_dump())
        return aiter([f"data: {json.dumps(chunk)}\n\n", f"data: {error}\n\n", "data: [DONE]\n\n"])


async def aiter(items):
    for item in items:
        yield item


def read_stream(error: Exception) -> tuple[list[str], BaseException]:
    server = OpenAIServer()
    server.app = type("App", (), {"state": type("State", (), {"openai_serving_chat": StreamingChat(error)})()})()
    received = []

    async def consume():
        async for text in server.stream_chat([{"role": "user", "content": "Hi"}], max_tokens=4):
            received.append(text)

    with pytest.raises(bentoml.exceptions.BentoMLException) as raised:
        asyncio.run(consume())
    return received, raised.value


def test_an_error_event_mid_stream_ends_the_stream_with_its_status():
    received, error = read_stream(GenerationError())
    assert received == ["Hello"]
    assert isinstance(error, bentoml.exceptions.InternalServerError) and error.error_code == 500
