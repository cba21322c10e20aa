"""`python -m scripts.bench`: see cli.py."""

import sys

from scripts.bench.cli import main

if __name__ == "__main__":
    sys.exit(main())
