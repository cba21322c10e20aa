"""Where a side's serving process spends its CPU under load: py-spy while `make bench`'s load runs.

    python -m scripts.bench.profile --side bento|vllm|gateway [--model tiny-dev] [--concurrency 8]
                                    [--num-prompts 256] [--out bench/results]
    python -m scripts.bench.profile --compare A.txt[,A2.txt ...] B.txt[,B2.txt ...] [--top 25]
    python -m scripts.bench.profile --show A.txt[,A2.txt ...] [--top 25]

The first form starts one side's server as `make bench` does (run.py's `plain_sides`), waits
for the first completion, then records the serving process (the BentoML worker that holds
vLLM's app, or plain vLLM's API server; not the engine core) with
`py-spy record --format raw` while vLLM's serving benchmark sends the load, and stops it with
SIGINT afterwards. It writes <out>/profile-<side>-c<N>-<UTC time>.txt (collapsed stacks: one
line per stack, root first, then its sample count), the benchmark's result beside it (.json:
the compare mode reads its completed output tokens), the facts of the serving and
engine-core processes (.procs.json: environment, CPU affinity, threads) and every thread's
stack before the load (.threads.txt, `py-spy dump`). `--side gateway` records the gateway
instead: the model's service starts (`bentoml serve models/<model>`), the peers benchmark's
gateway hop (scripts/bench/hops.py: the gateway of that one model under BentoML's standalone
server) starts in front of it, and the load goes through the gateway, whose one BentoML worker
is recorded: where a hop's CPU per token goes.

The second and third forms print reports of recorded runs (scripts/bench/stacks.py: `compare`
and `show`, and how idle samples are left out).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import psutil

from scripts.bench.hops import hops
from scripts.bench.run import (
    ROOT, SERVER_ENV, Side, catalog_entry, client_flags, first_completion, plain_sides, run_benchmark_client,
    served_weights, vllm_command_line,
)
from scripts.bench.stacks import PY_SPY_RATE, busy, compare, read_stacks, show
from scripts.serving.process import ServerProcess, bento_server, free_port

PY_SPY_INSTALL = "pip install py-spy  (the version in constraints.txt; requirements-dev.txt lists it)"
ENGINE_CORE_NAME = "EngineCore"
ENV_SHOWN = ("PROMETHEUS_MULTIPROC_DIR", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
             "TORCH_NUM_THREADS", "VLLM_CPU_OMP_THREADS_BIND", "VLLM_CPU_KVCACHE_SPACE", "CUDA_VISIBLE_DEVICES",
             "BENTOML_WORKER_ID", "PYTHONASYNCIODEBUG", "UVLOOP", "PYTHONMALLOC", "MALLOC_ARENA_MAX",
             "LD_PRELOAD", "TOKENIZERS_PARALLELISM")



# --- py-spy ----------------------------------------------------------------------------------


def py_spy_binary() -> str:
    """py-spy on PATH or beside this interpreter; a SystemExit that says what to install otherwise."""
    found = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
    if not found:
        raise SystemExit(f"py-spy not found on PATH or beside {sys.executable}: {PY_SPY_INSTALL}")
    return found


def start_recording(pid: int, output: Path, native: bool = False) -> subprocess.Popen:
    """py-spy on `pid`; with `native`, the frames of C extensions too (uvloop, httptools: their
    work shows as the Python frame that calls them otherwise, or as the idle event loop)."""
    command = [py_spy_binary(), "record", "--pid", str(pid), "--format", "raw", "--rate", str(PY_SPY_RATE),
               "--output", str(output), *(["--native"] if native else [])]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=output.with_suffix(".py-spy.log").open("wb"))


def dump_threads(pid: int, output: Path) -> None:
    """Every thread's stack now (`py-spy dump`): which threads the process runs, and where they wait."""
    with output.open("wb") as out:
        subprocess.run([py_spy_binary(), "dump", "--pid", str(pid)], stdout=out, stderr=subprocess.STDOUT, timeout=60)


def stop_recording(recorder: subprocess.Popen, output: Path) -> None:
    """SIGINT makes py-spy write its file; raise if it wrote none."""
    recorder.send_signal(signal.SIGINT)
    try:
        recorder.wait(60)
    except subprocess.TimeoutExpired:
        recorder.kill()
        recorder.wait()
    if not output.is_file():
        log = output.with_suffix(".py-spy.log").read_text(errors="replace")
        raise RuntimeError(f"py-spy wrote no {output} (exit {recorder.returncode}):\n{log[-2000:]}")


# --- the processes' settings -----------------------------------------------------------------


def process_facts(process) -> dict:
    """What the kernel says of one process: command, CPU affinity, threads, the environment that matters."""
    status = dict(line.split(":", 1) for line in Path(f"/proc/{process.pid}/status").read_text().splitlines() if ":" in line)
    environ = process.environ()
    return {
        "pid": process.pid, "name": process.name(), "cmdline": " ".join(process.cmdline())[:300],
        "cpus_allowed_list": status.get("Cpus_allowed_list", "").strip(),
        "threads": process.num_threads(), "thread_names": sorted(Counter(thread_names(process.pid)).items()),
        "environ": {k: environ[k] for k in ENV_SHOWN if k in environ},
        "environ_keys": sorted(environ),
    }


