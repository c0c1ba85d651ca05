#!/usr/bin/env python3
"""CI: CONTRIBUTING.md's plugin walkthrough, verbatim, in a scratch folder, on the real teacher.

Writes every file the guide shows (a fenced block after ``<!-- file: PATH -->``), runs every command
it shows (the bash blocks after ``<!-- commands -->``, line by line, in order) in the folder that
holds them, then uninstalls the package and removes the folder, whatever happened. The guide's
``pip install`` runs offline into the current environment (``--no-deps --no-index
--no-build-isolation`` appended); everything else runs as written. Needs ZSQBENCH_DATA (the
CIFAR-10 test set and weights/); nothing is downloaded (ZSQBENCH_OFFLINE=1).

Usage: python .ci/contributing_walkthrough.py [--keep]   (--keep: leave the scratch folder)
Exit status: 0 when every command succeeded, else the failing command's status (2: bad setup).
"""

from __future__ import annotations

import importlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GUIDE = ROOT / "CONTRIBUTING.md"
PACKAGE = "zsqbench-noise"
OFFLINE_PIP = ["--no-deps", "--no-index", "--no-build-isolation"]
_BLOCK = r"\n```[\w-]*\n(.*?)\n```"


def guide_files(text: str) -> dict[str, str]:
    """Path -> content of every block marked ``<!-- file: PATH -->`` (a trailing newline added)."""
    return {m.group(1): m.group(2) + "\n" for m in re.finditer(r"<!-- file: (\S+) -->" + _BLOCK, text, re.S)}


def guide_commands(text: str) -> list[str]:
    """The lines of every bash block marked ``<!-- commands -->``, in order (blank lines dropped)."""
    return [line for m in re.finditer(r"<!-- commands -->" + _BLOCK, text, re.S)
            for line in m.group(1).splitlines() if line.strip()]


def _offline(command: str) -> str:
    """The guide's ``pip install ...`` into this interpreter's environment, without the network."""
    if not command.startswith("pip install "):
        return command
    code = command.split("#", 1)[0].strip()
    return f'"{sys.executable}" -m {code} {" ".join(OFFLINE_PIP)}'


def _installed() -> bool:
    importlib.invalidate_caches()  # the environment changes under this process (pip install/uninstall)
    try:
        metadata.distribution(PACKAGE)
    except metadata.PackageNotFoundError:
        return False
    return True


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # so that the cleanup below runs on SIGTERM too


def run(keep: bool) -> int:
    if not os.environ.get("ZSQBENCH_DATA"):
        print("walkthrough: ZSQBENCH_DATA is not set; point it at the folder with the CIFAR-10 test set and "
              "weights/", file=sys.stderr)
        return 2
    if _installed():
        print(f"walkthrough: {PACKAGE} is already installed here; pip uninstall {PACKAGE} first (the walkthrough "
              "installs and removes it)", file=sys.stderr)
        return 2
    text = GUIDE.read_text()
    files, commands = guide_files(text), guide_commands(text)
    if not files or not commands:
        print(f"walkthrough: {GUIDE.name} has no marked files or commands", file=sys.stderr)
        return 2
    scratch = Path(tempfile.mkdtemp(prefix="zsq-walkthrough-"))
    env = {**os.environ, "ZSQBENCH_OFFLINE": "1", "ZSQBENCH_CACHE": str(scratch / "cache"),
           "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}
    env.pop("ZSQBENCH_PLUGINS", None)
    signal.signal(signal.SIGTERM, _terminate)
    started = time.monotonic()
    try:
        for rel, content in files.items():
            (scratch / rel).parent.mkdir(parents=True, exist_ok=True)
            (scratch / rel).write_text(content)
        print(f"walkthrough: {len(files)} files from {GUIDE.name} in {scratch}", flush=True)
        for command in commands:
            print(f"$ {command}", flush=True)
            t0 = time.monotonic()
            code = subprocess.run(["bash", "-euo", "pipefail", "-c", _offline(command)], cwd=scratch,
                                  env=env).returncode
            print(f"  ({time.monotonic() - t0:.0f} s, exit {code})", flush=True)
            if code != 0:
                print(f"walkthrough: failed: {command}", file=sys.stderr)
                return code
        print(f"walkthrough: all {len(commands)} commands succeeded in {time.monotonic() - started:.0f} s")
        return 0
    finally:
        if _installed():
            subprocess.run([sys.executable, "-m", "pip", "uninstall", "--yes", "--quiet", PACKAGE], check=False)
        if not keep:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(run(keep="--keep" in sys.argv[1:]))
