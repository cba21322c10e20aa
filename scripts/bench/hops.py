"""The hops of `make bench BENCH_ARGS=--peers`: what users put in front of a model service, each
started in front of the same running service.

* direct:  no hop, the load straight to the model service;
* gateway: this project's gateway of that one model (bench_gateway.write_gateway_folder), under
           BentoML's standalone server with the model service as a remote dependency, as BentoCloud
           runs each service of a distributed deployment;
* litellm: LiteLLM's proxy (`make litellm-env`), one worker, the model as a text-completion
           upstream, logging, callbacks, spend logs and database off;
* nginx:   Debian's nginx (`make nginx`), one worker, unbuffered, HTTP/1.1 keep-alive upstream.

Config writers, the processes that serve each hop (whose CPU time is the hop's cost), and the
check that every chosen hop's program is installed; nothing here measures.
"""

from __future__ import annotations

import json
import shutil
import typing as t
from dataclasses import dataclass
from pathlib import Path

import psutil

from scripts.bench import gateway as bench_gateway
from scripts.bench import run as bench_run
from scripts.catalog import Entry
from scripts.serving.process import ServerProcess, bento_http_server, free_port, refuse_when_no_servers

HOPS = ("direct", "gateway", "litellm", "nginx")
LITELLM = bench_run.ROOT / ".litellm-env" / "bin" / "litellm"
# LiteLLM's own logging at errors only; its model cost map from the installed package (no fetch
# from GitHub at start: the machines here have no internet).
LITELLM_ENV = {"LITELLM_LOG": "ERROR", "LITELLM_LOCAL_MODEL_COST_MAP": "True"}


# A user's database for LiteLLM, which it would use: the hop runs without one.
LITELLM_UNSET = ("DATABASE_URL", "DIRECT_URL")


def nginx_program() -> str | None:
    """nginx on PATH, or where Debian puts it (/usr/sbin is not on every user's PATH)."""
    return shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin")


# --- configs ---------------------------------------------------------------------------------


def nginx_config(port: int, upstream: str, work: Path) -> str:
    """One server on 127.0.0.1:port in front of `host:port`: one worker, no access log, each
    streamed chunk passed on at once (`proxy_buffering off`), HTTP/1.1 keep-alive to the upstream,
    its pid, error log and temp files in `work`."""
    return f"""daemon off;
worker_processes 1;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {work}/nginx-client-body;
    proxy_temp_path {work}/nginx-proxy;
    fastcgi_temp_path {work}/nginx-fastcgi;
    uwsgi_temp_path {work}/nginx-uwsgi;
    scgi_temp_path {work}/nginx-scgi;
    upstream model_service {{
        server {upstream};
        keepalive 64;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://model_service;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_request_buffering off;
            proxy_read_timeout 600s;
        }}
    }}
}}
"""


def litellm_config(model_name: str, api_base: str) -> str:
    """LiteLLM's proxy config (YAML; JSON is YAML) naming `model_name` at the model service.

    `text-completion-openai/` is LiteLLM's provider for an OpenAI-compatible /v1/completions, which
    the benchmark's load uses. What is off follows LiteLLM's own benchmark and production pages:
    https://docs.litellm.ai/docs/benchmarks (`callbacks: []`, `num_retries: 0`) and
    https://docs.litellm.ai/docs/proxy/prod (no database, spend logs and error logs off, LITELLM_LOG
    at ERROR). No master key, as no hop and no model service here checks an API key
    (bench_run.SERVER_ENV): LiteLLM 1.108 refuses to start without one unless told
    `dangerously_permit_weak_or_unset_master_key`. `api_key` is a placeholder that the model
    service does not check.
    """
    return json.dumps({
        "model_list": [{"model_name": model_name,
                        "litellm_params": {"model": f"text-completion-openai/{model_name}", "api_base": api_base,
                                           "api_key": "unused"}}],
        "litellm_settings": {"callbacks": [], "success_callback": [], "failure_callback": [], "num_retries": 0,
                             "request_timeout": 600, "telemetry": False},
        "general_settings": {"disable_spend_logs": True, "disable_error_logs": True,
                             "dangerously_permit_weak_or_unset_master_key": True},
    }, indent=2) + "\n"


