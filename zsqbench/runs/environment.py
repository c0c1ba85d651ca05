"""Where and how a trial runs: data root, device, caches, offline mode and compute settings.

At the defaults nothing here changes a trial's numbers; the compute settings that change them
at the rounding level (memory format, compilation) or more (TF32, bf16) are recorded with
every result. An environment travels to worker processes as a plain dict.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from zsqbench.errors import UserError
from zsqbench.perf.compute import ComputeSettings
from zsqbench.runs.lease import DEFAULT_TIMEOUT_S

OFFLINE_ENV = "ZSQBENCH_OFFLINE"


def offline_from_env() -> bool:
    """``ZSQBENCH_OFFLINE=1`` (or true/yes): never download, as tests and CI run."""
    return os.environ.get(OFFLINE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


@dataclass
class Environment:
    data_root: Path
    device: torch.device
    cache_dir: Path
    teacher_weights: Path | None = None
    # Missing test sets and pinned teacher weights are downloaded (checksums verified) unless offline.
    offline: bool = False
    eval_batch_size: int = 500
    # Compute settings (zsqbench.perf.compute). Only the memory format has a measured default
    # (None: channels-last on CPU, NCHW on CUDA).
    precision: str = "fp32"  # "bf16": convolutions in bfloat16, everything else float32
    channels_last: bool | None = None
    compile: bool = False
    tf32: bool | None = None  # None: PyTorch's defaults
    # The plugins' speed-only options by plugin name (ComputeSettings.switches; not in trial ids).
    switches: dict[str, dict[str, Any]] = field(default_factory=dict)
    # A trial lease whose heartbeat is older than this is stale (zsqbench.runs.lease).
    lease_timeout_s: float = DEFAULT_TIMEOUT_S

    @property
    def compute(self) -> ComputeSettings:
        return ComputeSettings(self.precision, self.channels_last, self.compile, self.tf32, self.switches)

    def to_dict(self, device: str) -> dict[str, Any]:
        """Plain values for a job (``device`` as the user named it, e.g. "auto")."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        data.update(device=device, data_root=str(self.data_root), cache_dir=str(self.cache_dir),
                    teacher_weights=str(self.teacher_weights) if self.teacher_weights else None)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Environment":
        return cls(
            data_root=Path(data["data_root"]), device=resolve_device(data["device"]),
            cache_dir=Path(data["cache_dir"]),
            teacher_weights=Path(data["teacher_weights"]) if data.get("teacher_weights") else None,
            offline=bool(data.get("offline", False)), eval_batch_size=int(data.get("eval_batch_size", 500)),
            precision=str(data.get("precision", "fp32")), channels_last=data.get("channels_last"),
            compile=bool(data.get("compile", False)), tf32=data.get("tf32"), switches=data.get("switches") or {},
            lease_timeout_s=float(data.get("lease_timeout_s", DEFAULT_TIMEOUT_S)),
        )


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device '{name}': use cpu, cuda, cuda:N or auto") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name} given but no CUDA GPU is available; use --device cpu")
    return device
