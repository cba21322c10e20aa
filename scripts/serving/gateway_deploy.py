"""The BentoCloud deployment of a gateway: one config file, every service its own deployment unit.

Used by scripts/serving/bento.py (`make deploy MODEL=<gateway>`). A gateway's Bento holds the router
service and one service per model; `bentoml deploy` 1.4.39 deploys such a Bento from a config
file whose `services:` has one entry per BentoML service, each with its own scaling and, when
given, instance type (bentoml/_internal/cloud/schemas/modelschemas.py: DeploymentServiceConfig).
Without an instance type BentoCloud infers each service's from its own resources: a model's
GPUs, the router's CPU (BentoCloud docs; not checked against BentoCloud from this repository).

Secrets go by name only. In 1.4.39 they belong to the whole deployment (DeploymentConfigSchema
.secrets; a service's config has envs, no secrets), so every service receives each one; the
file's comments say which service reads which.
"""

from __future__ import annotations

import argparse
import ast
from pathlib import Path

import yaml

from scripts.catalog import service_module

ROOT = Path(__file__).resolve().parents[2]
CONFIG_DIR = ROOT / "build" / "deploy"  # ignored by git; the file holds names, never a secret's value


def service_resources(module: Path) -> dict:
    """The `resources=` of the `@bentoml.service(...)` in a generated service module."""
    for node in ast.walk(ast.parse(module.read_text())):
        if isinstance(node, ast.Call) and ast.unparse(node.func) == "bentoml.service":
            for keyword in node.keywords:
                if keyword.arg == "resources":
                    return ast.literal_eval(keyword.value)
    return {}


def describe_resources(resources: dict) -> str:
    if resources.get("gpu"):
        return f"{resources['gpu']} x {resources.get('gpu_type', 'any GPU')}"
    return ", ".join(f"{key} {value}" for key, value in resources.items()) or "BentoCloud's default"


def secrets_read_by(entry: dict, args: argparse.Namespace) -> list[str]:
    """The named secrets a service reads: a gated model's HF_TOKEN, and the key clients must send."""
    secrets = [args.secret] if "HF_TOKEN" in entry.get("envs", []) else []
    return secrets + ([args.api_key_secret] if args.api_key_secret else [])


def deployment_config(gateway: dict, known: dict[str, dict], args: argparse.Namespace) -> dict:
    """What `bentoml deploy --config-file` reads: the deployment's name, secrets, auth, and one entry per service."""
    scaling = {"min_replicas": args.scaling_min, "max_replicas": args.scaling_max}
    config: dict = {"name": gateway["name"]}
    read = [secrets_read_by(entry, args) for entry in [gateway, *(known[name] for name in gateway["models"])]]
    secrets = list(dict.fromkeys(secret for names in read for secret in names))
    if secrets:
        config["secrets"] = secrets
    if args.bentocloud_auth:  # BentoCloud checks each caller's API token at the gateway's URL
        config["access_authorization"] = True
    config["services"] = {name: {"scaling": dict(scaling)} for name in [gateway["name"], *gateway["models"]]}
    return config


def config_text(gateway: dict, known: dict[str, dict], args: argparse.Namespace, folder: Path) -> str:
    """The config as YAML, each service headed by a comment: what it runs on and which secrets it reads."""
    config = deployment_config(gateway, known, args)
    services = config.pop("services")
    lines = [
        f"# BentoCloud deployment of the gateway {gateway['name']}: written by `make deploy`, read by `bentoml deploy -f`.",
        "# Each service below is its own deployment unit: own replicas, own instance type (BentoCloud's choice",
        "# from the resources in its service module, unless instance_type: is added), own autoscaling.",
        "# Secrets (names only) apply to the whole deployment in bentoml 1.4.39.",
        yaml.safe_dump(config, sort_keys=False).rstrip(),
        "services:",
    ]
    for name, service in services.items():
        router = name == gateway["name"]
        module = folder / ("service.py" if router else f"{service_module(name)}.py")
        reads = secrets_read_by(gateway if router else known[name], args)
        role = "the router" if router else "a model service"
        lines.append(f"  # {role}: {describe_resources(service_resources(module))}; reads secrets: {', '.join(reads) or 'none'}")
        lines.append("  " + yaml.safe_dump({name: service}, sort_keys=False).rstrip().replace("\n", "\n  "))
    return "\n".join(lines) + "\n"


def secret_flags(config: Path) -> list[str]:
    """The file's secrets as `--secret` flags too: with a config file, `bentoml deploy` 1.4.39 sends the file's
    secrets but checks the Bento's required envs (a gated model's HF_TOKEN) against the flags' alone
    (DeploymentConfigParameters.verify), and would refuse the deployment without them."""
    return [flag for name in yaml.safe_load(config.read_text()).get("secrets", []) for flag in ("--secret", name)]


def write_config(name: str, text: str) -> Path:
    CONFIG_DIR.mkdir(parents=True, exist_ok=True)
    path = CONFIG_DIR / f"{name}.yaml"
    path.write_text(text)
    return path
