"""`make bench`: the generated Bento against plain vLLM, on the same weights and engine arguments.

    python -m scripts.bench [--model tiny-dev] [--runs 3] [--concurrency 1 8 32] [--num-prompts 64]
                            [--input-len 64] [--output-len 64] [--out bench/results]
    python -m scripts.bench --pool bench/results/A.json bench/results/B.json ...
    python -m scripts.bench --peers [--hops direct gateway litellm nginx] ...   (scripts/bench/peers.py)

Two sides, one server at a time (two engines on one machine distort each other), in the
order vLLM, Bento, vLLM, Bento, ... for --runs pairs:

* vllm:  plain vLLM's OpenAI server with the `vllm serve` command line that the model
         folder's service builds (catalog entry -> entry_engine_config -> engine_argv);
* bento: `bentoml serve models/<model>`, the generated service as it is.

For each started server: the cold start (process start to the first completed request),
then vLLM's own serving benchmark (`vllm bench serve`: random prompts with a fixed seed,
ignore_eos, greedy, /v1/completions, after a warm-up of one request per concurrent slot) at
each concurrency, in a child process. Around the measured requests (not the warm-up) it
reads vLLM's own time-to-first-token histogram from /metrics, to tell the part of TTFT spent
outside vLLM's engine, and the serving process's CPU time. At the end it prints Bento / vLLM
ratios (median over the pairs, [min-max]) and writes the raw results as
bench/results/<model>-<UTC time>.json, a plot beside it (.png, needs matplotlib) and the
server and client logs in a folder of the same name. With --pool it measures nothing and
prints the same table over the pairs of earlier result files together.

The parts, in scripts/bench/: run.py (servers and measurements), client.py (the child process that
drives vLLM's benchmark client), stats.py (ratios, medians, intervals) and
report.py (the table and the plot).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from datetime import datetime, timezone
from pathlib import Path

from scripts.bench.hops import HOPS
from scripts.bench.report import plot, summary_table
from scripts.bench.run import (
    ROOT, autogroup_enabled, autogroup_warning, catalog_entry, measure_pairs, plain_sides, served_weights, versions,
    vllm_command_line,
)
from scripts.bench.stats import SEED, pooled_runs, summarize

PEERS_CONCURRENCY = [8, 32]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny-dev", help="a folder of models/ (default: tiny-dev)")
    parser.add_argument("--runs", type=int, default=3, help="vLLM/Bento pairs of server starts (default: 3)")
    parser.add_argument("--concurrency", type=int, nargs="+", help="(default: 1 8 32; with --peers 8 32)")
    parser.add_argument("--num-prompts", type=int, default=64, help="per concurrency, at least 2x it (default: 64)")
    parser.add_argument("--input-len", type=int, default=64, help="prompt tokens (default: 64)")
    parser.add_argument("--output-len", type=int, default=64, help="generated tokens, EOS ignored (default: 64)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results", help="(default: bench/results)")
    parser.add_argument("--gateway", action="store_true",
                        help="measure the model's service alone against it behind a gateway (scripts/bench/gateway.py)")
    parser.add_argument("--peers", action="store_true",
                        help="measure hops in front of one running model service: none, the gateway, LiteLLM's proxy, "
                             "nginx (scripts/bench/peers.py)")
    parser.add_argument("--hops", nargs="+", choices=HOPS, default=list(HOPS),
                        help=f"with --peers: which (default: {' '.join(HOPS)}; direct always)")
    parser.add_argument("--pool", type=Path, nargs="+", metavar="RESULT_JSON",
                        help="measure nothing: summarize the pairs of these earlier result files together")
    args = parser.parse_args(argv)
    if args.concurrency is None:
        args.concurrency = PEERS_CONCURRENCY if args.peers else [1, 8, 32]
    if args.runs < 1 or min(args.concurrency) < 1 or args.num_prompts < 1:
        parser.error("--runs, --concurrency and --num-prompts must be positive")
    return args


def measure(args: argparse.Namespace) -> dict:
    """Every pair of runs of the model, as the record that the result file holds."""
    entry = catalog_entry(args.model)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    work = args.out / f"{entry.name}-{stamp}-logs"
    work.mkdir(parents=True, exist_ok=True)

    vllm_argv = vllm_command_line(entry)
    print(f"vllm side: python -m vllm.entrypoints.openai.api_server {' '.join(vllm_argv)}")
    print(f"bento side: bentoml serve models/{entry.name}")
    print(f"{args.runs} pair(s), concurrency {' '.join(map(str, args.concurrency))}, "
          f"input {args.input_len} / output {args.output_len} tokens; logs in {work}/", flush=True)
    machine = {"cpus": os.cpu_count(), "sched_autogroup_enabled": autogroup_enabled()}
    if machine["sched_autogroup_enabled"]:
        print(autogroup_warning(), flush=True)

    tokenizer = served_weights(vllm_argv)
    runs = measure_pairs(plain_sides(entry, vllm_argv), entry.served_model_name, tokenizer, args, work)
    return {
        "model": entry.name, "served_model_name": entry.served_model_name, "created_utc": stamp,
        "versions": versions(), "machine": machine, "vllm_argv": vllm_argv,
        "settings": {**{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                     "seed": SEED, "temperature": 0, "backend": "openai", "endpoint": "/v1/completions"},
        "runs": runs, "summary": summarize(runs, args.concurrency),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    # SIGTERM unwinds like Ctrl-C: the running server's `with` block stops it and all below it.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.pool:
        model, runs, concurrencies = pooled_runs(args.pool)
        print(summary_table(summarize(runs, concurrencies), model))
        return 0
    if args.gateway:
        from scripts.bench import gateway as bench_gateway

        return bench_gateway.run(args)
    if args.peers:
        from scripts.bench import peers as bench_peers

        return bench_peers.run(args)
    record = measure(args)
    stem = args.out / f"{record['model']}-{record['created_utc']}"
    json_path = Path(f"{stem}.json")
    json_path.write_text(json.dumps(record, indent=2) + "\n")
    print()
    print(summary_table(record["summary"], record["model"]))
    if record["machine"]["sched_autogroup_enabled"]:
        print(autogroup_warning())
    print(f"\nraw results: {json_path}")
    if png := plot(record["runs"], args.concurrency, Path(f"{stem}.png"), record["model"]):
        print(f"plot: {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
