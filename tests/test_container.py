"""The tiny-dev Bento's OCI image, built once with podman by `make containerize` and run as users run it.

Needs podman (`make podman`, which CI runs); the base image is made from Debian packages
(scripts/serving/container.py), never pulled.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from conftest import ROOT
from openai import OpenAI
from scripts.serving.process import free_port, http_status

pytestmark = pytest.mark.serves  # builds and runs the image: not in `make test-quick`

READY_WITHIN_S = 400
STOP_WITHIN_S = 8  # podman stop's own kill comes at 10 s
SHM_SIZE = "1g"  # as the model READMEs' docker run line: vLLM's workers need more than the default 64 MB


def podman(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout)
    assert not check or result.returncode == 0, result.stderr[-2000:]
    return result


# To rerun these tests on an image built before (the build takes minutes): build it with
# LLM_BENTOS_KEEP_TEST_IMAGE=1, which prints the two variables to rerun with: LLM_BENTOS_TEST_IMAGE=<tag>
# and LLM_BENTOS_TEST_CANARIES=<file of KEY=value lines: the HF_TOKEN and VLLM_API_KEY it was built with>.
REUSED_IMAGE = os.environ.get("LLM_BENTOS_TEST_IMAGE")


@pytest.fixture(scope="module")
def canaries() -> dict[str, str]:
    if REUSED_IMAGE:
        lines = Path(os.environ["LLM_BENTOS_TEST_CANARIES"]).read_text().split()
        return dict(line.split("=", 1) for line in lines)
    return {"HF_TOKEN": "hf_canary_" + uuid.uuid4().hex, "VLLM_API_KEY": "key_canary_" + uuid.uuid4().hex}


@pytest.fixture(scope="module")
def image(tmp_path_factory, canaries) -> str:
    """`make containerize MODEL=tiny-dev` in a fresh BentoML home, secrets in its environment; the image tag."""
    if not shutil.which("podman") or subprocess.run(["podman", "info"], capture_output=True).returncode != 0:
        pytest.skip("the container tests need a working podman: run `make podman` (as root, Debian)")
    if REUSED_IMAGE:
        yield REUSED_IMAGE
        return
    home = tmp_path_factory.mktemp("container-home")
    started = time.monotonic()
    result = subprocess.run(["make", "-s", "containerize", "MODEL=tiny-dev"], cwd=ROOT, capture_output=True, text=True,
                            env={**os.environ, "BENTOML_HOME": str(home), **canaries}, timeout=1800)
    assert result.returncode == 0, (result.stdout[-3000:], result.stderr[-3000:])
    found = re.search(r"^image (\S+) \(podman, FROM (\S+)\): ([\d.]+) GB$", result.stdout, re.M)
    assert found, result.stdout[-2000:]
    print(f"image {found[1]} FROM {found[2]}, {found[3]} GB, built in {time.monotonic() - started:.0f} s")
    yield found[1]
    if os.environ.get("LLM_BENTOS_KEEP_TEST_IMAGE"):
        canary_file = home / "canaries"
        canary_file.write_text("".join(f"{k}={v}\n" for k, v in canaries.items()))
        print(f"kept: LLM_BENTOS_TEST_IMAGE={found[1]} LLM_BENTOS_TEST_CANARIES={canary_file}")
    else:
        podman("rmi", "-f", found[1], check=False)


@pytest.fixture
def container(image):
    """Start the image as `docker run -d -p 127.0.0.1:PORT:3000 IMAGE` would; removed afterwards."""
    names = []

    def run(*args: str, shm_size: str | None = SHM_SIZE) -> tuple[str, int]:
        name, port = f"llm-bentos-test-{uuid.uuid4().hex[:8]}", free_port()
        shm = ["--shm-size", shm_size] if shm_size else []
        podman("run", "-d", "--name", name, "-p", f"127.0.0.1:{port}:3000", *shm, *args, image)
        names.append(name)
        return name, port

    yield run
    for name in names:
        podman("rm", "-f", "-t", "0", name, check=False)


def image_name(container_name: str) -> str:
    return podman("inspect", "--format", "{{.ImageName}}", container_name).stdout.strip()


def logs(name: str) -> str:
    result = podman("logs", name, check=False)
    return result.stdout + result.stderr


def wait_ready(name: str, port: int) -> list[int | None]:
    """Poll /readyz until 200; every status seen, in order."""
    seen: list[int | None] = []
    deadline = time.monotonic() + READY_WITHIN_S
    while time.monotonic() < deadline:
        seen.append(http_status(f"http://127.0.0.1:{port}/readyz", timeout=2))
        if seen[-1] == 200:
            return seen
        assert podman("inspect", "--format", "{{.State.Running}}", name).stdout.strip() == "true", logs(name)[-3000:]
        time.sleep(0.5)
    raise AssertionError(f"not ready in {READY_WITHIN_S} s: {seen[-5:]}")


def test_image_serves_a_chat_completion_after_readyz_503_and_stops_cleanly_on_sigterm(container):
    name, port = container()
    seen = wait_ready(name, port)
    assert 503 in seen and seen.index(503) < seen.index(200), seen
    # PID 1 is what the Bento's entrypoint exec'd: `bentoml serve`, a Python process that names itself circusd.
    entrypoint = podman("inspect", "--format", "{{json .Config.Entrypoint}}", image_name(name)).stdout.strip()
    assert entrypoint == '["/home/bentoml/bento/env/docker/entrypoint.sh"]', entrypoint
    pid1 = podman("exec", name, "cat", "/proc/1/cmdline").stdout.replace("\0", " ").strip()
    pid1_exe = podman("exec", name, "readlink", "/proc/1/exe").stdout.strip()
    assert pid1 in ("circusd", "bentoml serve") or pid1.startswith("bentoml serve"), pid1
    assert "python" in pid1_exe, pid1_exe

    client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0, timeout=120)
    answer = client.chat.completions.create(model="tiny-dev", messages=[{"role": "user", "content": "Hi"}], max_tokens=8)
    assert answer.choices[0].message.content and answer.usage.completion_tokens > 0

    started = time.monotonic()
    podman("stop", "-t", "10", name, timeout=60)
    stop_s = time.monotonic() - started
    code = podman("inspect", "--format", "{{.State.ExitCode}}", name).stdout.strip()
    print(f"podman stop took {stop_s:.1f} s, exit code {code}")
    assert stop_s < STOP_WITHIN_S, (stop_s, logs(name)[-2000:])
    assert code == "0", logs(name)[-2000:]


def ending(name: str, since: float, what: str, timeout: float = 180) -> tuple[str, float, str]:
    """Wait for the container to end: its exit code, the seconds since `since`, its log."""
    podman("wait", name, timeout=timeout)
    ended_s = time.monotonic() - since
    code = podman("inspect", "--format", "{{.State.ExitCode}}", name).stdout.strip()
    print(f"{what}: exit {code} after {ended_s:.0f} s")
    return code, ended_s, logs(name)


MODEL_DIR = "/home/bentoml/bento/models/llm-bentos-tiny-dev/v2"  # the tiny model inside the image


def test_image_without_its_weights_exits_non_zero_with_the_reason(container, image, tmp_path):
    """The model folder mounted over by a copy of it without its weights file, as a broken volume leaves it."""
    copy = podman("create", image).stdout.strip()
    podman("cp", f"{copy}:{MODEL_DIR}", str(tmp_path / "v2"))
    podman("rm", copy)
    broken = tmp_path / "v2"
    weights = list(broken.glob("*.safetensors"))
    assert weights and (broken / "config.json").is_file()
    for path in weights:
        path.unlink()
    subprocess.run(["chmod", "-R", "a+rX", str(tmp_path)], check=True)
    started = time.monotonic()
    name, _ = container("--mount", f"type=bind,source={broken},destination={MODEL_DIR},ro")
    code, ended_s, log = ending(name, started, "no weights")
    assert code not in ("0", ""), log[-3000:]
    assert f"model files missing in {MODEL_DIR}: *.safetensors weights" in log, log[-3000:]
    assert ended_s < 60


def test_image_run_without_enough_shared_memory_exits_3_saying_what_to_give_it(container):
    """`docker run` without --shm-size: the container's 64 MB of /dev/shm is too little for vLLM's
    workers, so vLLM cannot start; the container must end with status 3 and vLLM's reason."""
    started = time.monotonic()
    name, _ = container(shm_size=None)
    code, ended_s, log = ending(name, started, "default /dev/shm")
    assert code == "3", log[-3000:]
    assert "bentoml serve exits with status 3: vLLM could not start" in log, log[-3000:]
    assert "Insufficient space in /dev/shm" in log and "--shm-size" in log, log[-3000:]
    assert ended_s < 120  # vLLM fails only once its engine starts: about 40 s of imports here come first


