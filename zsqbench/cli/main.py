"""Entry point: parses, dispatches, and turns user errors into one line and exit code 2."""

from __future__ import annotations

import argparse
import errno
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
    ledger_cmd,
    plot_cmd,
    plugins_cmd,
    run_cmd,
    status_cmd,
    teacher_eval_cmd,
)
from zsqbench.errors import UserError

SUBCOMMANDS = (run_cmd, status_cmd, plugins_cmd, leaderboard_cmd, compare_cmd, plot_cmd, analyze_cmd, bench_cmd,
               export_cmd, teacher_eval_cmd, ledger_cmd)


#: OS errors a user fixes (space, a read-only or unwritable folder, a file where a folder should be):
#: one line naming the path, not a traceback, wherever a command meets them.
USER_OS_ERRORS = {
    errno.ENOSPC: "the disk is full; free space or write somewhere else",
    errno.EDQUOT: "the disk quota is exceeded; free space or write somewhere else",
    errno.EROFS: "the file system is read-only; write somewhere else (e.g. another --out)",
    errno.EACCES: "permission denied; fix its permissions or write somewhere else",
    errno.EPERM: "operation not permitted; fix its permissions or write somewhere else",
    errno.ENOTDIR: "a file is where a folder should be; remove it or write somewhere else",
}


class OneLineParser(argparse.ArgumentParser):
    """Usage errors as one line and the command's help to read, instead of the whole usage block
    (the exit status stays argparse's 2). Subcommand parsers are made of the same class."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"zsqbench: error: {' '.join(message.split())}; see `{self.prog} --help`\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="zsqbench",
        description="Benchmark zero-shot quantization methods: generators x losses x bit-widths x seeds.",
    )
    parser.add_argument("--version", action="version", version=f"zsqbench {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in SUBCOMMANDS:
        module.add_parser(sub)
    parser.set_defaults(parsers=sub.choices)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # named by the subcommand that did not take them, so its --help is the one to read
        args.parsers.get(args.command, parser).error(f"unrecognized arguments: {' '.join(extra)}")
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
    except OSError as exc:
        if exc.errno not in USER_OS_ERRORS:
            raise
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"zsqbench: error: {exc.strerror or exc}{where}: {USER_OS_ERRORS[exc.errno]}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
