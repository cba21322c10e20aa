"""`make bench BENCH_ARGS=--peers`: the hops' configs, the statistics and report on fixed runs, and one
small run of every hop in front of a served tiny-dev."""

from __future__ import annotations

import http.server
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import threading
import time

import psutil
import pytest
import yaml

from conftest import ROOT
from scripts.bench import cli as bench_cli
from scripts.bench import client as bench_client
from scripts.bench import hops as bench_hops
from scripts.bench import peers as bench_peers
from scripts.bench import peers_report, peers_stats, report
from scripts.serving.process import ServerProcess, bento_http_server, end_all
from test_bench import run_to_end

NGINX_MISSING = "nginx is not installed: `make nginx` installs it"
LITELLM_MISSING = ".litellm-env is missing: `make litellm-env` makes it"


# --- configs ---------------------------------------------------------------------------------


@pytest.mark.skipif(bench_hops.nginx_program() is None, reason=NGINX_MISSING)
def test_nginx_config_passes_nginx_own_check(tmp_path):
    config = tmp_path / "nginx.conf"
    config.write_text(bench_hops.nginx_config(18080, "127.0.0.1:3000", tmp_path))
    done = subprocess.run([bench_hops.nginx_program(), "-t", "-p", str(tmp_path), "-e", str(tmp_path / "err.log"),
                           "-c", str(config)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "syntax is ok" in done.stderr and "test is successful" in done.stderr


def test_nginx_config_is_one_unbuffered_keepalive_worker_on_loopback(tmp_path):
    text = bench_hops.nginx_config(18080, "127.0.0.1:3000", tmp_path)
    for line in ("daemon off;", "worker_processes 1;", "access_log off;", "listen 127.0.0.1:18080;",
                 "server 127.0.0.1:3000;", "keepalive 64;", "proxy_http_version 1.1;", 'proxy_set_header Connection "";',
                 "proxy_buffering off;", f"pid {tmp_path}/nginx.pid;"):
        assert line in text, line
    paths = [line.split()[1].rstrip(";") for line in text.splitlines() if "_temp_path" in line or "error_log" in line]
    assert len(paths) == 6 and all(path.startswith(str(tmp_path)) for path in paths)


def test_litellm_config_names_the_model_at_the_service_with_logging_and_spend_logs_off():
    config = yaml.safe_load(bench_hops.litellm_config("tiny-dev", "http://127.0.0.1:3000/v1"))
    (model,) = config["model_list"]
    assert model["model_name"] == "tiny-dev"
    assert model["litellm_params"]["model"] == "text-completion-openai/tiny-dev"
    assert model["litellm_params"]["api_base"] == "http://127.0.0.1:3000/v1"
    settings, general = config["litellm_settings"], config["general_settings"]
    assert settings["callbacks"] == settings["success_callback"] == settings["failure_callback"] == []
    assert general["disable_spend_logs"] is True and general["disable_error_logs"] is True
    assert "database_url" not in general and "master_key" not in general


def test_gateway_hop_is_bentoml_standalone_server_with_the_model_service_as_remote_dependency(tmp_path, monkeypatch):
    monkeypatch.delenv("LLM_BENTOS_NO_SERVERS", raising=False)
    server = bento_http_server(tmp_path, 18081, {"tiny-dev": "http://127.0.0.1:3000"})
    assert server.command[1:4] == ["-m", "bentoml_cli._internal.start", "start-http-server"]
    assert server.command[4:7] == [str(tmp_path), "--depends", "tiny-dev=http://127.0.0.1:3000"]
    assert server.command[-4:] == ["--host", "127.0.0.1", "--port", "18081"] and server.ready_path == "/readyz"
    # The installed BentoML has that command, and its --depends option.
    done = subprocess.run([sys.executable, *server.command[1:4], "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "--depends" in done.stdout, done.stderr[-2000:]


def process_tree(children: list[list[str]]) -> ServerProcess:
    """A started ServerProcess stand-in: a Python process that runs these commands as its children."""
    server = ServerProcess(["unused"], port=0, ready_path="/")
    starter = "import json, subprocess, sys; [p.wait() for p in [subprocess.Popen(c) for c in json.loads(sys.argv[1])]]"
    server.process = subprocess.Popen([sys.executable, "-c", starter, json.dumps(children)])
    deadline = time.monotonic() + 30
    while len(server.descendants()) < len(children) and time.monotonic() < deadline:
        time.sleep(0.05)
    return server


def test_gateway_hop_is_one_bentoml_worker_and_refused_when_its_server_started_an_engine(tmp_path):
    engine = tmp_path / "VLLM::EngineCore"  # the name vLLM gives its engine process
    shutil.copy("/bin/sleep", engine)
    worker = [sys.executable, "-c", "import time; time.sleep(60)", "_bentoml_impl.worker.service"]
    alone, with_engine = process_tree([worker]), process_tree([worker, [str(engine), "60"]])
    try:
        assert [p.pid for p in bench_hops.gateway_workers(alone)] == [alone.descendants()[0].pid]
        with pytest.raises(RuntimeError, match=r"one worker and no engine; found 1 worker\(s\) and engine processes \[\d+\]"):
            bench_hops.gateway_workers(with_engine)
    finally:
        for server in (alone, with_engine):
            end_all([psutil.Process(server.process.pid), *server.descendants()], grace=5)


def test_a_hop_whose_program_is_missing_is_refused_before_anything_starts(monkeypatch):
    monkeypatch.setattr(bench_hops, "LITELLM", ROOT / "no-such-env" / "bin" / "litellm")
    monkeypatch.setenv("LLM_BENTOS_NO_SERVERS", "1")  # a server started by mistake would raise another error
    with pytest.raises(SystemExit) as refused:
        bench_peers.run(bench_cli.parse_args(["--peers", "--hops", "direct", "litellm", "--runs", "1"]))
    assert str(refused.value) == "--hops litellm: not installed, `make litellm-env` installs it"


def test_direct_is_always_measured_first_and_peers_default_to_concurrency_8_and_32(monkeypatch):
    args = bench_cli.parse_args(["--peers", "--hops", "nginx", "gateway"])
    assert args.concurrency == [8, 32]
    assert bench_cli.parse_args([]).concurrency == [1, 8, 32]
    monkeypatch.setattr(bench_hops, "installs", lambda: {})  # as if every program were installed
    assert bench_peers.hop_names(args) == ["direct", "nginx", "gateway"]


def test_engine_counters_are_read_from_the_url_given(tmp_path):
    metrics = ("# TYPE vllm:time_to_first_token_seconds histogram\n"
               'vllm:time_to_first_token_seconds_sum{model_name="m"} 0.25\n'
               'vllm:time_to_first_token_seconds_count{model_name="m"} 5.0\n'
               "# TYPE vllm:generation_tokens counter\n"
               'vllm:generation_tokens_total{model_name="m"} 320.0\n')

    class Metrics(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if self.path == "/metrics" else 404)
            self.end_headers()
            self.wfile.write(metrics.encode())

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Metrics)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        totals = bench_client.engine_totals(f"http://127.0.0.1:{server.server_port}")
    finally:
        server.shutdown()
    assert totals == {"engine_ttft_sum_s": 0.25, "engine_ttft_count": 5.0, "engine_generation_tokens": 320.0}
    args, _ = bench_client.parse_args(["--warmups", "1", "--metrics-url", "http://m:1", "--counters-out", "c.json",
                                       "--", "--port", "2"])
    assert args.metrics_url == "http://m:1" and args.serving_pid == []


# --- statistics and report on fixed runs -----------------------------------------------------


def result(tok_s: float, ttft: float, tpot_ms: float, cpu_s: float, counted_tokens: int = 512) -> dict:
    """8 requests of 64 tokens each (512 made by the engine) in 512 / tok_s seconds; the client's own
    count (a proxy that merges chunks) may differ."""
    latency = (ttft + 63 * tpot_ms) / 1000
    return {"completed": 8, "duration": 512 / tok_s, "engine_output_tokens": 512, "total_output_tokens": counted_tokens,
            "output_throughput": counted_tokens * tok_s / 512, "median_ttft_ms": ttft, "p99_ttft_ms": 2 * ttft,
            "median_tpot_ms": 99.0, "latencies": [latency] * 8, "ttfts": [ttft / 1000] * 8, "server_cpu_s": cpu_s,
            "ttft_outside_engine_ms": ttft / 10, "stalled_streams": 0}


def fixed_runs() -> list[dict]:
    numbers = {  # hop: per pair (tok/s, TTFT p50 ms, TPOT ms, hop CPU s)
        "direct": [(1000, 40, 4.0, 0.0), (1100, 38, 4.0, 0.0)],
        "gateway": [(900, 44, 4.4, 0.0512), (990, 40, 4.2, 0.0256)],
        "litellm": [(500, 80, 6.0, 0.512), (550, 76, 6.0, 0.256)],
        "nginx": [(1000, 40, 4.0, 0.00512), (1100, 38, 4.0, 0.00512)],
    }
    return [{"side": hop, "pair": pair, "ready_s": 1.0, "hop_processes": 1,
             "results": {"8": result(*values, counted_tokens=700 if hop == "litellm" else 512)}}
            for hop, per_pair in numbers.items() for pair, values in enumerate(per_pair, 1)]


def test_each_hop_is_compared_with_direct_per_pair_from_the_engine_token_count():
    summary = peers_stats.summarize_peers(fixed_runs(), [8], list(bench_hops.HOPS))
    assert summary["pairs"] == 2 and list(summary["hops"]) == ["gateway", "litellm", "nginx"]
    gateway = summary["hops"]["gateway"]["ratios_gateway_over_direct"]["8"]
    assert gateway["engine_output_throughput"]["values"] == pytest.approx([0.9, 0.9])
    assert gateway["ttft_p50_delta_ms"]["values"] == pytest.approx([4.0, 2.0])
    assert gateway["engine_tpot_p50_ms"]["values"] == pytest.approx([1.1, 1.05])
    assert gateway["ttft_outside_engine_delta_ms"]["median"] == pytest.approx(0.3)
    # LiteLLM's client-side count (700 tokens) is not the engine's (512): the ratios use the engine's.
    litellm = summary["hops"]["litellm"]["ratios_litellm_over_direct"]["8"]
    assert litellm["engine_output_throughput"]["values"] == pytest.approx([0.5, 0.5])
    assert litellm["engine_tpot_p50_ms"]["median"] == pytest.approx(1.5)
    assert "cold_start_ratio" not in summary["hops"]["gateway"]


def test_hop_cpu_is_per_engine_token_in_microseconds_and_as_a_ratio_to_nginx():
    summary = peers_stats.summarize_peers(fixed_runs(), [8], list(bench_hops.HOPS))
    cpu = {hop: summary["hops"][hop]["hop_cpu"]["8"] for hop in ("gateway", "litellm", "nginx")}
    assert cpu["gateway"]["us_per_token"]["values"] == pytest.approx([100.0, 50.0])
    assert cpu["litellm"]["us_per_token"]["median"] == pytest.approx(750.0)
    assert cpu["nginx"]["us_per_token"]["values"] == pytest.approx([10.0, 10.0]) and "over_nginx" not in cpu["nginx"]
    assert cpu["gateway"]["over_nginx"]["values"] == pytest.approx([10.0, 5.0])
    assert cpu["litellm"]["over_nginx"]["values"] == pytest.approx([100.0, 50.0])
    without_nginx = peers_stats.summarize_peers([r for r in fixed_runs() if r["side"] != "nginx"], [8],
                                                ["direct", "gateway", "litellm"])
    assert "over_nginx" not in without_nginx["hops"]["gateway"]["hop_cpu"]["8"]


def test_peers_table_has_a_line_per_hop_and_concurrency():
    table = peers_report.peers_table(peers_stats.summarize_peers(fixed_runs(), [8], list(bench_hops.HOPS)), "tiny-dev")
    assert "each hop / direct for tiny-dev: median over 2 pair(s)" in table
    lines = {line.split()[0]: line for line in table.splitlines()[2:]}
    assert list(lines) == ["gateway", "LiteLLM", "nginx"]
    assert "0.90 [0.90 – 0.90]" in lines["gateway"] and "+3.0 [+2.0 – +4.0]" in lines["gateway"]
    assert "75.0 [50.0 – 100.0]" in lines["gateway"] and "7.50 [5.00 – 10.00]" in lines["gateway"]
    assert "750.0 [500.0 – 1000.0]" in lines["LiteLLM"] and lines["nginx"].rstrip().endswith("-")


def test_peers_plot_shows_every_hop(tmp_path):
    pytest.importorskip("matplotlib")
    runs = peers_stats.engine_counted_runs(fixed_runs())
    assert "hop_cpu_us_per_token" not in runs[0]["results"]["8"]  # direct has no hop CPU to plot
    png = report.plot(runs, [8], tmp_path / "peers.png", "tiny-dev", bench_hops.HOPS, peers_report.PEER_PANELS)
    assert png == tmp_path / "peers.png" and png.stat().st_size > 0


# --- end to end ------------------------------------------------------------------------------


@pytest.mark.serves
def test_small_peers_run_measures_every_hop_in_front_of_one_model_service(tmp_path, bentoml_home):
    if bench_hops.nginx_program() is None:
        pytest.skip(NGINX_MISSING)
    if not bench_hops.LITELLM.is_file():
        pytest.skip(LITELLM_MISSING)
    out = tmp_path / "results"
    done = run_to_end([sys.executable, "-m", "scripts.bench", "--peers", "--model", "tiny-dev", "--runs", "1",
                       "--concurrency", "2", "--num-prompts", "4", "--input-len", "8", "--output-len", "8",
                       "--out", str(out)], env={**os.environ, "BENTOML_HOME": bentoml_home}, timeout=1500)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "each hop / direct for tiny-dev" in done.stdout
    assert done.stdout.count("model service: bentoml serve models/tiny-dev, ready") == 1  # started once

    (result_path,) = out.glob("tiny-dev-peers-*.json")
    record = json.loads(result_path.read_text())
    assert [(r["side"], r["pair"]) for r in record["runs"]] == [(h, 1) for h in bench_hops.HOPS]
    processes = {r["side"]: r["hop_processes"] for r in record["runs"]}
    assert processes == {"direct": 0, "gateway": 1, "litellm": processes["litellm"], "nginx": 2}  # nginx: master, worker
    assert processes["litellm"] >= 1
    for run in record["runs"]:
        result = run["results"]["2"]
        assert result["completed"] == 4 and result["failed"] == 0, run["side"]
        # Every request reached the one model service: its engine counted them and their tokens.
        assert result["engine_ttft_requests"] == 4 and result["engine_output_tokens"] == 4 * 8, run["side"]
        assert result["server_cpu_s"] >= 0
    cpu = {r["side"]: r["results"]["2"]["server_cpu_s"] for r in record["runs"]}
    assert cpu["direct"] == 0 and cpu["gateway"] > 0 and cpu["litellm"] > 0  # nginx may spend under a clock tick here
    hops = record["summary"]["hops"]
    assert set(hops) == {"gateway", "litellm", "nginx"}
    assert all(hops[h]["hop_cpu"]["2"]["us_per_token"]["median"] > 0 for h in ("gateway", "litellm"))
    assert all("ttft_outside_engine_delta_ms" in hops[h]["ratios_" + h + "_over_direct"]["2"] for h in hops)
    logs = result_path.with_name(result_path.stem + "-logs")
    assert (logs / "nginx-1" / "nginx.conf").is_file() and (logs / "litellm-1" / "litellm.yaml").is_file()
    png = result_path.with_suffix(".png")
    assert png.is_file() if importlib.util.find_spec("matplotlib") else not png.exists()
