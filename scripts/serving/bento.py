"""Build, containerize and deploy one model folder, and create BentoCloud secrets; used by the Makefile.

    python -m scripts.serving.bento prepare NAME
    python -m scripts.serving.bento build NAME
    python -m scripts.serving.bento containerize NAME [--base-image IMAGE]
    python -m scripts.serving.bento deploy NAME (--api-key-secret SECRET | --bentocloud-auth) [--secret HF_SECRET]
                                        [--scaling-min N] [--scaling-max N] [--instance-type T] [--dry-run]
    python -m scripts.serving.bento secret SECRET KEY [--dry-run]

NAME is a model entry or a gateway of catalog.yaml; a gateway deploys from a config file
(scripts/serving/gateway_deploy.py), every service its own deployment unit. Reads catalog.yaml as plain YAML (no
vLLM import), so these answer at once. `prepare` checks the name and, for the entries that
serve the tiny offline model (alone or in a gateway), puts that model into the BentoML model
store first (scripts/tiny/); `build` and `containerize` do the same. No secret value
is ever on a command line: a gated model's HF_TOKEN and the service's VLLM_API_KEY reach
BentoCloud as named secrets, and `secret` hands its value to `bentoml secret create` in a
private file (BentoML 1.4.39 reads `KEY=@file`, but not the environment or a prompt).

Instance types: `bentoml deploy` 1.4.39 sends one only when given (--instance-type;
bentoml/_internal/cloud/deployment.py), and BentoCloud then infers "the most suitable
instance based on the resources" of the service (BentoCloud docs, Configure Deployments),
i.e. the entry's GPU type and count, or CPUs and memory. No catalog entry is known to need
another, so none is mapped here (not checked against BentoCloud from this repository);
INSTANCE_TYPE= names one (`bentoml deployment list-instance-types` lists an account's).
"""

from __future__ import annotations

import argparse
import getpass
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from scripts.serving import container, gateway_deploy
from scripts.tiny import llama as tiny_model

ROOT = Path(__file__).resolve().parents[2]
BENTOML = str(Path(sys.executable).parent / "bentoml")
API_KEY_ENV = "VLLM_API_KEY"  # the key clients must send, read by the service (templates/web.py)


def catalog() -> dict:
    return yaml.safe_load((ROOT / "catalog.yaml").read_text())


def entries() -> dict[str, dict]:
    """Model entries and gateways by name: both are folders under models/."""
    data = catalog()
    return {m["name"]: m for m in [*data["models"], *data.get("gateways", [])]}


def entry_or_exit(name: str) -> dict:
    known = entries()
    if name not in known:
        given = f"MODEL={name}" if name else "MODEL is not set"
        sys.exit(f"{given}: not in catalog.yaml. Choose one of: {', '.join(known)}")
    return known[name]


def prepare(name: str) -> dict:
    """The entry or gateway; the tiny model, which no hub holds, made into the local model store first."""
    entry = entry_or_exit(name)
    known = entries()
    served = [known[member] for member in entry["models"]] if "models" in entry else [entry]
    if any(model["model"].get("bentoml_tag") == tiny_model.DEFAULT_TAG for model in served):
        # Its progress lines go to stderr: stdout of `make build` is the Bento tag alone.
        subprocess.run([sys.executable, "-m", "scripts.tiny"], cwd=ROOT, stdout=sys.stderr, check=True)
    return entry


def deploy_command(entry: dict, args: argparse.Namespace) -> list[str]:
    """`bentoml deploy` for one entry: secrets by name only, an instance type only when asked for."""
    command = [
        BENTOML, "deploy", ".", "--name", entry["name"],
        "--scaling-min", str(args.scaling_min), "--scaling-max", str(args.scaling_max),
    ]
    if args.instance_type:  # otherwise BentoCloud infers one from the service's resources
        command += ["--instance-type", args.instance_type]
    if "HF_TOKEN" in entry.get("envs", []):
        command += ["--secret", args.secret]
    if args.bentocloud_auth:  # BentoCloud checks each caller's API token
        command += ["--access-authorization", "true"]
    if args.api_key_secret:  # its VLLM_API_KEY reaches the service as an environment variable
        command += ["--secret", args.api_key_secret]
    return command


def gateway_deploy_command(gateway: dict, args: argparse.Namespace) -> tuple[list[str], Path]:
    """`bentoml deploy` of a gateway from the config file it writes (scripts/serving/gateway_deploy.py), and that file."""
    folder = ROOT / "models" / gateway["name"]
    path = gateway_deploy.write_config(gateway["name"], gateway_deploy.config_text(gateway, entries(), args, folder))
    return [BENTOML, "deploy", ".", "--config-file", os.path.relpath(path, folder), *gateway_deploy.secret_flags(path)], path


