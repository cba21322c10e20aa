"""The statistics of `make bench`: ratios of two sides per pair of runs, their medians and spread.

The sides are named by the mode: plain vLLM and the Bento (SIDES), a model's service and
the same service behind a gateway (bench_gateway.SIDES), or `direct` and each hop in front of it
(peers_stats); each ratio is the second over the first.

Pure functions over the runs that `bench_run.measure_side` returns (or that earlier result
files hold); nothing here starts a server or reads a clock.
"""

from __future__ import annotations

import json
import random
import statistics
import typing as t
from pathlib import Path

SIDES = ("vllm", "bento")  # measured in this order within each pair: the base, then the other
SEED = 0
# The benchmark client's metrics that the summary compares, and how they are printed.
METRICS = {
    "output_throughput": "output tok/s",
    "median_ttft_ms": "TTFT p50",
    "p99_ttft_ms": "TTFT p99",
    "median_tpot_ms": "TPOT p50",
    "server_cpu_s": "server CPU s",
}


def stalled_streams(itls: list[list[float]]) -> int:
    """Streams whose tokens all reached the client in one read (every gap under 0.2 ms, well
    below the engine's fastest step here, about 0.9 ms for one stream).

    With kernel autogroup scheduling (see `bench_run.autogroup_warning`) the client can wait
    for a CPU until the server's burst of work is over; its replies then arrive whole, and
    TTFT measures the machine rather than the server. The count per run shows how much of a
    run that was, on either side.
    """
    return sum(1 for gaps in itls if len(gaps) > 1 and max(gaps) < 0.0002)


def pairs(runs: list[dict], sides: tuple[str, str] = SIDES) -> list[tuple[dict, dict]]:
    """(base run, other run) of each pair, in the order of the pairs."""
    base, other = ([r for r in sorted(runs, key=lambda r: r["pair"]) if r["side"] == side] for side in sides)
    return list(zip(base, other))


def spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "values": values}


def median_interval(values: list[float], level: float = 0.9, draws: int = 2000) -> tuple[float, float]:
    """Bootstrap interval of the median: where the median could land with other pairs drawn
    from the same machine (pairs resampled with replacement, fixed seed)."""
    rng = random.Random(SEED)
    medians = sorted(statistics.median(rng.choices(values, k=len(values))) for _ in range(draws))
    cut = int(draws * (1 - level) / 2)
    return medians[cut], medians[-cut - 1]


def ratio(other: float, base: float) -> float:
    return other / base if base else float("nan")


def ratios_key(sides: tuple[str, str] = SIDES) -> str:
    """Where the summary keeps its ratios: "ratios_bento_over_vllm" for the plain mode."""
    return f"ratios_{sides[1]}_over_{sides[0]}"


def summarize(runs: list[dict], concurrencies: list[int], sides: tuple[str, str] = SIDES,
              metrics: t.Iterable[str] = METRICS) -> dict:
    """The second side over the first (Bento / vLLM) per pair, then median and min-max over the pairs.
    Runs without a cold start (the peers mode's hops, started in front of a running service) get
    no cold-start rows."""
    both = pairs(runs, sides)
    per_concurrency = {}
    for c in map(str, concurrencies):
        row = {m: spread([ratio(b["results"][c][m], v["results"][c][m]) for v, b in both]) for m in metrics}
        row["ttft_p50_delta_ms"] = spread([b["results"][c]["median_ttft_ms"] - v["results"][c]["median_ttft_ms"]
                                           for v, b in both])
        if "output_throughput" in row:
            row["output_throughput"]["interval90"] = median_interval(row["output_throughput"]["values"])
        if all("ttft_outside_engine_ms" in r["results"][c] for r in runs):  # not in results of older versions
            row["ttft_outside_engine_delta_ms"] = spread([
                b["results"][c]["ttft_outside_engine_ms"] - v["results"][c]["ttft_outside_engine_ms"] for v, b in both])
        row["stalled_streams"] = {side: [r["results"][c]["stalled_streams"] for r in runs if r["side"] == side]
                                  for side in sides}
        per_concurrency[c] = row
    return {
        "pairs": len(both),
        ratios_key(sides): per_concurrency,
        **({"cold_start_ratio": spread([ratio(b["cold_start_s"], v["cold_start_s"]) for v, b in both]),
            "cold_start_s": {side: spread([r["cold_start_s"] for r in runs if r["side"] == side]) for side in sides}}
           if all("cold_start_s" in r for r in runs) else {}),
        **({"ready_ratio": spread([ratio(b["ready_s"], v["ready_s"]) for v, b in both]),
            "ready_s": {side: spread([r["ready_s"] for r in runs if r["side"] == side]) for side in sides}}
           if all("ready_s" in r for r in runs) else {}),  # not in results of older versions
    }


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
