"""`make verify-revisions` against the local Hub: it lists exactly the pins the Hub lacks."""

from __future__ import annotations

import os
import subprocess

from conftest import GATED_REPO, ROOT, TINY_REPO, entry_named

MISSING = "0" * 40


def test_verify_revisions_lists_only_the_pins_the_hub_lacks(local_hub, tmp_path, write_catalog, catalog_data):
    entry = entry_named(catalog_data, "qwen2.5-0.5b-instruct-cpu")
    sha = local_hub.hub.repos[TINY_REPO].sha
    pins = {"tiny-pinned": (TINY_REPO, sha), "gated-pinned": (GATED_REPO, sha), "tiny-gone": (TINY_REPO, MISSING),
            "nobody": ("nobody/no-such-model", sha)}
    catalog = write_catalog([{**entry, "name": name, "model": {"id": repo, "revision": rev}} for name, (repo, rev) in pins.items()])
    result = subprocess.run(["make", "-s", "verify-revisions", f"VERIFY_ARGS=--catalog {catalog}"], cwd=ROOT,
                            env={**os.environ, **local_hub.env(tmp_path)}, capture_output=True, text=True, timeout=600)
    assert result.returncode != 0 and "Error 1" in result.stderr, result.stdout + result.stderr  # make's line for exit 1
    assert result.stdout.splitlines() == [
        f"tiny-gone: {TINY_REPO}@{MISSING}: no such revision",
        f"nobody: nobody/no-such-model@{sha}: no such repository (or a private one: set HF_TOKEN)",
        f"2 of 4 pinned revisions found on {local_hub.url}",
    ]
