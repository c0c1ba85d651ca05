"""``--lease-timeout``, shared by `run` (when to take a silent worker's trial over) and `status`
(when to call its lease stale), so that both read a folder the same way."""

from __future__ import annotations

import argparse

from zsqbench.runs.lease import DEFAULT_TIMEOUT_S, TIMEOUT_ENV, lease_timeout_from_env


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got '{text}'")
    return value


def add_lease_timeout(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--lease-timeout", type=_positive_seconds, metavar="SECONDS",
                        help=f"{what} (default: ${TIMEOUT_ENV} or {DEFAULT_TIMEOUT_S:.0f})")


def lease_timeout(args: argparse.Namespace) -> float:
    return args.lease_timeout or lease_timeout_from_env()
