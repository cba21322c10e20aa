"""scripts/bench/stream_floor.py, the floor under the gateway's router: its plain-uvicorn side, briefly."""

from __future__ import annotations

import pytest

from scripts.bench import stream_floor as bench_stream_floor


@pytest.mark.serves
def test_every_stream_delivers_all_its_events_at_the_apps_pace(tmp_path):
    row = bench_stream_floor.measure("uvicorn", bench_stream_floor.write_folder(tmp_path), concurrency=2, seconds=1.5)
    assert row["events"] > 0 and row["events"] % bench_stream_floor.EVENTS_PER_REQUEST == 0
    assert row["events_per_s"] <= 2 * 500 * 1.05  # one event per 2 ms per stream, at most
    assert row["cpu_us_per_event"] > 0