def build(name: str) -> str:
    """`bentoml build` in the folder; returns the Bento tag."""
    prepare(name)
    result = subprocess.run([BENTOML, "build", ".", "--output", "tag"], cwd=ROOT / "models" / name, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(result.stdout + result.stderr)
    tag = result.stdout.strip().splitlines()[-1].removeprefix("__tag__:")
    print(tag)
    return tag


def containerize(name: str, base_image: str | None = None) -> int:
    """The Bento's OCI image, built FROM `base_image` (default: container.BASE_IMAGE, made here)."""
    entry_or_exit(name)
    engine = container.working_engine()
    if engine is None:
        print(container.INSTALL_HINT, file=sys.stderr)
        return 1
    os.environ["BASE_IMAGE"] = base_image or container.build_base_image(engine)
    image = container.build_image(build(name), engine)
    size_gb = container.image_size(engine, image) / 1e9
    print(f"image {image} ({engine}, FROM {os.environ['BASE_IMAGE']}): {size_gb:.2f} GB")
    return 0


def logged_in() -> bool:
    return subprocess.run([BENTOML, "cloud", "current-context"], capture_output=True).returncode == 0


def deploy(args: argparse.Namespace) -> int:
    entry = entry_or_exit(args.name)
    if not args.api_key_secret and not args.bentocloud_auth:
        print(
            f"A deployment answers anyone who has its URL. Give API_KEY_SECRET=<a BentoCloud secret holding {API_KEY_ENV}> "
            f"(create one with `make secret NAME=vllm-api-key KEY={API_KEY_ENV}`), or BENTOCLOUD_AUTH=1 "
            "to have BentoCloud check callers' API tokens instead.",
            file=sys.stderr,
        )
        return 2
    if "models" in entry and args.instance_type:
        print("INSTANCE_TYPE= names one instance type; each service of a gateway gets BentoCloud's choice "
              "from its own resources.", file=sys.stderr)
        return 2
    if "models" in entry:  # a gateway
        command, config = gateway_deploy_command(entry, args)
    else:
        command, config = deploy_command(entry, args), None
    folder = ROOT / "models" / args.name
    if args.dry_run:
        if config:
            print(f"# {config.relative_to(ROOT)}\n{config.read_text()}", end="")
        print(f"cd {shlex.quote(str(folder.relative_to(ROOT)))} && {shlex.join(command)}")
        return 0
    if not logged_in():
        print("Not logged in to BentoCloud: run `bentoml cloud login` first (it asks for an API token).", file=sys.stderr)
        return 1
    return subprocess.run(command, cwd=folder).returncode


def secret_command(name: str, key: str, value_file: Path) -> list[str]:
    """`bentoml secret create`, which reads the value from the file (`KEY=@path`)."""
    return [BENTOML, "secret", "create", name, f"{key}=@{value_file}"]


def write_value_file(folder: Path, key: str, value: str) -> Path:
    """The value in a file only its owner can read."""
    path = folder / key
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
        f.write(value)
    return path


def create_secret(name: str, key: str, dry_run: bool) -> int:
    """A BentoCloud secret holding $KEY, read from the environment or asked for without echo."""
    if not name or not key:
        print("Give both: make secret NAME=<secret name> KEY=<variable, e.g. VLLM_API_KEY or HF_TOKEN>", file=sys.stderr)
        return 2
    if dry_run:
        print(shlex.join(secret_command(name, key, Path(tempfile.gettempdir()) / "<private folder>" / key)))
        return 0
    if not logged_in():
        print("Not logged in to BentoCloud: run `bentoml cloud login` first (it asks for an API token).", file=sys.stderr)
        return 1
    value = os.environ.get(key) or getpass.getpass(f"{key} (not shown): ")
    if not value:
        print(f"{key} is empty: no secret was created.", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="llm-bentos-secret-") as folder:  # mode 0700, removed after
        return subprocess.run(secret_command(name, key, write_value_file(Path(folder), key, value))).returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("prepare", "build", "containerize"):
        commands.add_parser(name).add_argument("name")
    commands.choices["containerize"].add_argument(
        "--base-image", help=f"the image's base (default: {container.BASE_IMAGE}, made here from Debian packages)")
    dep = commands.add_parser("deploy")
    dep.add_argument("name")
    dep.add_argument("--scaling-min", type=int, default=0)
    dep.add_argument("--scaling-max", type=int, default=2)
    dep.add_argument("--secret", default="huggingface", help="BentoCloud secret holding HF_TOKEN, for gated models")
    dep.add_argument("--api-key-secret", help=f"BentoCloud secret holding {API_KEY_ENV}, the key clients must send")
    dep.add_argument("--bentocloud-auth", action="store_true", help="no vLLM key: BentoCloud checks callers' tokens")
    dep.add_argument("--instance-type", help="BentoCloud instance type (default: BentoCloud's choice from the resources)")
    dep.add_argument("--dry-run", action="store_true", help="print the command (and a gateway's config file), run nothing")
    sec = commands.add_parser("secret")
    sec.add_argument("secret_name")
    sec.add_argument("key", help="the environment variable the secret sets, e.g. VLLM_API_KEY or HF_TOKEN")
    sec.add_argument("--dry-run", action="store_true", help="print the command, read and run nothing")
    args = parser.parse_args(argv)
    if args.command == "secret":
        return create_secret(args.secret_name, args.key, args.dry_run)
    if args.command == "prepare":
        prepare(args.name)
        return 0
    if args.command == "build":
        build(args.name)
        return 0
    if args.command == "containerize":
        return containerize(args.name, args.base_image)
    return deploy(args)


if __name__ == "__main__":
    sys.exit(main())
