"""Forced tool calls as two popular clients make them, against an OpenAI-compatible server.

Runs in the client environment (`make client-env`), not in the serving one: instructor and
langchain-openai pin `openai` differently from vLLM.

    python tests/clients/forced_tools.py BASE_URL MODEL {instructor,langchain} SEED...

Prints one JSON object per seed: {"seed", "ok", "value" | "error"}. Neither client marks
its tool `"strict": true`; whether the arguments match the schema is up to the server.
"""

from __future__ import annotations

import json
import sys
from typing import Literal

from pydantic import BaseModel

PROMPT = "Weather in Paris?"
MAX_TOKENS = 200


class Weather(BaseModel):
    """Current weather in a city."""

    city: Literal["Paris", "Rome", "Oslo"]  # closed: only the server, not random weights, can fail it
    celsius: bool


def with_instructor(base_url: str, model: str, seed: int) -> Weather:
    """instructor's TOOLS mode: a tool made from the model, forced with a named tool_choice."""
    import instructor
    from openai import OpenAI

    client = instructor.from_openai(OpenAI(base_url=base_url, api_key="unused", max_retries=0), mode=instructor.Mode.TOOLS)
    return client.chat.completions.create(
        model=model, response_model=Weather, messages=[{"role": "user", "content": PROMPT}],
        max_tokens=MAX_TOKENS, seed=seed, max_retries=1,  # one attempt: no retry hides a bad reply
    )


def with_langchain(base_url: str, model: str, seed: int) -> Weather:
    """LangChain's with_structured_output(method="function_calling"): the same, through langchain-openai."""
    from langchain_openai import ChatOpenAI

    chat = ChatOpenAI(base_url=base_url, api_key="unused", model=model, max_tokens=MAX_TOKENS, seed=seed, max_retries=0)
    return chat.with_structured_output(Weather, method="function_calling").invoke(PROMPT)


CLIENTS = {"instructor": with_instructor, "langchain": with_langchain}


def main(argv: list[str]) -> int:
    base_url, model, client, *seeds = argv
    for seed in map(int, seeds):
        try:
            value = CLIENTS[client](base_url, model, seed)
            print(json.dumps({"seed": seed, "ok": isinstance(value, Weather), "value": value.model_dump()}), flush=True)
        except Exception as exc:  # a reply that does not validate: report it, go on with the next seed
            print(json.dumps({"seed": seed, "ok": False, "error": f"{type(exc).__name__}: {exc}"[:500]}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
