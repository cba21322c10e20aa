"""Reading py-spy's collapsed stacks of a serving process (scripts/bench/profile.py records them).

`compare` prints, for two sides' recorded runs, the share of samples by top-level package (of
each sample's innermost frame), the same by layer (the innermost frame outside the
utilities, UTILITY_PACKAGES: whose work it was) and the functions whose inclusive samples per
output token differ most (A minus B); several runs of a side are pooled (samples and tokens
summed). `show` prints one side's shares the same way and its functions with the most samples
per output token, by their own (innermost-frame) samples and inclusive.

Without --idle py-spy leaves out threads it sees waiting, but here it still samples threads
blocked in a queue, a condition or the event loop's poll (measured: 85% of plain vLLM's
samples); `busy` drops samples whose innermost frame is one of IDLE_FRAMES, so what is
compared is CPU time (and time runnable, waiting for a core, on a busy machine). uvloop's loop
is native: its poll and its own native work both show as `Runner.run`, and count as idle.
"""

from __future__ import annotations

import json
import typing as t
from collections import Counter
from pathlib import Path

from scripts.bench.gateway import BENCH_GATEWAY  # the peers' gateway folder: its templates count as ours

PY_SPY_RATE = 200  # samples per second of every recording (profile.py records at this rate)
# Top-level packages reported on their own; our templates are copied beside service.py.
PACKAGES = ("vllm", "bentoml", "_bentoml_impl", "_bentoml_sdk", "starlette", "fastapi", "uvicorn", "asyncio",
            "pydantic", "prometheus_client", "opentelemetry", "anyio", "logging", "zmq")
TEMPLATES = ("patches", "vllm_openai", "web", "supervisor", "service", "gateway")
# Packages that do work on behalf of their caller: a sample in them counts for the nearest caller outside them.
UTILITY_PACKAGES = ("prometheus_client", "asyncio", "logging", "anyio", "pydantic", "other")

# Innermost frames (function and file, no line) of a thread that waits, not works.
IDLE_FRAMES = (
    "_worker (concurrent/futures/thread.py",  # a thread pool's worker waiting for work
    "select (selectors.py",  # a selector's poll: asyncio's loop, or a thread of its own
    "Condition.wait (threading.py", "Event.wait (threading.py", "Thread.join (threading.py",
    "Runner.run (asyncio/runners.py",  # uvloop's native loop (its poll) under asyncio.run / uvloop.run
    "run_until_complete (asyncio/base_events.py",
    "Server.run (uvicorn/server.py",  # uvicorn's asyncio.run(...) with uvloop's native loop beneath
)

# With --native: the C functions a waiting thread sits in (the event loop's poll, a lock or condition).
# Their innermost frame can be an unnamed libc address, so the frames just above it count too.
NATIVE_IDLE_FUNCTIONS = frozenset({"epoll_wait", "epoll_pwait", "poll", "select", "PyThread_acquire_lock_timed",
                                   "pthread_cond_wait", "pthread_cond_timedwait", "sem_wait", "sem_timedwait"})
NATIVE_IDLE_DEPTH = 3

Stacks = Counter  # tuple of frames (root first) -> samples


def read_stacks(path: Path) -> Stacks:
    """py-spy's raw format: `frame;frame;... count` per line, root first."""
    stacks: Stacks = Counter()
    for line in path.read_text().splitlines():
        frames, _, count = line.rpartition(" ")
        if frames and count.isdigit():
            stacks[tuple(frames.split(";"))] += int(count)
    return stacks


def frame_file(frame: str) -> str:
    """`function (path/file.py:123)` -> `path/file.py`."""
    inner = frame.rpartition(" (")[2].rstrip(")")
    return inner.rpartition(":")[0] if inner.rpartition(":")[2].isdigit() else inner


def frame_package(frame: str) -> str:
    """The top-level package of a frame's file: one of PACKAGES, `templates`, or `other`."""
    path = frame_file(frame).replace("\\", "/")
    for marker in ("site-packages/", "dist-packages/", "/lib/python3."):
        if marker in path:
            path = path.split(marker, 1)[1]
            if marker == "/lib/python3.":
                path = path.partition("/")[2]
    parts = [p for p in path.split("/") if p]
    if not parts:
        return "other"
    top = parts[0].removesuffix(".py")
    if top in PACKAGES:
        return top
    if parts[-1].removesuffix(".py") in TEMPLATES and (len(parts) == 1 or {"models", BENCH_GATEWAY} & set(parts)):
        return "templates"
    return "other"


