"""The report of `make bench`: the summary table printed at the end, and the plot.

Reads the runs and the summary of `bench_stats`; measures nothing.
"""

from __future__ import annotations

from pathlib import Path

from scripts.bench.stats import METRICS, SIDES, pairs, ratios_key, spread

# How each side is named in the table.
LABELS = {"vllm": "vLLM", "bento": "Bento", "service": "service", "gateway": "gateway", "direct": "direct",
          "litellm": "LiteLLM", "nginx": "nginx"}
# ... and in the plot's legend.
PLOT_LABELS = {"vllm": "plain vLLM", "bento": "Bento", "service": "the model's service alone", "gateway": "through a gateway",
               "direct": "no hop", "litellm": "through LiteLLM's proxy", "nginx": "through nginx"}
# The plot's panels: a metric of the results and its title.
PANELS = (("output_throughput", "output tokens/s"), ("median_ttft_ms", "TTFT p50 (ms)"))


def fmt(s: dict, form: str) -> str:
    return f"{s['median']:{form}} [{s['min']:{form}} – {s['max']:{form}}]"


def key_numbers(result: dict) -> str:
    """One run at one concurrency, as printed while the benchmark goes."""
    return (f"{result['output_throughput']:8.1f} output tok/s, TTFT p50 {result['median_ttft_ms']:7.1f} ms "
            f"p99 {result['p99_ttft_ms']:7.1f} ms, TPOT p50 {result['median_tpot_ms']:6.2f} ms "
            f"({result['completed']} requests in {result['duration']:.1f}s; server CPU {result['server_cpu_s']:.2f}s; "
            f"{result['stalled_streams']} stalled streams)")


def summary_table(summary: dict, model: str, sides: tuple[str, str] = SIDES) -> str:
    """The summary of `bench_stats.summarize(..., sides)`: the second side over the first."""
    base, other = (LABELS[side] for side in sides)
    ratios = summary[ratios_key(sides)]
    columns = [*METRICS.values(), "TTFT p50 Δ ms"]
    lines = [f"{other} / {base} for {model}: median over {summary['pairs']} pair(s) [min – max]; "
             f"above 1 means the {other} is higher (better for tok/s, worse for times)",
             f"{'concurrency':>11}  " + "  ".join(f"{name:>23}" for name in columns)]
    for c, row in ratios.items():
        cells = [fmt(row[m], ".2f") for m in METRICS] + [fmt(row["ttft_p50_delta_ms"], "+.1f")]
        lines.append(f"{c:>11}  " + "  ".join(f"{cell:>23}" for cell in cells))
    lines.append(f"{'':>11}  output tok/s ratio, 90% bootstrap interval of the median over the pairs:")
    for c, row in ratios.items():
        low, high = row["output_throughput"]["interval90"]
        lines.append(f"{c:>11}  {low:.2f} – {high:.2f}")
    outside = {c: row["ttft_outside_engine_delta_ms"] for c, row in ratios.items() if "ttft_outside_engine_delta_ms" in row}
    if outside:
        lines.append(f"{'':>11}  mean TTFT outside vLLM's engine (client TTFT minus vLLM's own), {other} minus {base}, ms:")
        lines += [f"{c:>11}  {fmt(delta, '+.1f')}" for c, delta in outside.items()]
    lines.append(f"{'':>11}  stalled streams per run (all tokens in one read: the client had waited "
                 "for a CPU):")
    for c, row in ratios.items():
        stalled = row["stalled_streams"]
        lines.append(f"{c:>11}  {base} {stalled[sides[0]]}  {other} {stalled[sides[1]]}")
    cold = summary["cold_start_s"]
    lines.append(f"{'cold start':>11}  {fmt(summary['cold_start_ratio'], '.2f'):>23}   "
                 f"({base} {fmt(cold[sides[0]], '.1f')} s, {other} {fmt(cold[sides[1]], '.1f')} s: process start to the first completion)")
    if "ready_ratio" in summary:
        ready = summary["ready_s"]
        lines.append(f"{'ready':>11}  {fmt(summary['ready_ratio'], '.2f'):>23}   "
                     f"({base} {fmt(ready[sides[0]], '.1f')} s, {other} {fmt(ready[sides[1]], '.1f')} s: "
                     "process start to the ready route's first 200)")
    return "\n".join(lines)


def plot(runs: list[dict], concurrencies: list[int], path: Path, model: str, sides: tuple[str, ...] = SIDES,
         panels: tuple[tuple[str, str], ...] = PANELS) -> Path | None:
    """Each panel's metric against concurrency, every side: medians with min-max bars (a side whose
    results lack a panel's metric is left out of that panel)."""
    try:
        import matplotlib
    except ImportError:
        print("plot skipped: matplotlib is not installed in this environment")
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.2))
    for ax, (metric, title) in zip(axes, panels):
        for side in sides:
            own = [r for r in runs if r["side"] == side]
            if not all(metric in r["results"][str(c)] for r in own for c in concurrencies):
                continue
            stats = [spread([r["results"][str(c)][metric] for r in own]) for c in concurrencies]
            medians = [s["median"] for s in stats]
            bars = [[s["median"] - s["min"] for s in stats], [s["max"] - s["median"] for s in stats]]
            ax.errorbar(concurrencies, medians, yerr=bars, marker="o", capsize=4, label=PLOT_LABELS[side])
        ax.set(xscale="log", xlabel="concurrency", title=title)
        ax.set_xticks(concurrencies, [str(c) for c in concurrencies])
        ax.minorticks_off()
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend()
    labels = [PLOT_LABELS[side] for side in sides]
    compared = " vs ".join(reversed(labels)) if len(sides) == 2 else ", ".join(labels)
    fig.suptitle(f"{model}: {compared} (median, min–max over {len(pairs(runs, sides[:2]))} pair(s) of runs)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
