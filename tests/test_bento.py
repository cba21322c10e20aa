"""Build and containerize: make targets, a built Bento that serves, and no secret inside (deploy: test_deploy.py)."""

from __future__ import annotations

import os
import subprocess

import pytest
from conftest import ROOT, serve_folder
from openai import OpenAI


def make(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(["make", "-s", *args], cwd=ROOT, capture_output=True, text=True, env={**os.environ, **env})


def test_unknown_model_lists_the_names():
    result = make("build", "MODEL=llama9")
    assert result.returncode != 0
    assert "MODEL=llama9: not in catalog.yaml. Choose one of:" in result.stderr and "tiny-dev" in result.stderr


def test_containerize_with_engines_that_do_not_answer_says_what_to_install(tmp_path):
    """`docker` and `podman` on PATH whose `info` fails, as a CLI without its daemon does."""
    for engine in ("docker", "podman"):
        fake = tmp_path / engine
        fake.write_text("#!/bin/sh\necho 'Cannot connect to the daemon' >&2\nexit 1\n")
        fake.chmod(0o755)
    result = make("containerize", "MODEL=tiny-dev", PATH=f"{tmp_path}:{os.environ['PATH']}")
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[0] == (
        "No container engine works here: install Docker (with its daemon running) or Podman "
        "(Debian: `make podman`, as root), then run `make containerize` again."
    )


@pytest.mark.serves
def test_build_on_a_fresh_checkout_makes_the_model_and_the_bento_serves_without_secrets(tmp_path):
    home = tmp_path / "home"  # an empty BentoML home: no `make demo` or `make serve` before
    canary = "hf_canary_" + os.urandom(8).hex()
    secrets = {"HF_TOKEN": canary, "OPENAI_API_KEY": canary, "BENTO_CLOUD_API_KEY": canary}
    result = make("build", "MODEL=tiny-dev", BENTOML_HOME=str(home), **secrets)
    assert result.returncode == 0, result.stderr
    tag = result.stdout.strip().splitlines()[-1]
    assert tag.startswith("tiny-dev:")

    bento_dir = home / "bentos" / "tiny-dev" / tag.split(":")[1]
    files = [p for p in bento_dir.rglob("*") if p.is_file()]
    assert any(p.name == "service.py" for p in files)
    assert not [p for p in files if canary.encode() in p.read_bytes()]

    with serve_folder(tmp_path, "built-bento", env={"BENTOML_HOME": str(home), **secrets}, target=tag) as server:
        client = OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
        reply = client.chat.completions.create(
            model="tiny-dev", messages=[{"role": "user", "content": "Hi"}], max_tokens=4, extra_body={"ignore_eos": True}
        )
        assert reply.usage.completion_tokens == 4
    assert canary not in server.log_path.read_text(errors="replace")

