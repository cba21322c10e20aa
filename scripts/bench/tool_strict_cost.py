"""What `--tool-strict-level` costs and buys, measured on plain vLLM with a model folder's flags.

    python -m scripts.bench.tool_strict_cost [--model tiny-dev] [--levels auto parameter] [--rounds 2] [--requests 15]

vLLM 0.32's default, `auto`, holds a named `tool_choice` to the call's envelope but not to
the tool's parameters unless the tool says `"strict": true`, which instructor's TOOLS mode
and LangChain's `with_structured_output(method="function_calling")` do not send. `function`
constrains the envelope of every request with tools, `parameter` also pins every tool's
arguments to its schema. For each level, one server at a time (rounds alternate the
levels), it times three kinds of request: a plain chat (no tools), a chat with a non-strict
tool and `tool_choice: auto`, and a forced call of that tool; and counts the forced calls
whose arguments validate against the schema. It prints medians with [min – max] over all
requests of a level and writes the raw numbers as JSON (--out).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
import jsonschema

from scripts.bench.run import ROOT, SERVER_ENV, catalog_entry, vllm_command_line
from scripts.serving.process import free_port, vllm_server

# A tool as the two clients send it: no "strict", a closed schema (only the server can fail it).
TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "enum": ["Paris", "Rome", "Oslo"]}, "celsius": {"type": "boolean"}},
            "required": ["city", "celsius"],
        },
    },
}
MESSAGES = [{"role": "user", "content": "Weather in Paris?"}]
KINDS = {
    "plain chat": {"max_tokens": 64, "ignore_eos": True},
    "tools, auto": {"max_tokens": 64, "tools": [TOOL], "tool_choice": "auto"},
    "forced tool call": {"max_tokens": 200, "tools": [TOOL], "parallel_tool_calls": False,
                         "tool_choice": {"type": "function", "function": {"name": "get_weather"}}},
}


def valid_arguments(reply: dict) -> bool:
    calls = reply["choices"][0]["message"].get("tool_calls") or []
    try:
        arguments = json.loads(calls[0]["function"]["arguments"])
        jsonschema.validate(arguments, TOOL["function"]["parameters"])
        return len(calls) == 1
    except (IndexError, ValueError, jsonschema.ValidationError):
        return False


def timed_requests(url: str, model: str, kind: str, requests: int) -> list[dict]:
    """`requests` sequential requests of one kind, seeds 0.., each timed end to end."""
    samples = []
    with httpx.Client(base_url=url, timeout=300) as client:
        for seed in range(requests):
            body = {"model": model, "messages": MESSAGES, "seed": seed, **KINDS[kind]}
            start = time.perf_counter()
            response = client.post("/v1/chat/completions", json=body)
            elapsed = time.perf_counter() - start
            response.raise_for_status()
            reply = response.json()
            samples.append({"seconds": elapsed, "tokens": reply["usage"]["completion_tokens"],
                            "valid": valid_arguments(reply) if kind == "forced tool call" else None})
    return samples


CLIENT_SCRIPT = ROOT / "tests" / "clients" / "forced_tools.py"


def client_results(client_python: Path, url: str, model: str, requests: int) -> dict[str, list[bool]]:
    """Whether instructor's and LangChain's forced tool calls parsed, one per seed."""
    found = {}
    for client in ("instructor", "langchain"):
        done = subprocess.run([str(client_python), str(CLIENT_SCRIPT), f"{url}/v1", model, client,
                               *map(str, range(requests))], capture_output=True, text=True, timeout=1800, check=True)
        found[client] = [json.loads(line)["ok"] for line in done.stdout.splitlines()]
    return found


def measure_level(level: str, argv: list[str], model: str, requests: int, log: Path,
                  client_python: Path | None) -> tuple[dict, dict]:
    with vllm_server([*argv, "--tool-strict-level", level], free_port(), env=SERVER_ENV, log_path=log) as server:
        server.wait_ready(timeout=900)
        for kind in KINDS:  # warm-up: compile graphs and grammars once before timing
            timed_requests(server.url, model, kind, 1)
        timings = {kind: timed_requests(server.url, model, kind, requests) for kind in KINDS}
        clients = client_results(client_python, server.url, model, requests) if client_python else {}
        return timings, clients


def summary(samples: list[dict]) -> str:
    def spread(values: list[float]) -> str:
        return f"{statistics.median(values):7.1f} [{min(values):.1f} – {max(values):.1f}]"

    line = (f"{spread([1000 * s['seconds'] for s in samples])} ms, "
            f"{spread([1000 * s['seconds'] / max(s['tokens'], 1) for s in samples])} ms/token, "
            f"{statistics.median(s['tokens'] for s in samples):5.0f} tokens")
    if samples[0]["valid"] is not None:
        line += f", {sum(s['valid'] for s in samples)}/{len(samples)} arguments valid"
    return line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny-dev")
    parser.add_argument("--levels", nargs="+", default=["auto", "parameter"], choices=["auto", "function", "parameter"])
    parser.add_argument("--rounds", type=int, default=2, help="server starts per level, levels alternating")
    parser.add_argument("--requests", type=int, default=15, help="timed requests of each kind per server")
    parser.add_argument("--client-python", type=Path, help="also run the clients' forced tool calls with this "
                        "interpreter (.client-env/bin/python after `make client-env`)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "tool-strict-cost.json")
    args = parser.parse_args(argv)

    entry = catalog_entry(args.model)
    vllm_argv = vllm_command_line(entry)
    results: dict[str, dict[str, list[dict]]] = {level: {kind: [] for kind in KINDS} for level in args.levels}
    clients: dict[str, dict[str, list[bool]]] = {level: {} for level in args.levels}
    for round_ in range(1, args.rounds + 1):
        for level in args.levels:
            print(f"[{level} {round_}/{args.rounds}] serving plain vLLM --tool-strict-level {level}", flush=True)
            log = args.out.with_name(f"{args.out.stem}-{level}-{round_}.server.log")
            timings, parsed = measure_level(level, vllm_argv, entry.served_model_name, args.requests, log,
                                            args.client_python)
            for kind, samples in timings.items():
                results[level][kind] += samples
            for client, oks in parsed.items():
                clients[level].setdefault(client, []).extend(oks)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"model": entry.name, "vllm_argv": vllm_argv, "results": results, "clients": clients}, indent=2) + "\n")
    print(f"\n{entry.name}, plain vLLM, median [min – max] over {args.rounds} server(s) x {args.requests} requests:")
    for level in args.levels:
        for kind in KINDS:
            print(f"  {level:9} {kind:16} {summary(results[level][kind])}")
        for client, oks in clients[level].items():
            print(f"  {level:9} {client:16} {sum(oks)}/{len(oks)} forced calls parsed into the client's model")
    print(f"raw: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