# --- the hops --------------------------------------------------------------------------------


@dataclass
class Hop:
    """One hop: how its server is made in front of the model service, and which of its processes it costs."""

    name: str
    # (model service, logs folder) -> a server not started yet, on a free port; None for direct
    server: t.Callable[[ServerProcess, Path], ServerProcess] | None
    processes: t.Callable[[ServerProcess], list[psutil.Process]]


def process_and_children(server: ServerProcess) -> list[psutil.Process]:
    root = psutil.Process(server.process.pid)
    return [root, *root.children(recursive=True)]


def gateway_workers(server: ServerProcess) -> list[psutil.Process]:
    """The gateway's one BentoML worker; refused if the standalone server started anything else
    (a second model service, a vLLM engine) instead of using the running model service."""
    engines = [p for p in server.descendants() if p.name().startswith("VLLM")]  # VLLM::EngineCore, VLLM::Worker
    workers = bench_run.bento_workers(server)
    if engines or len(workers) != 1:
        raise RuntimeError(f"the gateway's standalone server should run one worker and no engine; found "
                           f"{len(workers)} worker(s) and engine processes {[p.pid for p in engines]}")
    return workers


def gateway_server(entry: Entry) -> t.Callable[[ServerProcess, Path], ServerProcess]:
    def make(service: ServerProcess, work: Path) -> ServerProcess:
        folder = bench_gateway.write_gateway_folder(entry, work / bench_gateway.BENCH_GATEWAY)
        return bento_http_server(folder, free_port(), {entry.name: service.url}, env=bench_run.SERVER_ENV,
                                 log_path=work / "gateway.server.log")
    return make


def litellm_server(model_name: str) -> t.Callable[[ServerProcess, Path], ServerProcess]:
    def make(service: ServerProcess, work: Path) -> ServerProcess:
        refuse_when_no_servers("LiteLLM's proxy")
        config = work / "litellm.yaml"
        config.write_text(litellm_config(model_name, service.url + "/v1"))
        port = free_port()
        server = ServerProcess([str(LITELLM), "--config", str(config), "--host", "127.0.0.1", "--port", str(port),
                                "--num_workers", "1"],
                               port=port, ready_path="/health/liveliness", env=LITELLM_ENV,
                               log_path=work / "litellm.server.log")
        server.env = {k: v for k, v in server.env.items() if k not in LITELLM_UNSET}
        return server
    return make


def nginx_server(service: ServerProcess, work: Path) -> ServerProcess:
    refuse_when_no_servers("nginx")
    port = free_port()
    config = work / "nginx.conf"
    config.write_text(nginx_config(port, f"127.0.0.1:{service.port}", work))
    return ServerProcess([nginx_program(), "-p", str(work), "-e", str(work / "nginx-error.log"), "-c", str(config)],
                         port=port, ready_path="/readyz", log_path=work / "nginx.server.log")


def hops(entry: Entry) -> dict[str, Hop]:
    return {
        "direct": Hop("direct", None, lambda server: []),
        "gateway": Hop("gateway", gateway_server(entry), gateway_workers),
        "litellm": Hop("litellm", litellm_server(entry.served_model_name), process_and_children),
        "nginx": Hop("nginx", nginx_server, process_and_children),
    }


def installs() -> dict[str, tuple[str, t.Callable[[], bool]]]:
    """The hops whose program is installed apart from .venv: the make target that installs it, and whether it is there."""
    return {"litellm": ("make litellm-env", LITELLM.is_file), "nginx": ("make nginx", lambda: nginx_program() is not None)}


def refuse_missing(names: list[str]) -> None:
    """Stop before anything starts when a chosen hop's program is not installed."""
    missing = {name: target for name, (target, installed) in installs().items() if name in names and not installed()}
    if missing:
        raise SystemExit("; ".join(f"--hops {name}: not installed, `{target}` installs it" for name, target in missing.items()))
