"""`make new`: one command from a Hugging Face id or a local folder to a checked catalog entry and its folder.

    python -m scripts.new_model MODEL [--name NAME] [--gpu [N x]TYPE | cpu] [--max-model-len N]
                                      [--revision REV] [--catalog catalog.yaml] [--out models]

MODEL is a Hub id (read through huggingface_hub: HF_ENDPOINT and HF_TOKEN apply, and with
HF_HUB_OFFLINE=1 the local Hugging Face cache) or a folder with config.json and weights, which
goes into the BentoML model store. From the model's own config it works out the size, the
KV cache per token, the smallest GPU that holds both (scripts/gpus.py, the catalog's own fit
check), the parsers (scripts/parsers.py), trust_remote_code and HF_TOKEN; it pins the revision,
appends the entry at the end of the catalog's `models:` list (comments and order kept),
checks the whole catalog, renders models/<name>/ and prints what it chose and why.
Nothing is written when anything fails; each failure is one line on stderr and exit code 1.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import os
import re
import sys
import tempfile
import typing as t
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from scripts import generate
from scripts.catalog import CatalogError, load_catalog, load_gateways
from scripts.gpus import GPU_MEMORY_GB, Fit, engine_quantization, gpu_fit, gpu_problem, smallest_fit
from scripts.model_facts import ModelError, ModelFacts, ModelFiles, fetch, read_facts
from scripts.parsers import family_of

ROOT = Path(__file__).resolve().parents[1]

DEFAULT_MAX_MODEL_LEN = 16384
CPU_RESOURCES = {"cpu": 4}
# On CPU, vLLM reserves this share of the machine's memory for the KV cache.
CPU_KV_SHARE = 0.2
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")


@dataclass
class Choice:
    """The entry being built, and the reasons to print beside it."""

    entry: dict[str, t.Any]
    reasons: list[str] = field(default_factory=list)
    revision_comment: str | None = None
    store_folder: Path | None = None  # a local folder to put into the BentoML model store


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9._-]+", "-", text.lower()).strip("-._")[:60] or "model"


def short_number(x: float) -> float:
    return float(f"{x:.4g}")


def parse_gpu(text: str) -> tuple[str, int] | None:
    """`nvidia-l4`, `2xnvidia-l4` or `2 x nvidia-l4` -> (type, count); `cpu` -> None."""
    if text.strip().lower() == "cpu":
        return None
    match = re.fullmatch(r"\s*(?:(\d+)\s*[x*]\s*)?([a-z0-9-]+)\s*", text.lower())
    if not match or match.group(2) not in GPU_MEMORY_GB:
        raise ModelError(f"GPU={text}: expected [N x]TYPE with TYPE one of {', '.join(GPU_MEMORY_GB)}, or cpu")
    return match.group(2), int(match.group(1) or 1)


def choose_hardware(facts: ModelFacts, max_model_len: int, gpu: str | None, reasons: list[str]) -> Fit | None:
    """The Fit of the chosen GPUs (GPU= checked, else the smallest that fits); None for CPU."""
    sizing = dict(dtype=facts.dtype, quantization=facts.quantization, kv_bytes_per_token=facts.kv_bytes_per_token, max_model_len=max_model_len)
    if gpu is not None:
        wanted = parse_gpu(gpu)
        if wanted is None:
            return None
        gpu_type, count = wanted
        if problem := gpu_problem(gpu_type, count, facts.dtype, facts.attention_heads, facts.kv_heads):
            raise ModelError(f"GPU={gpu}: {problem}")
        fit = gpu_fit(facts.params_billion, gpu_type, count, **sizing)
        if not fit.fits:
            raise ModelError(f"GPU={gpu}: {fit.explain()}; give larger or more GPUs, or a smaller MAX_MODEL_LEN")
        reasons.append(f"GPU={gpu} as asked: {fit.explain()}")
        return fit
    fit, passed_over = smallest_fit(facts.params_billion, heads=facts.attention_heads, kv_heads=facts.kv_heads, **sizing)
    if fit is None:
        raise ModelError(f"does not fit on any GPU choice up to {passed_over[-1]}; try a quantized model or a smaller MAX_MODEL_LEN")
    reasons.append(f"smallest fit: {fit.explain()}")
    if passed_over:
        reasons.append(f"  smaller options passed over: {'; '.join(passed_over[-3:])}")
    if (tokens := fit.kv_tokens) is not None:
        reasons.append(f"  KV cache room: about {tokens} tokens, {tokens / max_model_len:.1f} full {max_model_len}-token sequences")
    return fit


def model_source(files: ModelFiles, name: str, choice: Choice) -> dict[str, t.Any]:
    if files.model_id is None:
        tag = f"{name}:{folder_version(files.folder)}"
        choice.store_folder = files.folder
        choice.reasons.append(f"local folder {files.folder}: into the BentoML model store as {tag}")
        return {"bentoml_tag": tag}
    source: dict[str, t.Any] = {"id": files.model_id, "revision": files.revision}
    if exclude := exclude_patterns(files.repo_files):
        source["exclude"] = exclude
    choice.revision_comment = f"revision: {files.revision_origin}"
    choice.reasons.append(f"revision {files.revision}: {files.revision_origin}")
    return source


def folder_version(folder: Path) -> str:
    """A model-store version from the folder's file names, sizes and modification times:
    the same files give the same tag (and are not copied twice), changed ones a new tag."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        stat = path.stat()
        digest.update(f"{path.relative_to(folder)}\0{stat.st_size}\0{stat.st_mtime_ns}\0".encode())
    return digest.hexdigest()[:16]


