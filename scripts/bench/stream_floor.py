"""The CPU an HTTP server spends per streamed chunk when it does nothing else: the floor under
the gateway's router (docs/gateway.md).

    python -m scripts.bench.stream_floor [--servers bentoml uvicorn] [--concurrency 8] [--seconds 15]

One ASGI app streams 64 ready-made server-sent events per request, one every 2 ms, as tokens
come. It is served by each server in turn, one server at a time:

* `bentoml`: `bentoml serve` of a BentoML service that mounts it, declared as a gateway is
  (the same traffic timeout, tracing setting and request-timeout patch);
* `uvicorn`: plain uvicorn, with the same event loop (uvloop) and HTTP parser (httptools).

A client in another process reads every event over HTTP at the given concurrency. For each
server the script prints the events per second and the server's CPU time per event, over the
measured seconds after a warm-up. BentoML's worker is measured, not its supervisor.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from scripts.bench.run import one_bento_worker
from scripts.serving.process import ServerProcess, bento_server, free_port

ROOT = Path(__file__).resolve().parents[2]

EVENTS_PER_REQUEST = 64
STREAM_APP = f'''"""An ASGI app that streams ready-made server-sent events, one every 2 ms."""
import asyncio

EVENT = (b'data: {{"id":"cmpl-0123456789abcdef","object":"text_completion","created":1764528000,'
         b'"model":"tiny-dev","choices":[{{"index":0,"text":" word","logprobs":null,"finish_reason":null}}]}}\\n\\n')


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    if scope["path"] != "/v1/completions":
        await send({{"type": "http.response.start", "status": 200, "headers": []}})
        await send({{"type": "http.response.body", "body": b""}})
        return
    await send({{"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]}})
    for _ in range({EVENTS_PER_REQUEST}):
        await asyncio.sleep(0.002)
        await send({{"type": "http.response.body", "body": EVENT, "more_body": True}})
    await send({{"type": "http.response.body", "body": b""}})
'''
SERVICE = '''import bentoml
from patches import fix_request_timeout
from stream_app import app

fix_request_timeout()


@bentoml.asgi_app(app, path="/")
@bentoml.service(name="stream-floor", traffic={"timeout": 120}, tracing={"excluded_urls": ["/v1/"]})
class StreamFloor:
    pass
'''


def write_folder(folder: Path) -> Path:
    (folder / "stream_app.py").write_text(STREAM_APP)
    (folder / "service.py").write_text(SERVICE)
    shutil.copy(ROOT / "templates" / "patches.py", folder / "patches.py")
    return folder


def start(server: str, folder: Path) -> tuple[ServerProcess, psutil.Process]:
    """The server, ready, and the process that serves HTTP in it."""
    port = free_port()
    if server == "bentoml":
        process = bento_server(folder, port, log_path=folder / "bentoml.log").start()
        process.wait_ready(120)
        return process, one_bento_worker(process)[0]
    process = ServerProcess([sys.executable, "-m", "uvicorn", "stream_app:app", "--port", str(port), "--log-level", "warning"],
                            port=port, ready_path="/health", cwd=folder, log_path=folder / "uvicorn.log").start()
    process.wait_ready(60)
    return process, psutil.Process(process.process.pid)


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


def client(url: str, concurrency: int, seconds: float) -> int:
    """Run the client in its own process; the events it read."""
    done = subprocess.run([sys.executable, "-m", __spec__.name, "--client", url, str(concurrency), str(seconds)],
                          cwd=ROOT, capture_output=True, text=True, check=True)
    return int(done.stdout.split()[-1])


async def read_streams(url: str, concurrency: int, seconds: float) -> int:
    import httpx

    events = 0
    deadline = time.monotonic() + seconds

    async def one_stream_after_another(http: httpx.AsyncClient) -> None:
        nonlocal events
        while time.monotonic() < deadline:
            async with http.stream("POST", url + "/v1/completions", json={"model": "floor"}) as reply:
                async for line in reply.aiter_lines():
                    events += line.startswith("data: ")

    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=None)) as http:
        await asyncio.gather(*(one_stream_after_another(http) for _ in range(concurrency)))
    return events


def measure(server: str, folder: Path, concurrency: int, seconds: float) -> dict:
    process, serving = start(server, folder)
    try:
        client(process.url, concurrency, min(3.0, seconds))  # warm-up
        before = cpu_seconds(serving)
        started = time.monotonic()
        events = client(process.url, concurrency, seconds)
        elapsed = time.monotonic() - started
        used = cpu_seconds(serving) - before
    finally:
        process.stop()
    return {"server": server, "events": events, "events_per_s": events / elapsed, "cpu_us_per_event": used * 1e6 / events}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--servers", nargs="+", choices=("bentoml", "uvicorn"), default=["bentoml", "uvicorn"])
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--client", nargs=3, metavar=("URL", "CONCURRENCY", "SECONDS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.client:
        url, concurrency, seconds = args.client
        print(asyncio.run(read_streams(url, int(concurrency), float(seconds))))
        return 0
    print(f"{'server':>8}  {'events/s':>9}  {'server CPU per event':>20}")
    with tempfile.TemporaryDirectory(prefix="stream-floor-") as tmp:
        folder = write_folder(Path(tmp))
        for server in args.servers:
            row = measure(server, folder, args.concurrency, args.seconds)
            print(f"{row['server']:>8}  {row['events_per_s']:9.0f}  {row['cpu_us_per_event']:17.1f} µs", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
