"""The template modules the scripts use themselves (vLLM's argument parser, the patches), loaded from templates/.

A template module is copied verbatim into every generated folder, where it imports its
siblings as top-level modules (`from patches import ...`). Here each is loaded from its
file under that same name, its sibling imports first, so that those imports find them in
`sys.modules`; the import path is left as it is.
"""

from __future__ import annotations

import ast
import importlib.util
import sys
import types
from pathlib import Path

TEMPLATES = Path(__file__).resolve().parents[1] / "templates"


def template_module(name: str) -> types.ModuleType:
    """templates/<name>.py as the module `name` (once per process)."""
    if name in sys.modules:
        return sys.modules[name]
    path = TEMPLATES / f"{name}.py"
    for sibling in sibling_imports(path):
        template_module(sibling)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def sibling_imports(path: Path) -> list[str]:
    """The other template modules that `path` imports at its top level."""
    names = []
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
        elif isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
    return [n for n in names if "." not in n and (TEMPLATES / f"{n}.py").is_file()]
