"""make deploy and make secret: the printed commands, what bentoml 1.4.39 makes of them, and no secret value anywhere."""

from __future__ import annotations

import os
import shlex

import pytest
import yaml
from bentoml._internal.cloud.schemas.schemasv2 import DeploymentConfigSchema
from bentoml._internal.utils.cattr import bentoml_cattr
from bentoml_cli.deployment import deploy_command
from conftest import ROOT
from bentoml_cli.secret import parse_kvs_argument_callback
from test_bento import make

from scripts.serving import bento

CANARY = "canary_" + os.urandom(8).hex()
SECRET_VALUES = {"HF_TOKEN": "hf_" + CANARY, "VLLM_API_KEY": CANARY, "BENTO_CLOUD_API_KEY": CANARY}


def dry_run(model: str, *args: str) -> list[str]:
    """The `bentoml deploy` command `make deploy ... DRY_RUN=1` prints, as its arguments."""
    result = make("deploy", f"MODEL={model}", "DRY_RUN=1", *args, **SECRET_VALUES)
    assert result.returncode == 0, result.stderr
    assert CANARY not in result.stdout + result.stderr
    cd, command = result.stdout.strip().split(" && ")
    assert cd == f"cd models/{model}"
    return shlex.split(command)


def bentoml_deploy_options(argv: list[str]) -> dict:
    """What bentoml 1.4.39's own `deploy` command parses from these arguments (nothing is run)."""
    assert argv[1:3] == ["deploy", "."]
    with deploy_command.make_context("deploy", argv[2:]) as context:
        return context.params


def gateway_dry_run(gateway: str, *args: str) -> tuple[str, dict]:
    """The config file `make deploy MODEL=<gateway> DRY_RUN=1` prints, and what bentoml 1.4.39's `deploy`
    parses from the command it prints, run where it says (its --config-file read back as bentoml opens it)."""
    result = make("deploy", f"MODEL={gateway}", "DRY_RUN=1", *args, **SECRET_VALUES)
    assert result.returncode == 0, result.stderr
    assert CANARY not in result.stdout + result.stderr
    header, *config, last = result.stdout.splitlines()
    assert header == f"# build/deploy/{gateway}.yaml"
    cd, command = last.split(" && ")
    assert cd == f"cd models/{gateway}"
    argv = shlex.split(command)
    assert argv[1:3] == ["deploy", "."]
    cwd = os.getcwd()
    os.chdir(ROOT / "models" / gateway)
    try:
        with deploy_command.make_context("deploy", argv[2:]) as context:
            options = {**context.params, "config_file": context.params["config_file"].read()}
    finally:
        os.chdir(cwd)
    return "\n".join(config) + "\n", options


def test_gateway_deploy_gives_each_service_its_own_unit_resources_scaling_and_secrets():
    text, options = gateway_dry_run("assistant-l4", "API_KEY_SECRET=vllm-api-key", "SCALING_MIN=1", "SCALING_MAX=3")
    assert options["config_file"] == text  # the file the command names is the one printed
    config = bentoml_cattr.structure(yaml.safe_load(text), DeploymentConfigSchema)  # as bentoml 1.4.39 reads it
    assert list(config.services) == ["assistant-l4", "llama3.1-8b-instruct", "qwen3-8b", "e5-mistral-7b-instruct"]
    for service in config.services.values():
        assert (service.scaling.min_replicas, service.scaling.max_replicas) == (1, 3)
        assert service.instance_type is None  # BentoCloud infers it from the service's own resources
    assert config.secrets == ["vllm-api-key", "huggingface"] and not config.access_authorization
    # bentoml checks the gated model's HF_TOKEN against the --secret flags, not the file's secrets
    assert options["secret"] == ("vllm-api-key", "huggingface") and options["instance_type"] is None
    # each service says what it runs on (read from its generated module) and which secrets it reads
    assert "  # the router: cpu 1, memory 1Gi; reads secrets: vllm-api-key\n  assistant-l4:\n" in text
    assert "  # a model service: 1 x nvidia-l4; reads secrets: huggingface, vllm-api-key\n  llama3.1-8b-instruct:\n" in text
    assert "  # a model service: 1 x nvidia-l4; reads secrets: vllm-api-key\n  qwen3-8b:\n" in text


def test_gateway_deploy_with_bentocloud_auth_and_no_gated_model_names_no_secret():
    text, options = gateway_dry_run("tiny-gateway", "BENTOCLOUD_AUTH=1")
    config = bentoml_cattr.structure(yaml.safe_load(text), DeploymentConfigSchema)
    assert config.access_authorization is True and config.secrets is None and options["secret"] == ()
    assert list(config.services) == ["tiny-gateway", "tiny-dev", "tiny-think", "tiny-embed"]
    assert "  # a model service: cpu 2, memory 4Gi; reads secrets: none\n  tiny-think:\n" in text


