"""The statistics of `make bench BENCH_ARGS=--peers`: each hop against `direct`, per pair, and the
hop's own CPU per output token.

Tokens are counted by the model service's engine (vLLM's generation-token counter around the
measured requests), not by the client: LiteLLM's proxy merges some chunks and its final usage chunk
has a choice, so vLLM's benchmark client re-tokenizes its text and miscounts (32 tokens made, 48
counted, in one try here). Output throughput is the engine's tokens over the client's run, TPOT p50
the median over requests of (latency - TTFT) / (tokens per request - 1), the same for every hop.

Pure functions over the runs that peers.measure_hop returns; nothing here starts a server.
"""

from __future__ import annotations

import statistics

from scripts.bench.stats import pairs, ratio, spread, summarize

BASE = "direct"
CPU_BASE = "nginx"  # the hop whose CPU per token the others are compared with
# What the table compares with `direct`, and how it is printed.
PEER_METRICS = {"engine_output_throughput": "output tok/s", "median_ttft_ms": "TTFT p50", "p99_ttft_ms": "TTFT p99",
                "engine_tpot_p50_ms": "TPOT p50"}


def engine_counted(result: dict, hop: bool) -> dict:
    """The result with throughput, TPOT and (for a hop, not direct) the hop's CPU per token from the
    engine's token count."""
    tokens, completed = result["engine_output_tokens"], result["completed"]
    per_request = tokens / completed
    tpots = [(latency - ttft) / (per_request - 1) for latency, ttft in zip(result["latencies"], result["ttfts"])]
    counted = {**result, "engine_output_throughput": tokens / result["duration"],
               "engine_tpot_p50_ms": 1000 * statistics.median(tpots) if per_request > 1 else float("nan")}
    return {**counted, "hop_cpu_us_per_token": 1e6 * result["server_cpu_s"] / tokens} if hop else counted


def engine_counted_runs(runs: list[dict]) -> list[dict]:
    return [{**run, "results": {c: engine_counted(r, run["side"] != BASE) for c, r in run["results"].items()}}
            for run in runs]


def hop_cpu(runs: list[dict], concurrencies: list[int], hop: str, hops: list[str]) -> dict:
    """The hop's own CPU per output token (µs), and per pair its ratio to nginx's where nginx was measured."""
    own = [r for r in sorted(runs, key=lambda r: r["pair"]) if r["side"] == hop]
    rows = {}
    for c in map(str, concurrencies):
        row = {"us_per_token": spread([r["results"][c]["hop_cpu_us_per_token"] for r in own])}
        if CPU_BASE in hops and hop != CPU_BASE:
            row[f"over_{CPU_BASE}"] = spread([ratio(h["results"][c]["hop_cpu_us_per_token"], n["results"][c]["hop_cpu_us_per_token"])
                                              for n, h in pairs(runs, (CPU_BASE, hop))])
        rows[c] = row
    return rows


def summarize_peers(runs: list[dict], concurrencies: list[int], hops: list[str]) -> dict:
    """Per hop but direct: its ratios to direct per pair (bench_stats.summarize), and its own CPU."""
    counted = engine_counted_runs(runs)
    return {
        "pairs": len({r["pair"] for r in runs}),
        "hops": {hop: {**summarize(counted, concurrencies, (BASE, hop), PEER_METRICS),
                       "hop_cpu": hop_cpu(counted, concurrencies, hop, hops)}
                 for hop in hops if hop != BASE},
    }
