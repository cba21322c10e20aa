"""scripts/cold_start_timeline.py stamps each log line with when it first appeared."""

from __future__ import annotations

import threading
import time

from scripts.bench import cold_start_timeline


def test_log_lines_are_stamped_when_they_appear_and_partial_lines_wait(tmp_path):
    log = tmp_path / "server.log"
    log.write_text("")
    marks: list = []
    stop = threading.Event()
    started = time.monotonic()
    follower = threading.Thread(target=cold_start_timeline.follow, args=(log, started, marks, stop))
    follower.start()
    try:
        with log.open("a") as out:
            out.write("first\n")
            out.flush()
            time.sleep(0.5)
            out.write("second, writ")  # a line still being written is not stamped yet
            out.flush()
            time.sleep(0.5)
            assert [line for _, line in marks] == ["first"]
            out.write("ten in two parts\n")
            out.flush()
            time.sleep(0.5)
    finally:
        stop.set()
        follower.join()
    assert [line for _, line in marks] == ["first", "second, written in two parts"]
    (first_at, _), (second_at, _) = marks
    assert 0 <= first_at < 0.5 and second_at - first_at >= 0.9