def exclude_patterns(repo_files: t.Sequence[str]) -> list[str]:
    """Files not to download: the original/ checkpoint and .pt/.pth copies beside safetensors."""
    if not any(f.endswith(".safetensors") for f in repo_files):
        return []
    patterns = ["original/**"] if any(f.startswith("original/") for f in repo_files) else []
    patterns += [p for p in ("*.pth", "*.pt") if any(f.endswith(p[1:]) for f in repo_files)]
    return patterns


def parser_flags(facts: ModelFacts, model_id: str, choice: Choice) -> tuple[dict, dict]:
    engine: dict[str, t.Any] = {}
    server: dict[str, t.Any] = {}
    family = family_of(facts.model_type, model_id)
    if family is None:
        choice.reasons.append(f"parsers: none for model type {facts.model_type} (no rule in scripts/parsers.py)")
        return engine, server
    if family.tool_call_parser and facts.renders_tools:
        server.update(enable_auto_tool_choice=True, tool_call_parser=family.tool_call_parser)
    think_parser = family.reasoning_parser not in (None, "openai_gptoss")
    if family.reasoning_parser and (facts.thinks or not think_parser):
        engine["reasoning_parser"] = family.reasoning_parser
    tools = server.get("tool_call_parser") or ("off: the chat template has no tools" if family.tool_call_parser else "-")
    reasoning = engine.get("reasoning_parser") or ("off: no </think> in the tokenizer" if family.reasoning_parser else "-")
    choice.reasons.append(f"family {family.name}: tool calls {tools}, reasoning {reasoning}")
    return engine, server


