"""`make bench BENCH_ARGS=--peers`: the gateway against the proxies users would pick instead, each
in front of the same running model service.

    python -m scripts.bench --peers [--model tiny-dev] [--hops direct gateway litellm nginx] [--runs 3]
                            [--concurrency 8 32] [--num-prompts 64] [--input-len 64] [--output-len 64]

The model's service (`bentoml serve models/<model>`) starts once. Then, for each of --runs pairs,
each hop in turn (scripts/bench/hops.py) is started in front of it, warmed with one completion,
measured at each concurrency with the load of `make bench` (vLLM's serving benchmark, random
prompts, fixed seed, ignore_eos, greedy, /v1/completions), and stopped: one hop at a time, the
same load. vLLM's TTFT histogram and token counter are read from the model service's own /metrics
(not every hop passes /metrics on), so TTFT outside the engine compares across hops. A hop's CPU
is that of its own processes over the measured requests. It prints each hop against `direct`
(peers_stats, peers_report) and writes bench/results/<model>-peers-<UTC time>.json, a plot beside it
(.png) and every server's and client's log in a folder of the same name.
"""

from __future__ import annotations

import argparse
import contextlib
import json
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import psutil

from scripts.bench import run as bench_run
from scripts.bench.hops import Hop, hops, refuse_missing
from scripts.bench.peers_report import PEER_PANELS, peers_table
from scripts.bench.peers_stats import BASE, engine_counted_runs, summarize_peers
from scripts.bench.report import plot
from scripts.serving.process import ServerProcess, bento_server, free_port

def hop_names(args: argparse.Namespace) -> list[str]:
    """The hops of --hops, and direct first (every hop is compared with it); refused at once when a
    hop's program is missing."""
    names = list(dict.fromkeys([BASE, *args.hops]))
    refuse_missing(names)
    return names


@contextlib.contextmanager
def hop_target(hop: Hop, service: ServerProcess, work: Path) -> Iterator[ServerProcess]:
    """The server the load goes to: the model service itself for direct, else the hop started in front of it."""
    if hop.server is None:
        yield service
        return
    work.mkdir(parents=True, exist_ok=True)
    with hop.server(service, work) as server:
        yield server


def measure_hop(hop: Hop, pair: int, service: ServerProcess, model_name: str, tokenizer: str,
                args: argparse.Namespace, work: Path) -> dict:
    """Start one hop in front of the service, warm it with one completion, benchmark each concurrency, stop it."""
    label = f"[{hop.name:7} {pair}/{args.runs}]"
    print(f"{label} starting", flush=True)
    with hop_target(hop, service, work / f"{hop.name}-{pair}") as target:
        ready_s, answered_s = bench_run.first_completion(target, model_name)
        processes = hop.processes(target)
        print(f"{label} ready at {ready_s:.1f}s, first completion at {answered_s:.1f}s; "
              f"{len(processes)} hop process(es)", flush=True)
        results = bench_run.measure_concurrencies(target, [p.pid for p in processes], f"{hop.name}-{pair}", label,
                                                  model_name, tokenizer, args, work, metrics_url=service.url)
    print(f"{label} stopped", flush=True)
    return {"side": hop.name, "pair": pair, "ready_s": ready_s, "hop_processes": len(processes), "results": results}


def measure(entry, chosen: list[Hop], args: argparse.Namespace, work: Path) -> list[dict]:
    """The model service started once; every pair of hops in front of it."""
    tokenizer = bench_run.local_weights(entry.model)
    folder = bench_run.ROOT / "models" / entry.name
    with bento_server(folder, free_port(), env=bench_run.SERVER_ENV, log_path=work / "model-service.server.log") as service:
        ready_s, _ = bench_run.first_completion(service, entry.served_model_name)
        print(f"model service: bentoml serve models/{entry.name}, ready at {ready_s:.1f}s", flush=True)
        return [measure_hop(hop, pair, service, entry.served_model_name, tokenizer, args, work)
                for pair in range(1, args.runs + 1) for hop in chosen]


def run(args: argparse.Namespace) -> int:
    names = hop_names(args)
    entry = bench_run.catalog_entry(args.model)
    chosen = [hops(entry)[name] for name in names]
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    stem = args.out / f"{entry.name}-peers-{stamp}"
    work = Path(f"{stem}-logs")
    work.mkdir(parents=True, exist_ok=True)
    print(f"hops {' '.join(names)} in front of models/{entry.name}; {args.runs} pair(s), concurrency "
          f"{' '.join(map(str, args.concurrency))}, input {args.input_len} / output {args.output_len} tokens; "
          f"logs in {work}/", flush=True)
    machine = {"cpus": psutil.cpu_count(), "load_average_at_start": psutil.getloadavg(),
               "sched_autogroup_enabled": bench_run.autogroup_enabled()}
    runs = measure(entry, chosen, args, work)
    summary = summarize_peers(runs, args.concurrency, names)
    record = {"model": entry.name, "mode": "peers", "hops": names, "created_utc": stamp,
              "versions": bench_run.versions(), "machine": machine,
              "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
              "runs": runs, "summary": summary}
    json_path = Path(f"{stem}.json")
    json_path.write_text(json.dumps(record, indent=2) + "\n")
    print()
    print(peers_table(summary, entry.name))
    if machine["sched_autogroup_enabled"]:
        print(bench_run.autogroup_warning())
    print(f"\nraw results: {json_path}")
    if png := plot(engine_counted_runs(runs), args.concurrency, Path(f"{stem}.png"), entry.name, tuple(names), PEER_PANELS):
        print(f"plot: {png}")
    return 0
