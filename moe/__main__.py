"""python -m moe: the command line, in moe/cli/ (its docstring lists the commands and exit codes)."""

import sys

from moe.cli import build_parser, main

__all__ = ["build_parser", "main"]

if __name__ == "__main__":
    sys.exit(main())
