"""What a model's own files say about serving it: size, bytes per weight, KV cache, architecture.

Reads `config.json` (and the tokenizer config, generation config and chat template beside it)
from a folder and works out what `make new` needs, without loading any weights:

* the parameter count, dense or mixture-of-experts (all experts, and the active ones);
* the serving dtype and the quantization method (`quantization_config`);
* the KV-cache bytes per token: 2 (K and V) x layers x KV heads x head_dim x bytes per
  element, or layers x (kv_lora_rank + qk_rope_head_dim) x bytes for DeepSeek's MLA.
  Sliding-window layers are counted as full ones, so for such models (Gemma 2 and 3,
  gpt-oss) it is an upper bound;
* whether vLLM or transformers know the architecture natively, or it needs remote code.

Fetching the files (a local folder, the Hugging Face cache, or the Hub) is `fetch`'s job below.
"""

from __future__ import annotations

import functools
import importlib.metadata
import json
import re
from dataclasses import dataclass
from pathlib import Path

from scripts.vllm_answers import answer

# The files `make new` reads; weights are never downloaded for it.
CONFIG_FILES = ["config.json", "tokenizer_config.json", "generation_config.json", "chat_template.jinja", "chat_template.json"]
HF_ID = re.compile(r"^[\w.-]+/[\w.-]+$")
DTYPE_NAMES = {"bfloat16": "bfloat16", "float16": "float16", "half": "float16", "float32": "float32", "float": "float32"}
ELEMENT_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4}


class ModelError(Exception):
    """A model `make new` cannot take, with the reason in one line."""


@dataclass(frozen=True)
class ModelFiles:
    """Where a model's config files are, and where they came from."""

    folder: Path
    model_id: str | None  # the Hub id; None for a local folder
    revision: str | None = None  # the commit the files are from
    revision_origin: str = ""  # how that commit was found, for the catalog comment
    gated: bool | None = None  # None: not known (read from the cache, offline)
    repo_files: tuple[str, ...] = ()  # every file of the repository (to choose what not to download)


@dataclass(frozen=True)
class ModelFacts:
    architecture: str
    model_type: str
    params_billion: float
    active_params_billion: float | None  # mixture of experts: parameters used per token
    experts: int | None
    dtype: str
    quantization: str | None  # quantization_config.quant_method as vLLM names it
    quantization_bits: int | None
    kv_bytes_per_token: int
    attention_heads: int
    kv_heads: int
    max_position_embeddings: int | None
    remote_code: str | None  # why trust_remote_code is needed; None when it is not
    is_embedding: bool
    renders_tools: bool  # the chat template has a place for tools
    thinks: bool  # the tokenizer or chat template has </think>
    has_chat_template: bool


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelError(f"{path}: not readable JSON: {exc}") from None


def text_config(config: dict) -> dict:
    """Multimodal configs keep the language model's numbers under `text_config`."""
    inner = config.get("text_config")
    return {**config, **inner} if isinstance(inner, dict) else config


def head_dim(tc: dict) -> int:
    return tc.get("head_dim") or tc["hidden_size"] // tc["num_attention_heads"]


def attention_params(tc: dict) -> int:
    h, heads = tc["hidden_size"], tc["num_attention_heads"]
    if tc.get("kv_lora_rank"):  # DeepSeek's multi-head latent attention
        qk = tc["qk_nope_head_dim"] + tc["qk_rope_head_dim"]
        q_rank = tc.get("q_lora_rank")
        q = h * q_rank + q_rank * heads * qk if q_rank else h * heads * qk
        kv = h * (tc["kv_lora_rank"] + tc["qk_rope_head_dim"]) + tc["kv_lora_rank"] * heads * (tc["qk_nope_head_dim"] + tc["v_head_dim"])
        return q + kv + heads * tc["v_head_dim"] * h
    hd, kv_heads = head_dim(tc), tc.get("num_key_value_heads") or heads
    return 2 * h * heads * hd + 2 * h * kv_heads * hd


def expert_count(tc: dict) -> int | None:
    return tc.get("num_experts") or tc.get("num_local_experts") or tc.get("n_routed_experts") or None


def moe_layer_count(tc: dict) -> int:
    layers = tc["num_hidden_layers"]
    dense = set(tc.get("mlp_only_layers") or []) | set(range(tc.get("first_k_dense_replace") or 0))
    step = tc.get("decoder_sparse_step") or 1
    return sum(1 for i in range(layers) if i not in dense and (i + 1) % step == 0)


