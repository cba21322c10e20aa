"""`make bench BENCH_ARGS=--gateway`: a model's service alone against the same service behind a gateway.

    python -m scripts.bench --gateway [--model tiny-dev] [--runs 3] [--concurrency 1 8 32] ...

Two sides, one server at a time, in the order service, gateway, service, gateway, ... for
--runs pairs:

* service: `bentoml serve models/<model>`, the model's own folder;
* gateway: `bentoml serve` of a gateway of that one model (rendered by the generator into
  the logs folder), the load sent to the gateway, which passes each request on to the
  same model service in its own worker.

The load is bench.py's: vLLM's own serving benchmark (random prompts, fixed seed,
ignore_eos, greedy, /v1/completions) at each concurrency, after the cold start. It prints
gateway / service ratios (median over the pairs, [min - max]) and writes the raw results
as bench/results/<model>-gateway-<UTC time>.json, with a plot beside it (.png). Server CPU
is that of the BentoML workers over the measured requests: the model service's alone,
against the gateway's and the model service's. Measuring, statistics and table are bench_run's, bench_stats' and
bench_report's, with these two sides; this module only makes the sides.
"""

from __future__ import annotations

import argparse
import json
from datetime import datetime, timezone
from pathlib import Path

import psutil

from scripts.bench import report as bench_report
from scripts.bench import run as bench_run
from scripts.bench import stats as bench_stats
from scripts import generate
from scripts.catalog import Entry, Gateway
from scripts.serving.process import bento_server, free_port

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


def gateway_sides(entry: Entry, work: Path) -> list[bench_run.Side]:
    """The model's own folder, then a gateway of that one model; every BentoML worker serves HTTP."""
    folders = {"service": bench_run.ROOT / "models" / entry.name, "gateway": write_gateway_folder(entry, work / BENCH_GATEWAY)}

    def side(name: str) -> bench_run.Side:
        return bench_run.Side(name, f"bentoml serve {folders[name]}",
                              lambda log: bento_server(folders[name], free_port(), env=bench_run.SERVER_ENV, log_path=log),
                              bench_run.bento_workers)

    return [side(name) for name in SIDES]


def run(args: argparse.Namespace) -> int:
    entry = bench_run.catalog_entry(args.model)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    stem = args.out / f"{entry.name}-gateway-{stamp}"
    work = Path(f"{stem}-logs")
    sides = gateway_sides(entry, work)
    print(f"service side: bentoml serve models/{entry.name}; gateway side: bentoml serve {work / BENCH_GATEWAY}")
    print(f"{args.runs} pair(s), concurrency {' '.join(map(str, args.concurrency))}, "
          f"input {args.input_len} / output {args.output_len} tokens; logs in {work}/", flush=True)
    machine = {"cpus": psutil.cpu_count(), "load_average_at_start": psutil.getloadavg(),
               "sched_autogroup_enabled": bench_run.autogroup_enabled()}
    runs = bench_run.measure_pairs(sides, entry.served_model_name, bench_run.local_weights(entry.model), args, work)
    summary = bench_stats.summarize(runs, args.concurrency, SIDES)
    record = {"model": entry.name, "mode": "gateway", "created_utc": stamp, "versions": bench_run.versions(), "machine": machine,
              "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
              "runs": runs, "summary": summary}
    json_path = Path(f"{stem}.json")
    json_path.write_text(json.dumps(record, indent=2) + "\n")
    print()
    print(bench_report.summary_table(summary, entry.name, SIDES))
    print(f"\nraw results: {json_path}")
    if png := bench_report.plot(runs, args.concurrency, Path(f"{stem}.png"), entry.name, SIDES):
        print(f"plot: {png}")
    return 0