def test_gateway_deploy_refuses_one_instance_type_for_every_service():
    result = make("deploy", "MODEL=tiny-gateway", "BENTOCLOUD_AUTH=1", "INSTANCE_TYPE=gpu.l4.1", "DRY_RUN=1")
    assert result.returncode == 2 and result.stdout == ""
    assert "each service of a gateway gets BentoCloud's choice" in result.stderr


@pytest.mark.parametrize(
    "model,secrets",
    [
        ("llama3.1-8b-instruct", ("huggingface", "vllm-api-key")),  # gated, one GPU
        ("llama3.3-70b-instruct", ("huggingface", "vllm-api-key")),  # tensor parallel over 4 GPUs
        ("qwen2.5-0.5b-instruct-cpu", ("vllm-api-key",)),  # CPU, not gated
    ],
)
def test_deploy_attaches_the_api_key_secret_and_leaves_the_instance_type_to_bentocloud(model, secrets):
    argv = dry_run(model, "API_KEY_SECRET=vllm-api-key", "SCALING_MIN=1", "SCALING_MAX=3")
    options = bentoml_deploy_options(argv)
    assert options["name"] == model and (options["scaling_min"], options["scaling_max"]) == (1, 3)
    assert options["secret"] == secrets
    assert options["instance_type"] is None  # BentoCloud infers it from the service's resources
    assert options["env"] == () and options["access_authorization"] is None


def test_instance_type_override_is_passed_through():
    options = bentoml_deploy_options(dry_run("qwen3-8b", "API_KEY_SECRET=key", "INSTANCE_TYPE=gpu.a100.1x80"))
    assert options["instance_type"] == "gpu.a100.1x80"


def test_deploy_without_an_api_key_is_refused_and_says_how():
    result = make("deploy", "MODEL=tiny-dev", "DRY_RUN=1", **SECRET_VALUES)
    assert result.returncode != 0 and result.stdout == ""
    assert result.stderr.splitlines()[0] == (
        "A deployment answers anyone who has its URL. Give API_KEY_SECRET=<a BentoCloud secret holding VLLM_API_KEY> "
        "(create one with `make secret NAME=vllm-api-key KEY=VLLM_API_KEY`), or BENTOCLOUD_AUTH=1 to have BentoCloud "
        "check callers' API tokens instead."
    )


def test_bentocloud_auth_deploys_with_bentoclouds_access_authorization():
    options = bentoml_deploy_options(dry_run("tiny-dev", "BENTOCLOUD_AUTH=1"))
    assert options["access_authorization"] is True and options["secret"] == () and options["env"] == ()


def test_deploy_without_login_names_the_login_command(tmp_path):
    result = make("deploy", "MODEL=tiny-dev", "API_KEY_SECRET=key", BENTOML_HOME=str(tmp_path))
    assert result.returncode != 0
    assert "Not logged in to BentoCloud: run `bentoml cloud login`" in result.stderr


def test_secret_value_reaches_bentoml_in_a_private_file_never_on_the_command_line(tmp_path):
    value = CANARY + " with $pace, 'quotes' and = signs"
    path = bento.write_value_file(tmp_path, "VLLM_API_KEY", value)
    command = bento.secret_command("vllm-api-key", "VLLM_API_KEY", path)
    assert command[1:4] == ["secret", "create", "vllm-api-key"] and not any(CANARY in arg for arg in command)
    assert path.stat().st_mode & 0o777 == 0o600
    assert parse_kvs_argument_callback(None, None, tuple(command[4:])) == [("VLLM_API_KEY", value)]  # as bentoml reads it


def test_secret_dry_run_and_logged_out_show_no_value(tmp_path):
    result = make("secret", "NAME=vllm-api-key", "KEY=VLLM_API_KEY", "DRY_RUN=1", **SECRET_VALUES)
    assert result.returncode == 0 and CANARY not in result.stdout + result.stderr
    argv = shlex.split(result.stdout)
    assert argv[1:4] == ["secret", "create", "vllm-api-key"] and len(argv) == 5
    assert argv[4].startswith("VLLM_API_KEY=@") and argv[4].endswith("/VLLM_API_KEY")

    result = make("secret", "KEY=VLLM_API_KEY", DRY_RUN="1")
    assert result.returncode != 0 and result.stderr.startswith("Give both: make secret NAME=<secret name> KEY=")

    result = make("secret", "NAME=vllm-api-key", "KEY=VLLM_API_KEY", BENTOML_HOME=str(tmp_path), VLLM_API_KEY=CANARY)
    assert result.returncode != 0 and CANARY not in result.stdout + result.stderr
    assert "Not logged in to BentoCloud" in result.stderr


