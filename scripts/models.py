"""Look up catalog entries by name for the Makefile, without loading vLLM.

    python scripts/models.py require NAME    exit 2 with the list of names if NAME is not an entry
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

CATALOG = Path(__file__).resolve().parents[1] / "catalog.yaml"


def entry_names(catalog: Path = CATALOG) -> list[str]:
    return [m["name"] for m in yaml.safe_load(catalog.read_text())["models"]]


def require(name: str) -> int:
    names = entry_names()
    if name in names:
        return 0
    given = f"MODEL={name}" if name else "MODEL is not set"
    print(f"{given}: not in catalog.yaml. Choose one of: {', '.join(names)}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "require":
        sys.exit(__doc__)
    sys.exit(require(sys.argv[2]))
