"""`python -m scripts.tiny` (`make tiny-model`): the tiny offline models into the BentoML model store,
or the tiny Llama into a folder or a Hugging Face cache; see llama.py for the options."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from scripts.tiny import llama
from scripts.tiny.common import import_to_bentoml_store
from scripts.tiny.llama import DEFAULT_TAG, place_in_hf_cache, save_hf_folder
from scripts.tiny.store import MAKERS, import_tiny_model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=llama.__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="write the Hugging Face folder here instead")
    parser.add_argument("--tag", default=DEFAULT_TAG, help=f"BentoML model tag (default {DEFAULT_TAG})")
    parser.add_argument("--hf-cache", type=Path, help="lay the model out as a Hugging Face hub cache here")
    parser.add_argument("--repo-id", help="with --hf-cache: the repository id, ORG/NAME")
    parser.add_argument("--revision", help="with --hf-cache: the 40-hex commit sha")
    args = parser.parse_args(argv)

    if args.hf_cache is not None:
        if not (args.repo_id and args.revision):
            parser.error("--hf-cache needs --repo-id and --revision")
        if not re.fullmatch(r"[0-9a-f]{40}", args.revision):
            parser.error("--revision must be a 40-character lowercase hex commit sha")
        print(f"building the tiny model into the Hugging Face cache {args.hf_cache} ...")
        print(f"wrote {place_in_hf_cache(args.hf_cache, args.repo_id, args.revision)}")
    elif args.out is not None:
        print(f"building the tiny model into {args.out} ...")
        print(f"wrote {save_hf_folder(args.out)}")
    else:
        print(f"putting the tiny model into the BentoML model store as {args.tag} ...")
        import_to_bentoml_store(args.tag, save_hf_folder, "tiny random Llama chat model")
        for tag in MAKERS:
            if tag != DEFAULT_TAG:
                import_tiny_model(tag)
    return 0


if __name__ == "__main__":
    sys.exit(main())
