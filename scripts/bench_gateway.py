"""`make bench BENCH_ARGS=--gateway`: a model's service alone against the same service behind a gateway.

    python scripts/bench.py --gateway [--model tiny-dev] [--runs 3] [--concurrency 1 8 32] ...

Two sides, one server at a time, in the order service, gateway, service, gateway, ... for
--runs pairs:

* service: `bentoml serve models/<model>`, the model's own folder;
* gateway: `bentoml serve` of a gateway of that one model (rendered by the generator into
  the logs folder), the load sent to the gateway, which passes each request on to the
  same model service in its own worker.

The load is bench.py's: vLLM's own serving benchmark (random prompts, fixed seed,
ignore_eos, greedy, /v1/completions) at each concurrency, after the cold start. It prints
gateway / service ratios (median over the pairs, [min - max]) and writes the raw results
as bench/results/<model>-gateway-<UTC time>.json. Server CPU is that of the BentoML
workers: the model service's alone, against the gateway's and the model service's.
"""

from __future__ import annotations

import argparse
import json
from datetime import datetime, timezone
from pathlib import Path

import psutil

import bench_client
import bench_report
import bench_run
import bench_stats
import generate
from catalog import Entry, Gateway
from serving import ServerProcess, bento_server, free_port

SIDES = ("service", "gateway")
BENCH_GATEWAY = "bench-gateway"


def write_gateway_folder(entry: Entry, folder: Path) -> Path:
    """A gateway of the one entry, rendered as `make generate` renders the catalog's gateways."""
    gateway = Gateway(name=BENCH_GATEWAY, description=f"{entry.name} alone behind a gateway, for the benchmark.",
                      models=[entry.name], traffic=entry.traffic)
    files = generate.render_gateway(gateway, {entry.name: entry}, generate.template_env(), generate.read_constraints())
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        (folder / name).write_text(content)
    return folder


def bento_workers(server: ServerProcess) -> list[psutil.Process]:
    root = psutil.Process(server.process.pid)
    return [p for p in root.children(recursive=True) if "_bentoml_impl.worker.service" in " ".join(p.cmdline())]


def measure_side(side: str, pair: int, entry: Entry, folder: Path, tokenizer: str, args: argparse.Namespace,
                 work: Path) -> dict:
    """Start one server, take its cold start, run the load at each concurrency, stop it."""
    label = f"[{side:7} {pair}/{args.runs}]"
    print(f"{label} starting bentoml serve {folder}", flush=True)
    server = bento_server(folder, free_port(), env=bench_run.SERVER_ENV, log_path=work / f"{side}-{pair}.server.log")
    with server:
        cold_start = bench_run.first_completion(server, entry.served_model_name)
        print(f"{label} cold start {cold_start:.1f}s (process start to first completion)", flush=True)
        workers = bento_workers(server)
        results = {}
        for c in args.concurrency:
            result_path = work / f"{side}-{pair}-c{c}.json"
            flags = bench_run.client_flags(server, entry.served_model_name, tokenizer, c, args, result_path)
            cpu_before = sum(map(bench_client.cpu_seconds, workers))
            results[str(c)] = result = bench_run.run_benchmark_client(flags, c, workers[0].pid, result_path)
            result["server_cpu_s"] = sum(map(bench_client.cpu_seconds, workers)) - cpu_before
            print(f"{label} concurrency {c:3}: {bench_report.key_numbers(result)}", flush=True)
    print(f"{label} stopped", flush=True)
    return {"side": side, "pair": pair, "cold_start_s": cold_start, "workers": len(workers), "results": results}


def summarize(runs: list[dict], concurrencies: list[int]) -> dict:
    """Gateway / service per pair, then median and min-max over the pairs."""
    by_side = {side: sorted((r for r in runs if r["side"] == side), key=lambda r: r["pair"]) for side in SIDES}
    both = list(zip(by_side["service"], by_side["gateway"]))
    per_concurrency = {}
    for c in map(str, concurrencies):
        row = {m: bench_stats.spread([bench_stats.ratio(g["results"][c][m], s["results"][c][m]) for s, g in both]) for m in bench_stats.METRICS}
        row["ttft_p50_delta_ms"] = bench_stats.spread(
            [g["results"][c]["median_ttft_ms"] - s["results"][c]["median_ttft_ms"] for s, g in both])
        row["output_throughput"]["interval90"] = bench_stats.median_interval(row["output_throughput"]["values"])
        per_concurrency[c] = row
    return {"pairs": len(both), "ratios_gateway_over_service": per_concurrency,
            "cold_start_ratio": bench_stats.spread([bench_stats.ratio(g["cold_start_s"], s["cold_start_s"]) for s, g in both])}


def summary_table(summary: dict, model: str) -> str:
    columns = [*bench_stats.METRICS.values(), "TTFT p50 Δ ms"]
    lines = [f"gateway / service for {model}: median over {summary['pairs']} pair(s) [min – max]; "
             "above 1 means the gateway is higher (better for tok/s, worse for times)",
             f"{'concurrency':>11}  " + "  ".join(f"{name:>23}" for name in columns)]
    for c, row in summary["ratios_gateway_over_service"].items():
        cells = [bench_report.fmt(row[m], ".2f") for m in bench_stats.METRICS] + [bench_report.fmt(row["ttft_p50_delta_ms"], "+.1f")]
        lines.append(f"{c:>11}  " + "  ".join(f"{cell:>23}" for cell in cells))
    lines.append(f"{'':>11}  output tok/s ratio, 90% bootstrap interval of the median over the pairs:")
    for c, row in summary["ratios_gateway_over_service"].items():
        low, high = row["output_throughput"]["interval90"]
        lines.append(f"{c:>11}  {low:.2f} – {high:.2f}")
    lines.append(f"{'cold start':>11}  {bench_report.fmt(summary['cold_start_ratio'], '.2f'):>23}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    entry = bench_run.catalog_entry(args.model)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    stem = args.out / f"{entry.name}-gateway-{stamp}"
    work = Path(f"{stem}-logs")
    folders = {"service": bench_run.ROOT / "models" / entry.name, "gateway": write_gateway_folder(entry, work / BENCH_GATEWAY)}
    tokenizer = bench_run.local_weights(entry.model)
    print(f"service side: bentoml serve models/{entry.name}; gateway side: bentoml serve {folders['gateway']}")
    print(f"{args.runs} pair(s), concurrency {' '.join(map(str, args.concurrency))}, "
          f"input {args.input_len} / output {args.output_len} tokens; logs in {work}/", flush=True)
    machine = {"cpus": psutil.cpu_count(), "load_average_at_start": psutil.getloadavg(),
               "sched_autogroup_enabled": bench_run.autogroup_enabled()}
    runs = [measure_side(side, pair, entry, folders[side], tokenizer, args, work)
            for pair in range(1, args.runs + 1) for side in SIDES]
    summary = summarize(runs, args.concurrency)
    record = {"model": entry.name, "mode": "gateway", "created_utc": stamp, "versions": bench_run.versions(), "machine": machine,
              "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
              "runs": runs, "summary": summary}
    json_path = Path(f"{stem}.json")
    json_path.write_text(json.dumps(record, indent=2) + "\n")
    print()
    print(summary_table(summary, entry.name))
    print(f"\nraw results: {json_path}")
    return 0
