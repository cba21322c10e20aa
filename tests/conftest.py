"""Shared test setup: the repository's scripts/ and templates/ importable, and catalog helpers."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "scripts"), str(ROOT / "templates")]
VENV_BIN = Path(sys.executable).parent


@pytest.fixture(scope="session")
def catalog_data() -> dict:
    """The repository's catalog.yaml as plain data; tests change deep copies of it."""
    return yaml.safe_load((ROOT / "catalog.yaml").read_text())


@pytest.fixture
def write_catalog(tmp_path, catalog_data):
    """Write a catalog made of the given entries (default: two real ones) and return its path."""

    def write(entries: list[dict] | None = None, name: str = "catalog.yaml") -> Path:
        if entries is None:
            entries = [entry_named(catalog_data, "tiny-dev"), entry_named(catalog_data, "llama3.1-8b-instruct")]
        path = tmp_path / name
        path.write_text(yaml.safe_dump({"models": entries}, sort_keys=False))
        return path

    return write


def entry_named(catalog_data: dict, name: str) -> dict:
    return copy.deepcopy(next(m for m in catalog_data["models"] if m["name"] == name))