def thread_names(pid: int) -> list[str]:
    names = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            names.append((task / "comm").read_text().strip())
        except OSError:
            pass
    return names


def engine_cores(serving) -> list:
    return [p for p in serving.children(recursive=True) if ENGINE_CORE_NAME in p.name() + " ".join(p.cmdline())]


def side_process_facts(serving) -> dict:
    return {"serving": process_facts(serving), "engine_cores": [process_facts(p) for p in engine_cores(serving)]}


# --- one recorded run ------------------------------------------------------------------------


def chosen_side(entry, argv: list[str], name: str) -> Side:
    return next(s for s in plain_sides(entry, argv) if s.name == name)


def recorded_load(pid: int, flags: list[str], stacks: Path, result_path: Path, native: bool = False) -> dict:
    """The benchmark's load (no warm-up: the first completion was one) with py-spy on `pid`; its result,
    written to result_path (the compare mode reads its output tokens there)."""
    recorder = start_recording(pid, stacks, native)
    try:
        result = run_benchmark_client(flags, 0, [pid], result_path)
    finally:
        stop_recording(recorder, stacks)
    result_path.write_text(json.dumps(result, indent=2) + "\n")
    return result


@contextlib.contextmanager
def side_under_load(side: str, entry, argv: list[str], stem: Path) -> Iterator[tuple[ServerProcess, psutil.Process]]:
    """The server the load goes to, ready and warmed with one completion, and its process to record:
    a side of `make bench`, or the gateway hop in front of the model's running service."""
    if side != "gateway":
        chosen = chosen_side(entry, argv, side)
        with chosen.server(Path(f"{stem}.server.log")) as server:
            first_completion(server, entry.served_model_name)
            (serving,) = chosen.serving_processes(server)
            yield server, serving
        return
    gateway_hop = hops(entry)["gateway"]
    with bento_server(ROOT / "models" / entry.name, free_port(), env=SERVER_ENV,
                      log_path=Path(f"{stem}.model-service.server.log")) as service:
        first_completion(service, entry.served_model_name)
        with gateway_hop.server(service, Path(f"{stem}.gateway")) as gateway:
            first_completion(gateway, entry.served_model_name)
            (serving,) = gateway_hop.processes(gateway)
            yield gateway, serving


def profile_side(args: argparse.Namespace) -> Path:
    """Start the side's server, record its serving process during the load; the stacks' path."""
    py_spy_binary()  # before minutes of server start
    entry = catalog_entry(args.model)
    argv = vllm_command_line(entry)
    stem = args.out / f"profile-{args.side}-c{args.concurrency}-{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}"
    stem.parent.mkdir(parents=True, exist_ok=True)
    tokenizer = served_weights(argv)
    with side_under_load(args.side, entry, argv, stem) as (server, serving):
        Path(f"{stem}.procs.json").write_text(json.dumps(side_process_facts(serving), indent=2) + "\n")
        dump_threads(serving.pid, Path(f"{stem}.threads.txt"))
        result_path, stacks = Path(f"{stem}.json"), Path(f"{stem}.txt")
        flags = client_flags(server, entry.served_model_name, tokenizer, args.concurrency, args, result_path)
        result = recorded_load(serving.pid, flags, stacks, result_path, args.native)
    print(f"{args.side}: {result['total_output_tokens']} output tokens, serving CPU {result['server_cpu_s']:.2f} s, "
          f"{sum(busy(read_stacks(stacks)).values())} busy samples: {stacks}")
    return stacks


def run_files(text: str) -> list[Path]:
    """`A.txt` or `A1.txt,A2.txt`: one side's recorded runs."""
    return [Path(part) for part in text.split(",") if part]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", choices=("bento", "vllm", "gateway"))
    parser.add_argument("--compare", type=run_files, nargs=2, metavar=("A.txt[,A2.txt]", "B.txt[,B2.txt]"),
                        help="two sides' recorded runs (several of one side: comma-separated, pooled)")
    parser.add_argument("--show", type=run_files, metavar="A.txt[,A2.txt]",
                        help="one side's recorded runs: shares and top functions (several: comma-separated, pooled)")
    parser.add_argument("--model", default="tiny-dev")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--num-prompts", type=int, default=256)
    parser.add_argument("--input-len", type=int, default=64)
    parser.add_argument("--output-len", type=int, default=64)
    parser.add_argument("--native", action="store_true", help="record C extensions' frames too (py-spy --native)")
    parser.add_argument("--top", type=int, default=25, help="functions listed by --compare and --show (default: 25)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args(argv)
    if sum(x is not None for x in (args.side, args.compare, args.show)) != 1:
        parser.error("give one of --side, --compare and --show")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.compare:
        print(compare(*args.compare, args.top))
        return 0
    if args.show:
        print(show(args.show, args.top))
        return 0
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    profile_side(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
