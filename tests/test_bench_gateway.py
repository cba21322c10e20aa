"""The gateway mode of `make bench`: the one-model gateway it serves, and its ratios."""

from __future__ import annotations

from scripts.bench import gateway as bench_gateway
from scripts.bench import report as bench_report
from scripts.bench import stats as bench_stats
import pytest
from scripts.catalog import load_catalog
from conftest import ROOT


def test_gateway_folder_routes_to_the_one_model(tmp_path):
    entry = next(e for e in load_catalog(ROOT / "catalog.yaml") if e.name == "tiny-dev")
    folder = bench_gateway.write_gateway_folder(entry, tmp_path / "gw")
    service = (folder / "service.py").read_text()
    assert "    tiny_dev = bentoml.depends(tiny_dev.VLLM)\n" in service and service.count("bentoml.depends(") == 1
    assert (folder / "tiny_dev.py").read_text() == (ROOT / "models" / "tiny-dev" / "service.py").read_text()


def run(side: str, pair: int, tok_s: float, ttft: float) -> dict:
    metrics = {"output_throughput": tok_s, "median_ttft_ms": ttft, "p99_ttft_ms": 2 * ttft, "median_tpot_ms": 4.0,
               "server_cpu_s": 10.0 if side == "service" else 12.0, "stalled_streams": 0}
    return {"side": side, "pair": pair, "cold_start_s": 50.0, "results": {"8": metrics}}


def test_ratios_are_gateway_over_service_per_pair():
    runs = [run("service", 1, 1000, 40), run("gateway", 1, 980, 41.5), run("service", 2, 1100, 38), run("gateway", 2, 1100, 39)]
    summary = bench_stats.summarize(runs, [8], bench_gateway.SIDES)
    row = summary["ratios_gateway_over_service"]["8"]
    assert row["output_throughput"]["values"] == pytest.approx([0.98, 1.0])
    assert row["ttft_p50_delta_ms"]["values"] == pytest.approx([1.5, 1.0])
    assert row["server_cpu_s"]["median"] == pytest.approx(1.2)
    table = bench_report.summary_table(summary, "tiny-dev", bench_gateway.SIDES)
    assert "gateway / service for tiny-dev: median over 2 pair(s)" in table and "+1.2 [+1.0 – +1.5]" in table


def test_plot_of_a_gateway_run_shows_both_sides(tmp_path):
    pytest.importorskip("matplotlib")
    runs = [run("service", 1, 1000, 40), run("gateway", 1, 980, 41.5)]
    png = bench_report.plot(runs, [8], tmp_path / "gw.png", "tiny-dev", bench_gateway.SIDES)
    assert png == tmp_path / "gw.png" and png.stat().st_size > 0


def test_ready_time_is_a_ratio_of_its_own_and_older_results_without_it_still_summarize():
    runs = [{**run(side, pair, 1000, 40), "ready_s": ready}
            for side, pair, ready in [("service", 1, 40.0), ("gateway", 1, 44.0), ("service", 2, 50.0), ("gateway", 2, 50.0)]]
    summary = bench_stats.summarize(runs, [8], bench_gateway.SIDES)
    assert summary["ready_ratio"]["median"] == pytest.approx((1.1 + 1.0) / 2)
    assert summary["ready_s"]["service"]["median"] == pytest.approx(45.0)
    assert "process start to the ready route's first 200" in bench_report.summary_table(summary, "tiny-dev", bench_gateway.SIDES)
    older = bench_stats.summarize([{k: v for k, v in r.items() if k != "ready_s"} for r in runs], [8], bench_gateway.SIDES)
    assert "ready_ratio" not in older
    assert "first 200" not in bench_report.summary_table(older, "tiny-dev", bench_gateway.SIDES)