def param_counts(tc: dict) -> tuple[int, int | None]:
    """(total, active) parameters of a decoder; active is None for a dense model."""
    h, layers = tc["hidden_size"], tc["num_hidden_layers"]
    embeddings = tc["vocab_size"] * h * (1 if tc.get("tie_word_embeddings", False) else 2)
    shared = embeddings + layers * (attention_params(tc) + 2 * h)
    experts = expert_count(tc)
    if not experts:
        return shared + layers * 3 * h * tc["intermediate_size"], None
    moe_layers = moe_layer_count(tc)
    expert_size = 3 * h * (tc.get("moe_intermediate_size") or tc["intermediate_size"])
    always = h * experts + 3 * h * (tc.get("shared_expert_intermediate_size") or 0)
    always += (tc.get("n_shared_experts") or 0) * expert_size
    dense = (layers - moe_layers) * 3 * h * tc["intermediate_size"] + shared
    per_token = tc.get("num_experts_per_tok") or tc.get("num_experts_per_token") or 1
    return dense + moe_layers * (experts * expert_size + always), dense + moe_layers * (per_token * expert_size + always)


def serving_dtype(config: dict) -> str:
    name = str(config.get("dtype") or config.get("torch_dtype") or text_config(config).get("torch_dtype") or "bfloat16")
    return DTYPE_NAMES.get(name.removeprefix("torch."), "bfloat16")


def quantization(config: dict) -> tuple[str | None, int | None]:
    """(method, weight bits) from `quantization_config`, with vLLM's method names."""
    q = config.get("quantization_config") or {}
    method = q.get("quant_method")
    if not method:
        return None, None
    if method == "compressed-tensors":
        groups = [g.get("weights") or {} for g in (q.get("config_groups") or {}).values()]
        return "compressed-tensors", next((g.get("num_bits") for g in groups if g.get("num_bits")), None)
    if method == "bitsandbytes":
        return "bitsandbytes", 4 if q.get("load_in_4bit") else 8
    bits = q.get("bits") or q.get("w_bit") or {"fp8": 8, "mxfp4": 4}.get(method)
    return method, bits


def kv_bytes_per_token(tc: dict, dtype: str) -> int:
    element = ELEMENT_BYTES[dtype]
    if tc.get("kv_lora_rank"):
        return tc["num_hidden_layers"] * (tc["kv_lora_rank"] + tc["qk_rope_head_dim"]) * element
    kv_heads = tc.get("num_key_value_heads") or tc["num_attention_heads"]
    return 2 * tc["num_hidden_layers"] * kv_heads * head_dim(tc) * element


@functools.cache
def native_architectures() -> tuple[frozenset[str], frozenset[str]]:
    """Architectures vLLM implements itself, and those transformers does (vLLM runs them too)."""

    def ask_vllm() -> list[list[str]]:
        from transformers.models.auto import modeling_auto
        from vllm.model_executor.models import ModelRegistry

        mappings = [v for k, v in vars(modeling_auto).items() if k.startswith("MODEL_") and k.endswith("_MAPPING_NAMES")]
        in_transformers = {name for m in mappings for names in m.values() for name in ([names] if isinstance(names, str) else names)}
        return [sorted(ModelRegistry.get_supported_archs()), sorted(in_transformers)]

    question = f"architectures, with transformers {importlib.metadata.version('transformers')}"
    in_vllm, in_transformers = answer(question, ask_vllm)
    return frozenset(in_vllm), frozenset(in_transformers)


def remote_code_reason(architecture: str, config: dict, tokenizer_config: dict) -> str | None:
    """Why the model needs trust_remote_code, or None; ModelError when nothing can run it."""
    in_vllm, in_transformers = native_architectures()
    if architecture not in in_vllm and architecture not in in_transformers:
        if not config.get("auto_map"):
            raise ModelError(
                f"unknown architecture {architecture}: neither vLLM nor transformers implements it, "
                "and config.json has no auto_map pointing at the model's own code"
            )
        return f"{architecture} is not native to vLLM or transformers; config.json's auto_map points at the repository's code"
    if tokenizer_config.get("auto_map"):
        return "the tokenizer is the repository's own code (tokenizer_config.json has auto_map)"
    return None


def chat_template_text(folder: Path, tokenizer_config: dict) -> str:
    template = tokenizer_config.get("chat_template") or ""
    if isinstance(template, list):  # named templates: [{"name": ..., "template": ...}]
        template = "\n".join(t.get("template", "") for t in template)
    for name in ("chat_template.jinja", "chat_template.json"):
        if (folder / name).is_file():
            template += (folder / name).read_text()
    return template