def is_idle(frame: str) -> bool:
    return frame.rpartition(":")[0].endswith(IDLE_FRAMES) or frame.endswith(IDLE_FRAMES)


def waits_natively(frames: tuple[str, ...]) -> bool:
    return any(frame.partition(" (")[0] in NATIVE_IDLE_FUNCTIONS for frame in frames[-NATIVE_IDLE_DEPTH:])


def busy(stacks: Stacks) -> Stacks:
    """The samples of threads at work: those whose innermost frame is not a wait (IDLE_FRAMES), nor
    (recorded with --native) a C function that waits (NATIVE_IDLE_FUNCTIONS)."""
    return Counter({frames: count for frames, count in stacks.items()
                    if not is_idle(frames[-1]) and not waits_natively(frames)})


def package_shares(stacks: Stacks) -> dict[str, float]:
    """Share of samples by the package of each sample's innermost frame (where the CPU was)."""
    by_package: Counter = Counter()
    for frames, count in stacks.items():
        by_package[frame_package(frames[-1])] += count
    total = sum(by_package.values()) or 1
    return {package: count / total for package, count in by_package.most_common()}


def function_of(frame: str) -> str:
    """`function (path/file.py:123)` -> `function (path/file.py)`: one function, whichever line."""
    name = frame.rpartition(" (")[0]
    return f"{name} ({frame_file(frame)})" if name else frame


def layer_of(frames: tuple[str, ...]) -> str:
    """The package of the innermost frame outside UTILITY_PACKAGES: whose work the sample was
    (BentoML's request metrics, not prometheus_client; vLLM's output handler, not asyncio)."""
    for frame in reversed(frames):
        if (package := frame_package(frame)) not in UTILITY_PACKAGES:
            return package
    return frame_package(frames[-1])


def layer_shares(stacks: Stacks) -> dict[str, float]:
    by_layer: Counter = Counter()
    for frames, count in stacks.items():
        by_layer[layer_of(frames)] += count
    total = sum(by_layer.values()) or 1
    return {layer: count / total for layer, count in by_layer.most_common()}


def inclusive_samples(stacks: Stacks) -> Counter:
    """Samples in which each function is on the stack (once per sample, however deep, whichever line)."""
    inclusive: Counter = Counter()
    for frames, count in stacks.items():
        for function in set(map(function_of, frames)):
            inclusive[function] += count
    return inclusive


def per_token_differences(a: Stacks, a_tokens: int, b: Stacks, b_tokens: int, top: int) -> list[tuple[str, float, float]]:
    """(function, A's samples per 1,000 output tokens, B's), largest |A - B| first."""
    a_in, b_in = inclusive_samples(a), inclusive_samples(b)
    rows = [(f, 1000 * a_in[f] / a_tokens, 1000 * b_in[f] / b_tokens) for f in set(a_in) | set(b_in)]
    rows.sort(key=lambda row: abs(row[1] - row[2]), reverse=True)
    return rows[:top]


def output_tokens(stacks_path: Path) -> int:
    """The completed output tokens of the run recorded in stacks_path (its .json beside it)."""
    return int(json.loads(stacks_path.with_suffix(".json").read_text())["total_output_tokens"])


# --- the comparison --------------------------------------------------------------------------


def share_table(a: Stacks, a_tokens: int, b: Stacks, b_tokens: int, shares: t.Callable[[Stacks], dict[str, float]],
                heading: str) -> list[str]:
    shares_a, shares_b = shares(a), shares(b)
    per_kt_a, per_kt_b = 1000 * sum(a.values()) / a_tokens, 1000 * sum(b.values()) / b_tokens
    lines = [f"| {heading} | A share | B share | A samples / 1k tok | B samples / 1k tok |",
             "| --- | ---: | ---: | ---: | ---: |"]
    for package in sorted(set(shares_a) | set(shares_b), key=lambda p: -max(shares_a.get(p, 0), shares_b.get(p, 0))):
        sa, sb = shares_a.get(package, 0.0), shares_b.get(package, 0.0)
        lines.append(f"| {package} | {sa:.1%} | {sb:.1%} | {sa * per_kt_a:.1f} | {sb * per_kt_b:.1f} |")
    lines.append(f"| all | 100% | 100% | {per_kt_a:.1f} | {per_kt_b:.1f} |")
    return lines