def pins(path: Path) -> dict[str, str]:
    """name: version of every `name==version` line of a requirements or constraints file."""
    found = {}
    for line in path.read_text().splitlines():
        name, sep, version = line.partition("==")
        if sep and not line.startswith("#"):
            found[re.sub(r"[-_.]+", "-", name).lower()] = version.strip()
    return found


def test_image_installs_exactly_the_folders_requirements_at_the_versions_the_tests_ran(image):
    """The image holds the model folder's requirements.txt (the serving closure of constraints.txt)
    and nothing else: `uv pip freeze` inside it, against that file and against constraints.txt."""
    frozen = podman("run", "--rm", "--entrypoint", "uv", image, "pip", "freeze", "--python", "/app/.venv/bin/python").stdout
    installed = {name: version for name, _, version in (line.partition("==") for line in frozen.splitlines()) if version}
    installed = {re.sub(r"[-_.]+", "-", name).lower(): version for name, version in installed.items()}
    required, tested = pins(ROOT / "models" / "tiny-dev" / "requirements.txt"), pins(ROOT / "constraints.txt")
    assert installed == required, {"not required": sorted(set(installed) - set(required)),
                                   "missing": sorted(set(required) - set(installed)),
                                   "other version": sorted(n for n in installed if n in required and installed[n] != required[n])}
    assert {name: tested.get(name) for name in installed} == installed, "a version the tests did not run"