def build_entry(files: ModelFiles, facts: ModelFacts, args: argparse.Namespace) -> Choice:
    label = files.model_id or files.folder.name
    name = args.name or slug(label.split("/")[-1])
    choice = Choice(entry={})
    max_model_len = args.max_model_len or min(facts.max_position_embeddings or 4096, DEFAULT_MAX_MODEL_LEN)
    fit = choose_hardware(facts, max_model_len, args.gpu, choice.reasons)
    engine: dict[str, t.Any] = {"max_model_len": max_model_len, "dtype": facts.dtype}
    if facts.quantization:
        engine["quantization"] = engine_quantization(facts.quantization, fit.gpu_type if fit else None)
    if fit and fit.gpus > 1:
        engine["tensor_parallel_size"] = fit.gpus
    if facts.remote_code:
        engine["trust_remote_code"] = True
        choice.reasons.append(f"trust_remote_code: {facts.remote_code}")
    parser_engine, server = parser_flags(facts, label, choice) if not facts.is_embedding else ({}, {})
    engine.update(parser_engine)
    if fit is None:
        engine["gpu_memory_utilization"] = CPU_KV_SHARE
    elif not facts.is_embedding:
        engine["enable_prefix_caching"] = True
    choice.entry = {
        "name": name,
        "description": describe(label, facts, engine, server),
        "model": model_source(files, name, choice),
        "params_billion": short_number(facts.params_billion),
        "kv_bytes_per_token": facts.kv_bytes_per_token,
        **({"task": "embed"} if facts.is_embedding else {}),
        "engine": engine,
        **({"server": server} if server else {}),
        "resources": {"gpu": fit.gpus, "gpu_type": fit.gpu_type} if fit else {**CPU_RESOURCES, "memory": cpu_memory(facts, max_model_len)},
        "traffic": {"timeout": 600 if "reasoning_parser" in engine else 300},
        **({"envs": ["HF_TOKEN"]} if files.gated else {}),
    }
    if files.gated:
        choice.reasons.append("gated on the Hub: envs [HF_TOKEN]")
    elif files.gated is None and files.model_id:
        choice.reasons.append("gated: not known offline; add HF_TOKEN to envs if the model is gated")
    return choice


def cpu_memory(facts: ModelFacts, max_model_len: int) -> str:
    fit = gpu_fit(facts.params_billion, "nvidia-l4", dtype=facts.dtype, kv_bytes_per_token=facts.kv_bytes_per_token,
                  max_model_len=max_model_len)
    return f"{max(4, math.ceil(2 * fit.needed_gb + 2))}Gi"


def describe(label: str, facts: ModelFacts, engine: dict, server: dict) -> str:
    parts = [f"{short_number(facts.params_billion):g}B parameters"]
    if facts.experts:
        parts.append(f"a mixture of {facts.experts} experts ({short_number(facts.active_params_billion):g}B active per token)")
    parts.append(f"{facts.quantization_bits}-bit {facts.quantization}" if facts.quantization_bits else facts.dtype)
    if facts.is_embedding:
        parts.append("an embedding model")
    extras = [f"tool calling ({server['tool_call_parser']})"] if server else []
    extras += [f"reasoning ({engine['reasoning_parser']})"] if engine.get("reasoning_parser") else []
    if extras:
        parts.append(f"with {' and '.join(extras)}")
    return f"{label} - {', '.join(parts)}."


# The catalog text.


# Small mappings written on one line, as in the hand-written entries.
FLOW_KEYS = {"resources", "traffic", "envs"}


def yaml_value(value: t.Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True, width=1 << 20, allow_unicode=True).strip().removesuffix("...").strip()


def entry_yaml(entry: dict, revision_comment: str | None) -> str:
    """The entry as a `models:` list item, laid out like the hand-written ones."""
    lines = []
    for key, value in entry.items():
        if isinstance(value, dict) and key not in FLOW_KEYS:
            lines.append(f"    {key}:")
            for inner_key, inner in value.items():
                if inner_key == "revision" and revision_comment:
                    lines.append(f"      # {revision_comment}")
                lines.append(f"      {inner_key}: {yaml_value(inner)}")
        else:
            lines.append(f"    {key}: {yaml_value(value)}")
    lines[0] = "  - " + lines[0].lstrip()
    return "\n".join(lines) + "\n"


def with_entry(catalog_text: str, item: str) -> str:
    """The catalog with item appended at the end of its `models:` list, before any later top-level key
    and the comments that introduce it."""
    lines = catalog_text.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if re.match(r"models\s*:", line)), None)
    if start is None:
        raise ModelError("the catalog has no top-level `models:` list")
    end = next((i for i in range(start + 1, len(lines)) if re.match(r"[A-Za-z_][\w-]*\s*:", lines[i])), len(lines))
    while end > start + 1 and (not lines[end - 1].strip() or lines[end - 1].startswith("#")):
        end -= 1
    head, tail = "".join(lines[:end]), "".join(lines[end:]).lstrip("\n")
    if head and not head.endswith("\n"):
        head += "\n"
    return head + "\n" + item + ("\n" + tail if tail else "")


