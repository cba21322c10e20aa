"""`make bench` end to end on a very small load: both servers, the table, the JSON, the plot."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import bench
import pytest
from conftest import ROOT


def test_small_benchmark_compares_both_sides(tmp_path):
    out = tmp_path / "results"
    env = {**os.environ, "BENTOML_HOME": str(tmp_path / "bentoml-home")}  # bench.py imports the tiny model here
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench.py"), "--model", "tiny-dev", "--runs", "1",
         "--concurrency", "2", "--num-prompts", "4", "--output-len", "8", "--out", str(out)],
        env=env, capture_output=True, text=True, timeout=900,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    assert "Bento / vLLM for tiny-dev" in done.stdout and "cold start" in done.stdout
    row = next(line for line in done.stdout.splitlines() if line.split()[:1] == ["2"])
    assert row.count("[") == 6, row  # tok/s, TTFT p50, TTFT p99, TPOT p50, server CPU, TTFT p50 delta

    (result_path,) = out.glob("tiny-dev-*.json")
    record = json.loads(result_path.read_text())
    assert [(r["side"], r["pair"]) for r in record["runs"]] == [("vllm", 1), ("bento", 1)]
    for run in record["runs"]:
        assert run["cold_start_s"] > 0
        result = run["results"]["2"]
        assert result["completed"] == 4 and result["failed"] == 0
        assert result["total_output_tokens"] == 4 * 8  # ignore_eos: every request ran to --output-len
        assert all(result[m] > 0 for m in ("output_throughput", "median_ttft_ms", "p99_ttft_ms", "median_tpot_ms", "server_cpu_s"))
        assert 0 <= result["stalled_streams"] <= 4 and "itls" not in result
        assert result["engine_ttft_requests"] == 4 + 2  # read from vLLM's /metrics: the requests and 2 warm-ups
        assert abs(result["ttft_outside_engine_ms"]) < result["mean_ttft_ms"]
    autogroup = bench.autogroup_enabled()
    assert record["machine"] == {"cpus": os.cpu_count(), "sched_autogroup_enabled": autogroup}
    assert (bench.autogroup_warning() in done.stdout) == bool(autogroup)
    assert record["vllm_argv"][:2] == ["--model", str(tmp_path / "bentoml-home" / "models" / "llm-bentos-tiny-dev" / "v2")]
    summary = record["summary"]["ratios_bento_over_vllm"]["2"]
    assert summary["output_throughput"]["median"] > 0
    stalled = {side: [r["results"]["2"]["stalled_streams"] for r in record["runs"] if r["side"] == side]
               for side in ("vllm", "bento")}
    assert summary["stalled_streams"] == stalled
    assert f"vLLM {stalled['vllm']}  Bento {stalled['bento']}" in done.stdout
    assert summary["output_throughput"]["interval90"] == [summary["output_throughput"]["median"]] * 2  # one pair
    outside = [r["results"]["2"]["ttft_outside_engine_ms"] for r in record["runs"]]
    assert summary["ttft_outside_engine_delta_ms"]["median"] == pytest.approx(outside[1] - outside[0])
    assert "mean TTFT outside vLLM's engine" in done.stdout

    # --pool: the same file twice is two pairs with the same ratios, and the same table.
    pooled = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench.py"), "--pool", str(result_path), str(result_path)],
                            capture_output=True, text=True, timeout=120)
    assert pooled.returncode == 0, pooled.stderr[-3000:]
    assert "Bento / vLLM for tiny-dev: median over 2 pair(s)" in pooled.stdout
    pooled_row = next(line for line in pooled.stdout.splitlines() if line.split()[:1] == ["2"])
    assert pooled_row == row

    png = result_path.with_name(result_path.stem + ".png")
    if importlib.util.find_spec("matplotlib"):
        assert png.is_file() and png.stat().st_size > 0
    else:
        assert "plot skipped: matplotlib is not installed" in done.stdout and not png.exists()


def test_stalled_streams_are_those_whose_tokens_all_came_in_one_read():
    stalled_streams = bench.stalled_streams

    streamed = [0.0009, 0.0012, 0.0009]  # one stream alone: a token every engine step
    piled_up = [0.00005, 0.00002, 0.00015]
    one_late_gap = [0.00005, 0.0009, 0.00005]
    single_token = [0.0001]  # a reply of two tokens says nothing about streaming
    assert stalled_streams([streamed, piled_up, one_late_gap, single_token, piled_up]) == 2
    assert stalled_streams([]) == 0


def test_autogroup_setting_is_read_from_the_kernel(tmp_path, monkeypatch):
    setting = tmp_path / "sched_autogroup_enabled"
    monkeypatch.setattr(bench, "AUTOGROUP_SETTING", setting)
    assert bench.autogroup_enabled() is None  # no such setting in this kernel
    setting.write_text("1\n")
    assert bench.autogroup_enabled() is True
    setting.write_text("0\n")
    assert bench.autogroup_enabled() is False


def test_median_interval_brackets_the_median_and_is_repeatable():
    values = [0.8, 0.9, 1.0, 1.1, 1.2] * 4
    low, high = bench.median_interval(values)
    assert 0.8 <= low < 1.0 < high <= 1.2
    assert bench.median_interval(values) == (low, high)  # fixed seed: the same table every time
    assert bench.median_interval(values * 25) == (1.0, 1.0)  # 500 pairs: the median hardly moves
