"""Command line: python -m moe {prepare, train, render, generate, serve, serve-bench, quantize, convert, figures} --help

One module per command, each with add_parser(subparsers) and run(args) -> int; the flags several
commands share are in common.py. The commands parse and call: what a Python user would need too
(which trainer a layout takes, its checks) lives in the library.

Exit codes: 0 done; 2 bad input, refused before any work (a bad flag or file, a locked or unwritable
run directory, a damaged checkpoint, changed settings on --resume); 3 training stopped by a loss or
weights that are not finite (the last good checkpoint is kept); 130 training interrupted by Ctrl-C or
SIGTERM after writing a checkpoint (continue with --resume); 1 anything else (a bug: a traceback).
"""

from __future__ import annotations

import argparse
import sys

from moe.cli import convert, figures, generate, prepare, quantize, render, serve, serve_bench, train
from moe.cli.common import EXIT_BAD_INPUT, EXIT_INTERRUPTED, EXIT_OK, EXIT_STOPPED

COMMANDS = (figures, prepare, train, render, generate, serve, serve_bench, quantize, convert)  # the order --help lists


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m moe", description="A Mixture-of-Experts transformer, tiny to GPT-4 shape."
    )
    sub = p.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(line_buffering=True)  # each report line as it is printed, into a file or pipe too
    try:
        return args.func(args)
    except KeyboardInterrupt as e:  # Ctrl-C outside training's checkpointing handler, or its second one
        print(f"\naborted: {e or 'interrupted'}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except RuntimeError as e:
        from moe.training import TrainingError

        if isinstance(e, TrainingError):
            print(f"error: {e}", file=sys.stderr)
            return EXIT_STOPPED
        raise


__all__ = ["EXIT_BAD_INPUT", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_STOPPED", "build_parser", "main"]
