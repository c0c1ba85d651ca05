"""Per-epoch trial checkpoints: everything needed to continue a trial bit for bit.

Written atomically at the end of every epoch (student, generator, optimizer, quantizer ranges
as student buffers, RNG states, the epoch records so far; see
:meth:`zsqbench.runs.folder.TrialFolder.save_checkpoint`). A trial that was killed resumes from
its last checkpoint and produces the same numbers as an uninterrupted run on the same device.

A results folder may come from someone else (a shared file system, a downloaded archive), so a
checkpoint is read with ``torch.load(weights_only=True)``: tensors, numbers, strings and plain
containers only, nothing that imports or runs code. Everything a checkpoint holds is stored in
those forms (the NumPy RNG state as a tensor); checkpoints of the first format stored NumPy arrays,
which are read through NumPy's array constructors alone, allow-listed.
"""

from __future__ import annotations

import io
import pickle
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from zsqbench.errors import UserError

FORMAT = 2
READABLE_FORMATS = (1, 2)


def _numpy_state() -> dict[str, Any]:
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "gauss": float(gauss)}


def _set_numpy_state(state: Any) -> None:
    if isinstance(state, dict):
        keys = state["keys"].numpy().astype(np.uint32)
        np.random.set_state((state["name"], keys, state["pos"], state["has_gauss"], state["gauss"]))
    else:  # format 1: NumPy's own tuple
        np.random.set_state(state)


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": _numpy_state(),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    _set_numpy_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def encode(state: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    torch.save({"format": FORMAT, **state}, buf)
    return buf.getvalue()


def _numpy_array_globals() -> list[Any]:
    """What a NumPy array (and its dtype) needs to be rebuilt from a pickle, and nothing else."""
    multiarray = getattr(np, "_core", None) or np.core
    allowed: list[Any] = [np.ndarray, np.dtype, multiarray.multiarray._reconstruct]
    allowed += [type(np.dtype(t)) for t in ("uint32", "int64", "float64", "uint8")]
    return allowed


def refused_global(exc: pickle.UnpicklingError) -> str:
    """What ``torch.load(weights_only=True)`` refused to import, in a few words, for a one-line error."""
    return next((line.strip() for line in str(exc).splitlines() if "GLOBAL" in line), "a non-tensor object")[:120]


def decode(path: Path, trial_id: str | None = None) -> dict[str, Any]:
    """A checkpoint file's state; a corrupt, foreign or unsafe one is a user error naming the fix."""
    try:
        with torch.serialization.safe_globals(_numpy_array_globals()):
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:  # weights_only refused a global: the file wants to run code
        raise UserError(f"checkpoint {path} holds more than tensors and plain values ({refused_global(exc)}); it is not "
                        "loaded, since it could run code: delete it to restart that trial from scratch") from None
    except Exception as exc:  # truncated zip, ...
        raise UserError(
            f"corrupt checkpoint {path} ({type(exc).__name__}); delete it to restart that trial from scratch"
        ) from None
    if not isinstance(state, dict) or state.get("format") not in READABLE_FORMATS or "epoch" not in state:
        raise UserError(f"checkpoint {path} is not a zsqbench checkpoint; delete it to restart that trial")
    if trial_id is not None and state.get("trial_id") != trial_id:
        raise UserError(f"checkpoint {path} belongs to trial {state.get('trial_id')}, not {trial_id}; delete it")
    return state