def checked_catalog(path: Path, new_text: str, name: str) -> None:
    """Fail unless the catalog with the new entry validates and ends its models with it."""
    data = yaml.safe_load(new_text)
    if not isinstance(data, dict) or (data.get("models") or [{}])[-1].get("name") != name:
        raise ModelError(f"{path}: could not append to its `models:` list")
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", dir=path.parent, delete=False) as tmp:
        tmp.write(new_text)
    try:
        load_gateways(Path(tmp.name), load_catalog(Path(tmp.name)))
    except CatalogError as exc:
        raise ModelError("the new entry would not validate: " + "; ".join(p.split(": ", 1)[-1] for p in exc.problems)) from None
    finally:
        os.unlink(tmp.name)


def import_folder(tag: str, folder: Path) -> None:
    import shutil

    import bentoml
    from bentoml.exceptions import NotFound

    try:
        bentoml.models.get(tag)
        return  # the same files are there already (the version is their fingerprint)
    except NotFound:
        pass
    with bentoml.models.create(tag, labels={"source": "llm-bentos/scripts/new_model.py"}, metadata={"folder": str(folder)}) as model:
        shutil.copytree(folder, model.path, dirs_exist_ok=True)


def check_local_weights(files: ModelFiles) -> None:
    if files.model_id is None and not any(p.name.endswith(WEIGHT_SUFFIXES) for p in files.folder.iterdir()):
        raise ModelError(f"{files.folder}: no weights (*.safetensors) beside config.json")


def new_model(args: argparse.Namespace) -> Choice:
    files = fetch(args.model, args.revision)
    check_local_weights(files)
    facts = read_facts(files.folder)
    choice = build_entry(files, facts, args)
    name = choice.entry["name"]
    catalog_text = args.catalog.read_text()
    if name in {e.get("name") for e in (yaml.safe_load(catalog_text) or {}).get("models") or []}:
        raise ModelError(f"{name} is already in {args.catalog}; give another NAME=")
    new_text = with_entry(catalog_text, entry_yaml(choice.entry, choice.revision_comment))
    checked_catalog(args.catalog, new_text, name)
    if choice.store_folder is not None:
        import_folder(choice.entry["model"]["bentoml_tag"], choice.store_folder)
    args.catalog.write_text(new_text)
    generate_args = ["--catalog", str(args.catalog), "--only", name] + (["--out", str(args.out)] if args.out else [])
    if generate.main(generate_args) != 0:
        raise ModelError(f"{args.catalog} was written, but rendering {name} failed: run `make generate`")
    return choice


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="Hugging Face id (ORG/NAME) or a local folder with config.json and weights")
    parser.add_argument("--name", help="catalog name and models/ folder (default: from the id)")
    parser.add_argument("--gpu", help="[N x]TYPE to use instead of the smallest fit, or cpu")
    parser.add_argument("--max-model-len", type=int, help=f"context length (default: the model's, at most {DEFAULT_MAX_MODEL_LEN})")
    parser.add_argument("--revision", help="branch, tag or commit to pin (default: main, resolved to its commit)")
    parser.add_argument("--catalog", type=Path, default=ROOT / "catalog.yaml")
    parser.add_argument("--out", type=Path, help="the models folder (default: models/ beside the catalog)")
    args = parser.parse_args(argv)
    if args.out is None:
        args.out = args.catalog.resolve().parent / "models"
    try:
        choice = new_model(args)
    except ModelError as exc:
        print(f"make new: {exc}; nothing was written", file=sys.stderr)
        return 1
    name = choice.entry["name"]
    print(f"added {name} to {args.catalog} and rendered {args.out / name}/:")
    for line in choice.reasons:
        print(f"  {line}")
    print(f"serve it with: make serve MODEL={name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
