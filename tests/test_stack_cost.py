"""scripts/bench/stack_cost.py on a few requests: the generated service's BentoML layers, each left out once."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys

import pytest
from scripts.bench import stack_cost
from conftest import ROOT


@pytest.mark.serves
def test_stack_cost_measures_every_layer_of_the_generated_service():
    done = subprocess.run(
        [sys.executable, "-m", "scripts.bench.stack_cost", "--model", "tiny-dev", "--requests", "20", "--chunks", "4"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    header, *lines = done.stdout.splitlines()  # BentoML's access log lines are not among them
    assert header.startswith("CPU per request through tiny-dev's service, 4 chunk(s) per response")
    rows = {}
    for line in lines:
        match = re.fullmatch(r"  (.+?) +([0-9.]+) µs  \(([+-][0-9.]+)\)", line)
        assert match, line
        rows[match[1]] = float(match[2])
    # The service as `bentoml serve` builds it: BentoML's own layers and the service's API-key check.
    for layer in ("RunnerTrafficMetricsMiddleware", "AccessLogMiddleware", "TimeoutMiddleware",
                  "ContextMiddleware", "APIKeyMiddleware"):
        assert f"without {layer}" in rows, done.stdout
    assert list(rows)[0] == "all layers" and list(rows)[-2:] == ["without all of them", "the stand-in app alone"]
    assert all(micros > 0 for micros in rows.values()), rows


def test_stack_cost_refuses_to_time_requests_the_stand_in_did_not_answer():
    async def not_found(scope, receive, send) -> None:
        await send({"type": "http.response.start", "status": 404, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    with pytest.raises(RuntimeError, match=r"HTTP statuses \[404\]"):
        asyncio.run(stack_cost.cpu_per_request(not_found, requests=3))
