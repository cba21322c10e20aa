"""`make verify-revisions`: ask the Hub whether every revision the catalog pins exists.

    python -m scripts.verify_revisions [--catalog catalog.yaml]

Asks the Hub at HF_ENDPOINT (default https://huggingface.co), with HF_TOKEN when set, for each
model and LoRA adapter pinned by a Hugging Face id. Prints each pin the Hub does not have
(or whose repository it does not know), then a summary.
Exit codes: 0 all found, 1 some missing, 2 the Hub could not be asked or the catalog is invalid.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from scripts.catalog import CatalogError, Entry, load_catalog

ROOT = Path(__file__).resolve().parents[1]


class HubUnreachable(Exception):
    pass


def pins(entries: list[Entry]) -> list[tuple[str, str, str]]:
    """(catalog entry, repo id, revision) of every Hugging Face source in the catalog."""
    found = []
    for entry in entries:
        for source in [entry.model, *entry.lora_adapters]:
            if source.id is not None:
                found.append((entry.name, source.id, source.revision))
    return found


def missing_reason(repo_id: str, revision: str) -> str | None:
    """Why the Hub does not have repo_id at revision; None when it does."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

    try:
        info = HfApi().model_info(repo_id, revision=revision)
    except RevisionNotFoundError:
        return "no such revision"
    except RepositoryNotFoundError:
        return "no such repository (or a private one: set HF_TOKEN)"
    except (HfHubHTTPError, OSError) as exc:
        raise HubUnreachable(str(exc).splitlines()[0]) from None
    if info.sha != revision:
        return f"the Hub resolved it to {info.sha}"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--catalog", type=Path, default=ROOT / "catalog.yaml")
    args = parser.parse_args(argv)
    from huggingface_hub import constants

    try:
        entries = load_catalog(args.catalog)
    except CatalogError as exc:
        print("\n".join(exc.problems), file=sys.stderr)
        return 2
    checked = pins(entries)
    missing = 0
    try:
        for name, repo_id, revision in checked:
            if reason := missing_reason(repo_id, revision):
                missing += 1
                print(f"{name}: {repo_id}@{revision}: {reason}")
    except HubUnreachable as exc:
        print(f"cannot ask the Hub at {constants.ENDPOINT}: {exc}", file=sys.stderr)
        return 2
    print(f"{len(checked) - missing} of {len(checked)} pinned revisions found on {constants.ENDPOINT}")
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
