"""py-spy's collapsed stacks read and compared (scripts/bench/stacks.py), and profile.py's command line (no server)."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from scripts.bench import profile
from scripts.bench import stacks as reading

# Two small runs in py-spy's raw format (root first); A sends 2,000 output tokens, B 1,000.
A_STACKS = """\
run (asyncio/events.py:80);__call__ (_bentoml_impl/server/app.py:10);generate (vllm/entrypoints/openai/serving.py:5) 30
run (asyncio/events.py:80);__call__ (_bentoml_impl/server/app.py:10);__call__ (starlette/routing.py:700) 10
run (asyncio/events.py:80);_run_once (asyncio/base_events.py:1900) 20
<module> (/root/bentoml/bentos/x/models/tiny-dev/vllm_openai.py:3);_watch_engine (/root/x/models/tiny-dev/vllm_openai.py:9) 4
main (/usr/lib/python3.11/site-packages/pydantic/main.py:1) 6
_bootstrap (threading.py:1002);_worker (concurrent/futures/thread.py:81) 500
_run_module_as_main (<frozen runpy>:198);Runner.run (asyncio/runners.py:118) 300
not a stack line
"""
B_STACKS = """\
run (asyncio/events.py:80);generate (vllm/entrypoints/openai/serving.py:5) 15
run (asyncio/events.py:80);_run_once (asyncio/base_events.py:1900) 5
"""


@pytest.fixture()
def runs(tmp_path):
    paths = []
    for name, stacks, tokens in (("a", A_STACKS, 2000), ("b", B_STACKS, 1000)):
        path = tmp_path / f"{name}.txt"
        path.write_text(stacks)
        path.with_suffix(".json").write_text(json.dumps({"total_output_tokens": tokens}))
        paths.append(path)
    return paths


def test_read_stacks_sums_samples_and_skips_lines_without_a_count(runs):
    stacks = reading.read_stacks(runs[0])
    assert sum(stacks.values()) == 870
    assert len(stacks) == 7


def test_busy_leaves_out_the_samples_of_waiting_threads(runs):
    busy = reading.busy(reading.read_stacks(runs[0]))
    assert sum(busy.values()) == 70
    assert not any(frames[-1].startswith(("_worker", "Runner.run")) for frames in busy)


def test_busy_leaves_out_native_waits_recorded_with_native_frames():
    stacks = Counter({
        ("run (asyncio/events.py:80)", "uv__io_poll (libuv/src/unix/epoll.c:236)", "epoll_pwait (libc.so.6)"): 5,
        ("_bootstrap (threading.py:1002)", "lock_PyThread_acquire_lock (thread.c)",
         "PyThread_acquire_lock_timed (thread_pthread.h)", "0x7fbabe2aed90 (libc.so.6)"): 4,
        ("run (asyncio/events.py:80)", "UVStream__try_write (uvloop/handles/stream.pyx:1)", "write (libc.so.6)"): 3,
    })
    assert reading.busy(stacks) == Counter({stacks.most_common()[-1][0]: 3})


@pytest.mark.parametrize(("frame", "package"), [
    ("run (asyncio/events.py:80)", "asyncio"),
    ("__call__ (_bentoml_impl/server/app.py)", "_bentoml_impl"),
    ("x (/work/.venv/lib/python3.11/site-packages/starlette/routing.py:1)", "starlette"),
    ("x (/usr/lib/python3.11/asyncio/base_events.py:1)", "asyncio"),
    ("_watch_engine (/root/bentoml/bentos/t/models/tiny-dev/vllm_openai.py:9)", "templates"),
    ("f (patches.py:3)", "templates"),
    ("f (numpy/core/x.py:3)", "other"),
    ("<native> (libc.so.6)", "other"),
])
def test_frame_package(frame, package):
    assert reading.frame_package(frame) == package


def test_package_shares_go_by_the_innermost_frame(runs):
    shares = reading.package_shares(reading.busy(reading.read_stacks(runs[0])))
    assert shares == pytest.approx({"vllm": 30 / 70, "asyncio": 20 / 70, "starlette": 10 / 70, "pydantic": 6 / 70,
                                    "templates": 4 / 70})


def test_layer_shares_count_utility_work_for_its_caller():
    stacks = Counter({
        ("run (asyncio/events.py:80)", "wrapped_send (bentoml/_internal/server/http/instruments.py:338)",
         "observe (prometheus_client/metrics.py:678)", "inc (prometheus_client/values.py:28)"): 3,
        ("run (asyncio/events.py:80)", "output_handler (vllm/v1/engine/async_llm.py:864)", "set (asyncio/locks.py:192)"): 1,
        ("run (asyncio/events.py:80)", "_run_once (asyncio/base_events.py:1900)"): 4,
    })
    assert reading.layer_shares(stacks) == {"bentoml": 3 / 8, "vllm": 1 / 8, "asyncio": 4 / 8}


def test_inclusive_samples_count_a_function_once_per_sample_whichever_line():
    stacks = Counter({("f (a.py:1)", "g (b.py:2)", "f (a.py:7)"): 3, ("g (b.py:9)",): 1})
    assert reading.inclusive_samples(stacks) == {"f (a.py)": 3, "g (b.py)": 4}


def test_per_token_differences_normalise_by_output_tokens(runs):
    a, b = (reading.busy(reading.read_stacks(path)) for path in runs)
    rows = {f: (x, y) for f, x, y in reading.per_token_differences(a, 2000, b, 1000, top=3)}
    # The BentoML frame is in 40 of A's samples (20 per 1k tokens) and none of B's: the largest difference.
    assert list(rows)[0] == "__call__ (_bentoml_impl/server/app.py)"
    assert rows["__call__ (_bentoml_impl/server/app.py)"] == pytest.approx((20.0, 0.0))
    # The event loop's root: 60 of A's samples (30 per 1k) against 20 of B's (20 per 1k).
    assert rows["run (asyncio/events.py)"] == pytest.approx((30.0, 20.0))
    assert len(rows) == 3


def test_compare_prints_the_share_table_and_the_differences(runs):
    text = reading.compare([runs[0]], [runs[1]], top=2)
    assert text.count("| vllm | 42.9% | 75.0% | 15.0 | 15.0 |") == 2  # by package and by layer
    assert "| layer (innermost caller outside utilities) | A share |" in text
    assert "| _bentoml_impl | 0.0% | 0.0% |" not in text  # a package only on the stack, never innermost: no row
    assert "| all | 100% | 100% | 35.0 | 20.0 |" in text
    assert "| __call__ (_bentoml_impl/server/app.py) | 20.00 | 0.00 | +20.00 |" in text
    assert "70 busy samples of 870, 2000 output tokens" in text and "1000 output tokens" in text


def test_a_missing_py_spy_says_what_to_install(monkeypatch):
    monkeypatch.setattr(profile.shutil, "which", lambda *args, **kwargs: None)
    with pytest.raises(SystemExit, match="pip install py-spy"):
        profile.py_spy_binary()


def test_one_of_side_compare_and_show_is_required():
    with pytest.raises(SystemExit):
        profile.parse_args([])
    with pytest.raises(SystemExit):
        profile.parse_args(["--side", "gateway", "--show", "a.txt"])
    assert profile.parse_args(["--side", "bento"]).concurrency == 8
    assert profile.parse_args(["--side", "gateway"]).side == "gateway"


def test_show_gives_one_sides_shares_and_its_functions_by_own_samples_per_token(runs):
    text = reading.show([runs[0]], top=2)
    assert "70 busy samples of 870, 2000 output tokens" in text
    assert "| vllm | 42.9% | 15.0 |" in text  # 30 of 70 busy samples; 35 per 1k tokens in all
    assert "| all | 100% | 35.0 |" in text
    # Own samples: generate (30) first, then the loop's _run_once (20); inclusive beside them.
    rows = [line for line in text.splitlines() if ".py) |" in line]
    assert rows == ["| generate (vllm/entrypoints/openai/serving.py) | 15.00 | 42.9% | 15.00 |",
                    "| _run_once (asyncio/base_events.py) | 10.00 | 28.6% | 10.00 |"]


def test_the_gateways_router_counts_as_the_projects_templates():
    assert reading.frame_package("_forward (/tmp/p.gateway/bench-gateway/gateway.py:300)") == "templates"
    assert reading.frame_package("_forward (/srv/models/my-gateway/gateway.py:300)") == "templates"
    assert reading.frame_package("_forward (/srv/elsewhere/gateway.py:300)") == "other"


def test_several_runs_of_a_side_are_pooled(runs):
    text = reading.compare([runs[0], runs[0]], [runs[1]], top=1)
    assert "(140 busy samples of 1740, 4000 output tokens)" in text
    assert "| vllm | 42.9% | 75.0% | 15.0 | 15.0 |" in text  # the same per token as one run
    assert profile.parse_args(["--compare", "a.txt,a2.txt", "b.txt"]).compare == [
        [profile.Path("a.txt"), profile.Path("a2.txt")], [profile.Path("b.txt")]]