def difference_table(rows: t.Iterable[tuple[str, float, float]]) -> list[str]:
    lines = ["| function (inclusive) | A / 1k tok | B / 1k tok | A - B |", "| --- | ---: | ---: | ---: |"]
    lines += [f"| {f} | {a:.2f} | {b:.2f} | {a - b:+.2f} |" for f, a, b in rows]
    return lines


def pooled(paths: list[Path]) -> tuple[Stacks, int]:
    """Several recorded runs of one side as one: their samples and their output tokens summed."""
    stacks: Stacks = Counter()
    for path in paths:
        stacks.update(read_stacks(path))
    return stacks, sum(map(output_tokens, paths))


def compare(a_paths: list[Path], b_paths: list[Path], top: int) -> str:
    """The package and layer shares and the largest per-token differences of two sides' runs, as Markdown."""
    (all_a, a_tokens), (all_b, b_tokens) = pooled(a_paths), pooled(b_paths)
    a, b = busy(all_a), busy(all_b)
    return "\n".join([
        f"A: {', '.join(map(str, a_paths))} ({sum(a.values())} busy samples of {sum(all_a.values())}, {a_tokens} output tokens)",
        f"B: {', '.join(map(str, b_paths))} ({sum(b.values())} busy samples of {sum(all_b.values())}, {b_tokens} output tokens)", "",
        *share_table(a, a_tokens, b, b_tokens, package_shares, "package (innermost frame)"), "",
        *share_table(a, a_tokens, b, b_tokens, layer_shares, "layer (innermost caller outside utilities)"), "",
        *difference_table(per_token_differences(a, a_tokens, b, b_tokens, top)),
    ])


def self_samples(stacks: Stacks) -> Counter:
    """Samples whose innermost frame is in each function (whichever line): where the CPU was."""
    own: Counter = Counter()
    for frames, count in stacks.items():
        own[function_of(frames[-1])] += count
    return own


def top_functions_table(stacks: Stacks, tokens: int, top: int) -> list[str]:
    """The functions with the most samples per 1,000 output tokens, by their own samples, with
    their inclusive samples beside."""
    own, inclusive = self_samples(stacks), inclusive_samples(stacks)
    total = sum(stacks.values()) or 1
    lines = ["| function (own samples) | own / 1k tok | own share | inclusive / 1k tok |", "| --- | ---: | ---: | ---: |"]
    lines += [f"| {f} | {1000 * n / tokens:.2f} | {n / total:.1%} | {1000 * inclusive[f] / tokens:.2f} |"
              for f, n in own.most_common(top)]
    return lines


def show(paths: list[Path], top: int) -> str:
    """One side's runs: shares by package and by layer, per output token, and its top functions, as Markdown."""
    all_stacks, tokens = pooled(paths)
    stacks = busy(all_stacks)
    per_kt = 1000 * sum(stacks.values()) / tokens
    return "\n".join([
        f"{', '.join(map(str, paths))}: {sum(stacks.values())} busy samples of {sum(all_stacks.values())}, "
        f"{tokens} output tokens, {PY_SPY_RATE} samples/s ({1e6 / PY_SPY_RATE:.0f} µs each)", "",
        *one_share_table(package_shares(stacks), per_kt, "package (innermost frame)"), "",
        *one_share_table(layer_shares(stacks), per_kt, "layer (innermost caller outside utilities)"), "",
        *top_functions_table(stacks, tokens, top),
    ])


def one_share_table(shares: dict[str, float], per_kt: float, heading: str) -> list[str]:
    return [f"| {heading} | share | samples / 1k tok |", "| --- | ---: | ---: |",
            *(f"| {name} | {share:.1%} | {share * per_kt:.1f} |" for name, share in shares.items()),
            f"| all | 100% | {per_kt:.1f} |"]
