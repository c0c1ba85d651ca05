"""Versions, git hash and machine facts recorded in every result row."""

from __future__ import annotations

import platform
import subprocess
from functools import lru_cache
from pathlib import Path

import torch

import zsqbench


@lru_cache(maxsize=1)
def git_hash() -> str:
    """The commit of the zsqbench source tree ('+dirty' if modified), or 'unknown'."""
    src = Path(zsqbench.__file__).resolve().parent.parent
    try:
        head = subprocess.run(
            ["git", "-C", str(src), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(src), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=10,
        ).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def versions() -> dict[str, str]:
    import pluggy
    import pydantic

    out = {
        "zsqbench": zsqbench.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "pluggy": pluggy.__version__,
        "pydantic": pydantic.__version__,
    }
    try:
        import pytorchcv

        out["pytorchcv"] = getattr(pytorchcv, "__version__", "?")
    except ImportError:
        pass
    return out
