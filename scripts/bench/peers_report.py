"""The table of `make bench BENCH_ARGS=--peers`, printed at the end: each hop against `direct`, and
its own CPU per output token. Reads peers_stats.summarize_peers' summary; measures nothing.
"""

from __future__ import annotations

from scripts.bench.peers_stats import BASE, CPU_BASE
from scripts.bench.report import LABELS, fmt
from scripts.bench.stats import ratios_key

COLUMNS = ("output tok/s", "TTFT p50 Δ ms", "TTFT p99", "TPOT p50", "TTFT outside engine Δ ms",
           "hop CPU µs/token", f"CPU / {LABELS[CPU_BASE]}")
# The plot's panels (report.plot): the engine-counted throughput, TTFT, and the hop's own CPU.
PEER_PANELS = (("engine_output_throughput", "output tokens/s (engine-counted)"), ("median_ttft_ms", "TTFT p50 (ms)"),
               ("hop_cpu_us_per_token", "hop CPU per output token (µs)"))


def cells(name: str, hop: dict, c: str) -> list[str]:
    row, cpu = hop[ratios_key((BASE, name))][c], hop["hop_cpu"][c]
    outside = row.get("ttft_outside_engine_delta_ms")
    return [fmt(row["engine_output_throughput"], ".2f"), fmt(row["ttft_p50_delta_ms"], "+.1f"),
            fmt(row["p99_ttft_ms"], ".2f"), fmt(row["engine_tpot_p50_ms"], ".2f"),
            fmt(outside, "+.1f") if outside else "-", fmt(cpu["us_per_token"], ".1f"),
            fmt(cpu[f"over_{CPU_BASE}"], ".2f") if f"over_{CPU_BASE}" in cpu else "-"]


def peers_table(summary: dict, model: str) -> str:
    """One line per hop and concurrency: ratios to direct (TTFT p50 and outside the engine as ms
    deltas), the hop's CPU per output token, and that as a ratio to nginx's."""
    width = 27
    lines = [f"each hop / direct for {model}: median over {summary['pairs']} pair(s) [min – max]; above 1 means "
             "the hop is higher (better for tok/s, worse for times); hop CPU is the hop's own processes "
             "(direct has none)",
             f"{'hop':>8} {'conc.':>5}  " + "  ".join(f"{name:>{width}}" for name in COLUMNS)]
    for name, hop in summary["hops"].items():
        for c in hop["hop_cpu"]:
            lines.append(f"{LABELS[name]:>8} {c:>5}  " + "  ".join(f"{cell:>{width}}" for cell in cells(name, hop, c)))
    return "\n".join(lines)
