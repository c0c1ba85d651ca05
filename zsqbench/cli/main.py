"""Entry point: parses, dispatches, and turns user errors into one line and exit code 2."""

from __future__ import annotations

import argparse
import os
import sys
import warnings

from zsqbench import __version__
from zsqbench.cli import (
    analyze_cmd,
    bench_cmd,
    compare_cmd,
    export_cmd,
    leaderboard_cmd,
    plot_cmd,
    plugins_cmd,
    run_cmd,
    status_cmd,
    teacher_eval_cmd,
)
from zsqbench.errors import UserError

SUBCOMMANDS = (run_cmd, status_cmd, plugins_cmd, leaderboard_cmd, compare_cmd, plot_cmd, analyze_cmd, bench_cmd,
               export_cmd, teacher_eval_cmd)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="zsqbench",
        description="Benchmark zero-shot quantization methods: generators x losses x bit-widths x seeds.",
    )
    parser.add_argument("--version", action="version", version=f"zsqbench {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in SUBCOMMANDS:
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    warnings.simplefilter("default")
    try:
        return int(args.execute(args) or 0)
    except UserError as exc:
        print(f"zsqbench: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("zsqbench: interrupted; finished trials are saved, re-run the same command to continue", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`zsqbench leaderboard --json | head`): not an error of ours.
        # Point stdout at /dev/null so the interpreter's final flush cannot raise again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
