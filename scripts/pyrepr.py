"""Python literals for generated code: double quotes, one key per line for dicts that span lines."""

from __future__ import annotations

import json
import typing as t


def pyrepr(value: t.Any, indent: int = 0, _level: int = 0) -> str:
    """Python source for a JSON-like value; with `indent`, dicts and lists go one item per line."""
    if isinstance(value, bool) or value is None:
        return repr(value)
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, dict):
        items = [f"{pyrepr(k)}: {pyrepr(v, indent, _level + 1)}" for k, v in value.items()]
        return _join(items, "{", "}", indent, _level)
    if isinstance(value, (list, tuple)):
        return _join([pyrepr(v, indent, _level + 1) for v in value], "[", "]", indent, _level)
    raise TypeError(f"no Python literal for {type(value).__name__}")


def _join(items: list[str], open_: str, close: str, indent: int, level: int) -> str:
    if not indent or not items:
        return open_ + ", ".join(items) + close
    pad = " " * indent * (level + 1)
    return open_ + "\n" + "".join(f"{pad}{item},\n" for item in items) + " " * indent * level + close
