"""`make bench` end to end on a very small load: both servers, the table, the JSON, the plot."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

from scripts.bench import client as bench_client
from scripts.bench import run as bench_run
from scripts.bench import stats as bench_stats
import pytest
from conftest import ROOT


def run_to_end(command: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    """Run the benchmark; past the timeout, SIGTERM it so that it stops the server it runs."""
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.terminate()
        stdout, stderr = process.communicate(timeout=120)
        pytest.fail(f"the benchmark ran over {timeout:.0f}s:\n{stdout[-3000:]}\n{stderr[-3000:]}")
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


@pytest.mark.serves
def test_small_benchmark_compares_both_sides(tmp_path):
    out = tmp_path / "results"
    env = {**os.environ, "BENTOML_HOME": str(tmp_path / "bentoml-home")}  # bench.py imports the tiny model here
    done = run_to_end([sys.executable, "-m", "scripts.bench", "--model", "tiny-dev", "--runs", "1",
                       "--concurrency", "2", "--num-prompts", "4", "--output-len", "8", "--out", str(out)],
                      env=env, timeout=1500)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    assert "Bento / vLLM for tiny-dev" in done.stdout and "cold start" in done.stdout
    assert "process start to the ready route's first 200" in done.stdout
    row = next(line for line in done.stdout.splitlines() if line.split()[:1] == ["2"])
    assert row.count("[") == 6, row  # tok/s, TTFT p50, TTFT p99, TPOT p50, server CPU, TTFT p50 delta

    (result_path,) = out.glob("tiny-dev-*.json")
    record = json.loads(result_path.read_text())
    assert [(r["side"], r["pair"]) for r in record["runs"]] == [("vllm", 1), ("bento", 1)]
    for run in record["runs"]:
        assert 0 < run["ready_s"] < run["cold_start_s"]
        result = run["results"]["2"]
        assert result["completed"] == 4 and result["failed"] == 0
        assert result["total_output_tokens"] == 4 * 8  # ignore_eos: every request ran to --output-len
        assert all(result[m] > 0 for m in ("output_throughput", "median_ttft_ms", "p99_ttft_ms", "median_tpot_ms", "server_cpu_s"))
        assert 0 <= result["stalled_streams"] <= 4 and "itls" not in result
        # Read from vLLM's /metrics around the measured requests: the 2 warm-ups are not counted.
        assert result["engine_ttft_requests"] == result["completed"] == 4
        assert abs(result["ttft_outside_engine_ms"]) < result["mean_ttft_ms"]
    autogroup = bench_run.autogroup_enabled()
    assert record["machine"] == {"cpus": os.cpu_count(), "sched_autogroup_enabled": autogroup}
    assert (bench_run.autogroup_warning() in done.stdout) == bool(autogroup)
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
    pooled = subprocess.run([sys.executable, "-m", "scripts.bench", "--pool", str(result_path), str(result_path)],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
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
    stalled_streams = bench_stats.stalled_streams

    streamed = [0.0009, 0.0012, 0.0009]  # one stream alone: a token every engine step
    piled_up = [0.00005, 0.00002, 0.00015]
    one_late_gap = [0.00005, 0.0009, 0.00005]
    single_token = [0.0001]  # a reply of two tokens says nothing about streaming
    assert stalled_streams([streamed, piled_up, one_late_gap, single_token, piled_up]) == 2
    assert stalled_streams([]) == 0


def test_autogroup_setting_is_read_from_the_kernel(tmp_path, monkeypatch):
    setting = tmp_path / "sched_autogroup_enabled"
    monkeypatch.setattr(bench_run, "AUTOGROUP_SETTING", setting)
    assert bench_run.autogroup_enabled() is None  # no such setting in this kernel
    setting.write_text("1\n")
    assert bench_run.autogroup_enabled() is True
    setting.write_text("0\n")
    assert bench_run.autogroup_enabled() is False


def test_median_interval_brackets_the_median_and_is_repeatable():
    values = [0.8, 0.9, 1.0, 1.1, 1.2] * 4
    low, high = bench_stats.median_interval(values)
    assert 0.8 <= low < 1.0 < high <= 1.2
    assert bench_stats.median_interval(values) == (low, high)  # fixed seed: the same table every time
    assert bench_stats.median_interval(values * 25) == (1.0, 1.0)  # 500 pairs: the median hardly moves


def test_warmup_draws_other_prompts_and_saves_nothing():
    measured = bench_client.vllm_bench_args([
        "--model", "m", "--dataset-name", "random", "--seed", "0", "--num-prompts", "64", "--max-concurrency", "8",
        "--save-result", "--save-detailed", "--result-dir", "/tmp/x", "--result-filename", "r.json"])
    warmup = bench_client.warmup_args(measured, 8)
    assert (warmup.num_prompts, warmup.seed, warmup.max_concurrency) == (8, 1, 8)
    assert not warmup.save_result and not warmup.save_detailed
    assert (measured.num_prompts, measured.seed, measured.save_result) == (64, 0, True)  # left as it was


def test_ttft_outside_engine_is_client_mean_minus_engine_mean_over_the_measured_requests():
    result = {"mean_ttft_ms": 50.0}
    counters = {"engine_ttft_sum_s": 0.16, "engine_ttft_count": 4.0, "server_cpu_s": 1.5}
    assert bench_run.with_server_counters(result, counters) == {
        "mean_ttft_ms": 50.0, "server_cpu_s": 1.5, "engine_ttft_requests": 4,
        "ttft_outside_engine_ms": pytest.approx(10.0),
    }


def test_server_without_vllm_metrics_has_no_ttft_outside_engine():
    counters = {"engine_ttft_sum_s": 0.0, "engine_ttft_count": 0.0, "server_cpu_s": 1.5}
    assert bench_run.with_server_counters({"mean_ttft_ms": 50.0}, counters) == {
        "mean_ttft_ms": 50.0, "server_cpu_s": 1.5, "engine_ttft_requests": 0,
    }
