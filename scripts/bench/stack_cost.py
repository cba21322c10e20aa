"""CPU per request of BentoML's HTTP layers in a generated service, one layer left out at a time.

    python -m scripts.bench.stack_cost [--model tiny-dev] [--requests 3000] [--chunks 1]

The end-to-end benchmark (`make bench`) cannot see a few microseconds per request through
the spread between server starts. This loads the generated service as `bentoml serve`
builds it (its decorator, middlewares and mounts, BentoML's logging and shared-file
metrics), puts a stand-in app where vLLM's app goes (it answers every request with a
stream of --chunks chunks at once, so only the layers around it cost anything), and
calls the ASGI app directly, without sockets (BentoML's access log goes to /dev/null).
It prints the CPU per request with all layers, with each middleware left out in turn,
with none of them, and for the stand-in alone; medians of 5 rounds, each case in a
fresh process.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ROUNDS = 5
STAND_IN_ALONE = "<stand-in alone>"
REQUEST_BODY = b'{"model": "m", "prompt": "hi", "max_tokens": 1, "stream": true}'


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny-dev", help="a folder of models/ (default: tiny-dev)")
    parser.add_argument("--requests", type=int, default=3000, help="per round (default: 3000)")
    parser.add_argument("--chunks", type=int, default=1, help="streamed chunks per response (default: 1)")
    parser.add_argument("--leave-out", help=argparse.SUPPRESS)  # internal: measure one case in this process
    return parser.parse_args(argv)


def stand_in_app(chunks: int):
    """An ASGI app that streams `chunks` server-sent events at once, in place of vLLM's app."""

    async def app(scope, receive, send) -> None:
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        for _ in range(chunks):
            await send({"type": "http.response.body", "body": b"data: {}\n\n", "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    return app


def http_scope() -> dict:
    return {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
        "path": "/v1/completions", "raw_path": b"/v1/completions", "root_path": "", "query_string": b"",
        "headers": [(b"host", b"localhost"), (b"content-type", b"application/json"),
                    (b"content-length", str(len(REQUEST_BODY)).encode())],
        "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 3000), "state": {},
    }


async def cpu_per_request(app, requests: int) -> float:
    """Median over ROUNDS of the process CPU time per request, in µs."""

    statuses: set[int] = set()

    async def receive() -> dict:
        return {"type": "http.request", "body": REQUEST_BODY, "more_body": False}

    async def send(message: dict) -> None:
        if message["type"] == "http.response.start":
            statuses.add(message["status"])

    async def one_round() -> float:
        start = time.process_time()
        for _ in range(requests):
            await app(http_scope(), receive, send)
        return (time.process_time() - start) / requests * 1e6

    await one_round()  # warm-up: Starlette builds the middleware stack on the first request
    if statuses != {200}:
        raise RuntimeError(f"the stand-in app did not answer every request: HTTP statuses {sorted(statuses)}")
    return statistics.median([await one_round() for _ in range(ROUNDS)])


def load_service(model_dir: Path):
    """The generated service, set up as in a `bentoml serve` worker (logging, metrics, context).

    BentoML's access log writes a line per request to sys.stdout; that goes to /dev/null here.
    """
    import bentoml
    from bentoml._internal.context import server_context
    from bentoml._internal.log import configure_server_logging

    sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - for the rest of this process; results go to sys.__stdout__
    configure_server_logging()
    server_context.service_name, server_context.service_type = model_dir.name, "entry_service"
    return bentoml.load(str(model_dir))


def build_app(service, leave_out: set[str]):
    """The service's ASGI app, as `bentoml serve` builds it, without the middlewares named."""
    from _bentoml_impl.server.app import ServiceAppFactory

    every = ServiceAppFactory.middlewares.fget
    ServiceAppFactory.middlewares = property(lambda self: [m for m in every(self) if m.cls.__name__ not in leave_out])
    try:
        return service.to_asgi(is_main=True)
    finally:
        ServiceAppFactory.middlewares = property(every)


def measure_case(args: argparse.Namespace) -> dict:
    """One case, in this process: the layer names of the full stack, and µs per request."""
    # As under `bentoml serve`: BentoML's metrics live in shared files.
    os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="stack-cost-metrics-"))
    model_dir = ROOT / "models" / args.model
    service = load_service(model_dir)
    stand_in = stand_in_app(args.chunks)
    sys.modules[service.inner.__module__].openai_server.app = stand_in  # vLLM's routes reach the stand-in
    leave_out = set(filter(None, args.leave_out.split(",")))
    app = stand_in if args.leave_out == STAND_IN_ALONE else build_app(service, leave_out)
    layers = [m.cls.__name__ for m in getattr(app, "user_middleware", [])]  # outermost first
    return {"layers": layers, "us": asyncio.run(cpu_per_request(app, args.requests))}


def run_case(args: argparse.Namespace, leave_out: str) -> dict:
    """A case in a child process: each builds BentoML's app once, as a server does."""
    command = [sys.executable, "-m", __spec__.name, "--model", args.model, "--requests", str(args.requests),
               "--chunks", str(args.chunks), "--leave-out", leave_out]
    env = {**os.environ, "VLLM_API_KEY": ""}  # the service's key check passes everything, as in `make bench`
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"measuring {leave_out or 'all layers'} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.leave_out is not None:
        result = measure_case(args)
        print(json.dumps(result), file=sys.__stdout__)
        return 0
    print(f"CPU per request through {args.model}'s service, {args.chunks} chunk(s) per response, "
          f"median of {ROUNDS} rounds of {args.requests} requests:", flush=True)
    full = run_case(args, "")
    rows = [("all layers", full["us"])]
    for name in full["layers"]:
        rows.append((f"without {name}", run_case(args, name)["us"]))
    rows.append(("without all of them", run_case(args, ",".join(full["layers"]))["us"]))
    rows.append(("the stand-in app alone", run_case(args, STAND_IN_ALONE)["us"]))
    for label, micros in rows:
        print(f"  {label:<45} {micros:8.1f} µs  ({micros - full['us']:+.1f})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
