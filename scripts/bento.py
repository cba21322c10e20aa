"""Build, containerize and deploy one model folder; used by the Makefile.

    python scripts/bento.py prepare NAME
    python scripts/bento.py build NAME
    python scripts/bento.py containerize NAME
    python scripts/bento.py deploy NAME [--scaling-min N] [--scaling-max N] [--secret NAME] [--instance-type T] [--dry-run]

Reads catalog.yaml as plain YAML (no vLLM import), so these answer at once. `prepare`
checks the name and, for the entries that serve the tiny offline model, puts that model into
the BentoML model store first (scripts/tiny_model.py); `build` and `containerize` do the same.
Secrets are never read here: a gated model's HF_TOKEN reaches BentoCloud as a named secret.
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

import tiny_model

ROOT = Path(__file__).resolve().parents[1]
BENTOML = str(Path(sys.executable).parent / "bentoml")
# BentoCloud instance families by GPU type; the count is appended (gpu.l4.1). Override
# with --instance-type where an account names them differently.
GPU_INSTANCE_FAMILY = {
    "nvidia-tesla-t4": "t4",
    "nvidia-l4": "l4",
    "nvidia-a10g": "a10g",
    "nvidia-tesla-a100": "a100",
    "nvidia-a100-80gb": "a100.80gb",
    "nvidia-h100-80gb": "h100",
    "nvidia-tesla-h100": "h100",
    "nvidia-h200-141gb": "h200",
}


def entries() -> dict[str, dict]:
    return {m["name"]: m for m in yaml.safe_load((ROOT / "catalog.yaml").read_text())["models"]}


def entry_or_exit(name: str) -> dict:
    known = entries()
    if name not in known:
        given = f"MODEL={name}" if name else "MODEL is not set"
        sys.exit(f"{given}: not in catalog.yaml. Choose one of: {', '.join(known)}")
    return known[name]


def prepare(name: str) -> dict:
    """The entry; the tiny model, which no hub holds, made into the local model store first."""
    entry = entry_or_exit(name)
    if entry["model"].get("bentoml_tag") == tiny_model.DEFAULT_TAG:
        # Its progress lines go to stderr: stdout of `make build` is the Bento tag alone.
        subprocess.run([sys.executable, str(ROOT / "scripts" / "tiny_model.py")], stdout=sys.stderr, check=True)
    return entry


def instance_type(entry: dict) -> str:
    resources = entry.get("resources", {})
    if resources.get("gpu"):
        family = GPU_INSTANCE_FAMILY.get(resources["gpu_type"], resources["gpu_type"])
        return f"gpu.{family}.{resources['gpu']}"
    return f"cpu.{resources.get('cpu', 2)}"


def deploy_command(entry: dict, scaling_min: int, scaling_max: int, secret: str, instance: str | None) -> list[str]:
    command = [
        BENTOML, "deploy", ".", "--name", entry["name"],
        "--instance-type", instance or instance_type(entry),
        "--scaling-min", str(scaling_min), "--scaling-max", str(scaling_max),
    ]
    if "HF_TOKEN" in entry.get("envs", []):
        command += ["--secret", secret]
    return command


def build(name: str) -> str:
    """`bentoml build` in the folder; returns the Bento tag."""
    prepare(name)
    result = subprocess.run([BENTOML, "build", ".", "--output", "tag"], cwd=ROOT / "models" / name, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(result.stdout + result.stderr)
    tag = result.stdout.strip().splitlines()[-1].removeprefix("__tag__:")
    print(tag)
    return tag


def container_engine() -> str | None:
    """The first container engine whose daemon answers, if any."""
    for engine in ("docker", "podman"):
        if shutil.which(engine) and subprocess.run([engine, "info"], capture_output=True).returncode == 0:
            return engine
    return None


def containerize(name: str) -> int:
    entry_or_exit(name)
    engine = container_engine()
    if engine is None:
        print(
            "No container engine is running here: `bentoml containerize` needs Docker (with BuildKit) "
            "or Podman and its daemon; install and start one, then run `make containerize` again.",
            file=sys.stderr,
        )
        return 1
    return subprocess.run([BENTOML, "containerize", build(name), "--backend", engine]).returncode


def logged_in() -> bool:
    return subprocess.run([BENTOML, "cloud", "current-context"], capture_output=True).returncode == 0


def deploy(args: argparse.Namespace) -> int:
    entry = entry_or_exit(args.name)
    command = deploy_command(entry, args.scaling_min, args.scaling_max, args.secret, args.instance_type)
    folder = ROOT / "models" / args.name
    if args.dry_run:
        print(f"cd {shlex.quote(str(folder.relative_to(ROOT)))} && {shlex.join(command)}")
        return 0
    if not logged_in():
        print("Not logged in to BentoCloud: run `bentoml cloud login` first (it asks for an API token).", file=sys.stderr)
        return 1
    return subprocess.run(command, cwd=folder).returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("prepare", "build", "containerize"):
        commands.add_parser(name).add_argument("name")
    dep = commands.add_parser("deploy")
    dep.add_argument("name")
    dep.add_argument("--scaling-min", type=int, default=0)
    dep.add_argument("--scaling-max", type=int, default=2)
    dep.add_argument("--secret", default="huggingface", help="BentoCloud secret holding HF_TOKEN, for gated models")
    dep.add_argument("--instance-type", help="BentoCloud instance type (default: from the GPU type and count)")
    dep.add_argument("--dry-run", action="store_true", help="print the command, run nothing")
    args = parser.parse_args(argv)
    if args.command == "prepare":
        prepare(args.name)
        return 0
    if args.command == "build":
        build(args.name)
        return 0
    if args.command == "containerize":
        return containerize(args.name)
    return deploy(args)


if __name__ == "__main__":
    sys.exit(main())
