"""Per-epoch trial checkpoints: everything needed to continue a trial bit for bit.

Written atomically at the end of every epoch (student, generator, optimizer, quantizer ranges
as student buffers, RNG states, the epoch records so far; see
:meth:`zsqbench.trial.folder.TrialFolder.save_checkpoint`). A trial that was killed resumes from
its last checkpoint and produces the same numbers as an uninterrupted run on the same device.
"""

from __future__ import annotations

import io
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from zsqbench.errors import UserError

FORMAT = 1


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def encode(state: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    torch.save({"format": FORMAT, **state}, buf)
    return buf.getvalue()


def decode(path: Path, trial_id: str | None = None) -> dict[str, Any]:
    """A checkpoint file's state; a corrupt or foreign one is a user error naming the fix."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # truncated zip, pickle errors, ...
        raise UserError(
            f"corrupt checkpoint {path} ({type(exc).__name__}); delete it to restart that trial from scratch"
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT or "epoch" not in state:
        raise UserError(f"checkpoint {path} is not a zsqbench checkpoint; delete it to restart that trial")
    if trial_id is not None and state.get("trial_id") != trial_id:
        raise UserError(f"checkpoint {path} belongs to trial {state.get('trial_id')}, not {trial_id}; delete it")
    return state