def test_engine_killed_in_the_container_ends_it_with_status_4(container):
    """`kill -9` of vLLM's engine core inside a serving container: the container must end, not serve nothing."""
    name, port = container()
    wait_ready(name, port)
    # Every process whose command line names vLLM's engine core ("EngineCor[e]": not this shell's own).
    podman("exec", name, "sh", "-c", 'killed=; for p in /proc/[0-9]*; do if grep -qa "EngineCor[e]" "$p/cmdline" 2>/dev/null; '
           'then kill -9 "${p#/proc/}" && killed=1; fi; done; [ -n "$killed" ]')
    code, ended_s, log = ending(name, time.monotonic(), "engine killed in the container")
    assert code == "4", log[-3000:]
    assert "vLLM's engine died" in log, log[-3000:]
    assert ended_s < 60


def test_no_build_time_secret_in_any_layer_or_the_image_config(image, canaries):
    found = needles_in_layers(image, [v.encode() for v in canaries.values()] + [b"vllm_openai.py"])
    assert b"vllm_openai.py" in found, "the search reads the layers' bytes"
    inspect = podman("inspect", image).stdout
    for key, value in canaries.items():
        assert value.encode() not in found, f"{key} is in a layer"
        assert value not in inspect, f"{key} is in the image's configuration"


def needles_in_layers(image: str, needles: list[bytes]) -> set[bytes]:
    """Which of `needles` the image's layers hold: every file of every layer (a file a later layer
    deletes included), as podman's overlay storage keeps each layer, unpacked, in a folder of its
    own. grep reads those folders directly; with another storage driver, the bytes of `podman save`."""
    driver = json.loads(podman("image", "inspect", "--format", "{{json .GraphDriver}}", image).stdout)
    if driver["Name"] != "overlay":
        return needles_in_saved_image(image, needles)
    layers = [driver["Data"]["UpperDir"], *filter(None, driver["Data"].get("LowerDir", "").split(":"))]
    patterns = [arg for needle in needles for arg in ("-e", needle.decode())]
    grep = subprocess.run(["grep", "-rhoaF", "--devices=skip", *patterns, *layers], capture_output=True, timeout=600)
    assert grep.returncode in (0, 1), grep.stderr[-2000:]  # 1: none found
    return set(grep.stdout.split()) & set(needles)


def needles_in_saved_image(image: str, needles: list[bytes], chunk: int = 1 << 24) -> set[bytes]:
    """Which of `needles` the bytes of `podman save` hold (every layer, uncompressed), read once as
    it streams out in overlapping chunks: an image is gigabytes."""
    found, tail, overlap = set(), b"", max(map(len, needles))
    with subprocess.Popen(["podman", "save", image], stdout=subprocess.PIPE) as save:
        while block := save.stdout.read(chunk):
            window = tail + block
            found.update(n for n in needles if n in window)
            tail = window[-overlap:]
    assert save.returncode == 0, "podman save failed"
    return found
