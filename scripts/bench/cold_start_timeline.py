"""Timeline of one server's cold start: every log line stamped with seconds since process start.

`python -m scripts.bench.cold_start_timeline --model tiny-dev --side bento|vllm [--out FILE]`
starts one server (as `make bench` does: scripts/serving/process.py), reads its log as it grows,
and prints each new line with the time it was first seen, the ready route's status changes
and the first completion. Used for issue 29 (docs/performance.md).
"""

from __future__ import annotations

import argparse
import threading
import time
from pathlib import Path

from scripts.bench.run import SERVER_ENV, catalog_entry, first_completion, vllm_command_line
from scripts.serving.process import bento_server, free_port, vllm_server

ROOT = Path(__file__).resolve().parents[2]


def follow(path: Path, started_at: float, marks: list, stop: threading.Event) -> None:
    """Append (seconds since start, line) for every line the log gains, polled every 20 ms."""
    seen = b""
    while not stop.is_set():
        try:
            data = path.read_bytes()
        except OSError:
            data = b""
        if len(data) > len(seen):
            now = time.monotonic() - started_at
            new = data[len(seen):]
            cut = new.rfind(b"\n") + 1
            for line in new[:cut].decode(errors="replace").splitlines():
                marks.append((now, line))
            seen = data[: len(seen) + cut]
        time.sleep(0.02)


def cpu_seconds(server) -> list[str]:
    """User + system CPU seconds so far of the server and each process below it (less noisy than wall time)."""
    import psutil

    lines, total = [], 0.0
    for process in [psutil.Process(server.process.pid), *server.descendants()]:
        try:
            times = process.cpu_times()
            used = times.user + times.system
            name = " ".join(process.cmdline()[:4])[:90] or process.name()
        except psutil.Error:
            continue
        total += used
        lines.append(f"{used:7.2f} s  pid {process.pid}  {name}")
    return [*lines, f"{total:7.2f} s  in all"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny-dev")
    parser.add_argument("--side", choices=("bento", "vllm"), required=True)
    parser.add_argument("--folder", type=Path, default=None, help="serve this folder instead of models/<model> (e.g. an older commit's)")
    parser.add_argument("--log", type=Path, default=None)
    args = parser.parse_args()
    entry = catalog_entry(args.model)
    log = args.log or Path(f"/tmp/cold-start-{args.side}-{time.time():.0f}.log")
    if args.side == "vllm":
        server = vllm_server(vllm_command_line(entry), free_port(), env={**SERVER_ENV, "PYTHONUNBUFFERED": "1"}, log_path=log)
    else:
        server = bento_server(args.folder or ROOT / "models" / entry.name, free_port(), env={**SERVER_ENV, "PYTHONUNBUFFERED": "1"}, log_path=log)
    marks: list = []
    stop = threading.Event()
    with server:
        watcher = threading.Thread(target=follow, args=(log, server.started_at, marks, stop), daemon=True)
        watcher.start()
        ready = server.wait_ready(timeout=900)
        marks.append((ready, f"== {server.ready_path} 200"))
        marks += [(ready, f"== CPU {line}") for line in cpu_seconds(server)]
        _, done = first_completion(server, entry.served_model_name)
        marks.append((done, "== first completion answered"))
        time.sleep(0.1)
        stop.set()
        watcher.join()
    for at, line in sorted(marks, key=lambda m: m[0]):
        print(f"{at:7.2f}  {line[:220]}")


if __name__ == "__main__":
    main()