def read_facts(folder: Path) -> ModelFacts:
    """The facts of the model whose config files are in folder."""
    config = read_json(folder / "config.json")
    if not config:
        raise ModelError(f"{folder}: no config.json, so nothing tells what model this is")
    architectures = config.get("architectures") or []
    if not architectures:
        raise ModelError(f"{folder}/config.json: no `architectures`, so vLLM could not pick a model class")
    tokenizer_config = read_json(folder / "tokenizer_config.json")
    tc = text_config(config)
    try:
        total, active = param_counts(tc)
        dtype = serving_dtype(config)
        kv = kv_bytes_per_token(tc, dtype)
    except KeyError as exc:
        raise ModelError(f"{folder}/config.json: no {exc.args[0]}, which the size of the model depends on") from None
    method, bits = quantization(config)
    template = chat_template_text(folder, tokenizer_config)
    tokenizer_text = json.dumps(tokenizer_config)
    return ModelFacts(
        architecture=architectures[0],
        model_type=str(config.get("model_type", "")),
        params_billion=total / 1e9,
        active_params_billion=active / 1e9 if active else None,
        experts=expert_count(tc),
        dtype=dtype,
        quantization=method,
        quantization_bits=bits,
        kv_bytes_per_token=kv,
        attention_heads=tc["num_attention_heads"],
        kv_heads=tc.get("num_key_value_heads") or tc["num_attention_heads"],
        max_position_embeddings=tc.get("max_position_embeddings"),
        remote_code=remote_code_reason(architectures[0], config, tokenizer_config),
        is_embedding=architectures[0].endswith("Model"),
        renders_tools="tools" in template,
        thinks="</think>" in template or "</think>" in tokenizer_text,
        has_chat_template=bool(template),
    )


# Fetching the config files.


def fetch(source: str, revision: str | None = None) -> ModelFiles:
    """A local folder as it is, or a Hub id's config files (from the Hub, or the cache when offline)."""
    path = Path(source).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelError(f"{path}: no config.json in this folder")
        return ModelFiles(folder=path.resolve(), model_id=None)
    if not HF_ID.match(source):
        raise ModelError(f"{source}: neither a folder nor a Hugging Face id (ORG/NAME)")
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return from_cache(source, revision)
    return from_hub(source, revision)


def hub_endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


def from_hub(model_id: str, revision: str | None) -> ModelFiles:
    from huggingface_hub import HfApi, get_token, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

    endpoint = hub_endpoint()
    try:
        info = HfApi().model_info(model_id, revision=revision)
    except RevisionNotFoundError:
        raise ModelError(f"{model_id}: the Hub at {endpoint} has no revision {revision}") from None
    except RepositoryNotFoundError:
        token_hint = "" if get_token() else " (or it is private: set HF_TOKEN)"
        raise ModelError(f"{model_id}: not a model the Hub at {endpoint} knows{token_hint}") from None
    except (HfHubHTTPError, OSError) as exc:
        raise ModelError(f"{model_id}: cannot ask the Hub at {endpoint}: {str(exc).splitlines()[0]}") from None
    gated = bool(info.gated)
    if gated and not get_token():
        raise ModelError(f"{model_id} is gated on {endpoint}: set HF_TOKEN to a token that was granted access to it")
    files = tuple(s.rfilename for s in info.siblings or ())
    if files and "config.json" not in files:
        raise ModelError(f"{model_id}: the repository has no config.json at {info.sha}")
    try:
        folder = snapshot_download(model_id, revision=info.sha, allow_patterns=CONFIG_FILES)
    except HfHubHTTPError as exc:
        raise ModelError(f"{model_id}: cannot download its config files: {str(exc).splitlines()[0]}") from None
    origin = f"resolved from {revision or 'main'} by {endpoint}"
    return ModelFiles(Path(folder), model_id, info.sha, origin, gated, files)


def from_cache(model_id: str, revision: str | None) -> ModelFiles:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        folder = Path(snapshot_download(model_id, revision=revision, allow_patterns=CONFIG_FILES, local_files_only=True))
    except LocalEntryNotFoundError:
        raise ModelError(f"{model_id}: not in the Hugging Face cache, and HF_HUB_OFFLINE is set") from None
    origin = f"the Hugging Face cache's snapshot for {revision or 'main'} (offline; not checked against the Hub)"
    repo_files = tuple(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    return ModelFiles(folder, model_id, folder.name, origin, None, repo_files)
