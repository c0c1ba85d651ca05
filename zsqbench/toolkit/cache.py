"""A verified, content-addressed cache of tensors on disk, for data that is expensive to make
(HAST's synthetic set takes the better part of a trial) and must never be used when it does not
belong to the settings that asked for it.

An entry lives in ``<root>/<key[:24]>/``, where the key is the sha256 of the settings it was
made from (pass everything the data depends on, e.g. :func:`state_fingerprint` of the network):
``tensors.pt`` and ``manifest.json`` (written last), which records the key, the settings and the
size and sha256 of the tensor file. Anything that does not match, or fails the caller's check,
is reported and rebuilt, never used. While an entry is built, finished parts can be saved one by
one (``parts/``, each with its own digest), so an interrupted build resumes from them; the parts
are deleted once the entry is assembled.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn

from zsqbench.files import file_digest, write_bytes_atomic, write_json_atomic

FORMAT = 1

#: A check of loaded tensors: "" when they are usable, else why not.
Check = Callable[[dict[str, Tensor]], str]


def state_fingerprint(model: nn.Module) -> str:
    """sha256 over a network's state_dict (names, dtypes, shapes, bytes): data made from a
    network follows its weights."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _serialize(tensors: dict[str, Tensor]) -> bytes:
    buffer = io.BytesIO()
    torch.save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, buffer)
    return buffer.getvalue()


def _read(path: Path) -> dict[str, Tensor]:
    data = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(data, dict) or not all(isinstance(v, Tensor) for v in data.values()):
        raise ValueError("not a dict of tensors")
    return data


class TensorCache:
    def __init__(self, root: Path, settings: dict[str, Any]) -> None:
        self.settings = settings
        self.key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()
        self.dir = Path(root) / self.key[:24]
        self.data_path = self.dir / "tensors.pt"
        self.manifest_path = self.dir / "manifest.json"
        self.parts_dir = self.dir / "parts"

    # -- the assembled entry
    def load(self, check: Check) -> tuple[dict[str, Tensor] | None, str]:
        """The verified tensors, or None and why they cannot be used ("" when there are none)."""
        if not self.manifest_path.is_file():
            return None, ""
        try:
            manifest = json.loads(self.manifest_path.read_text())
        except (OSError, json.JSONDecodeError):
            return None, "unreadable manifest"
        if manifest.get("format") != FORMAT or manifest.get("key") != self.key:
            return None, "manifest does not match the requested settings"
        if not self.data_path.is_file():
            return None, f"{self.data_path.name} is missing"
        if (self.data_path.stat().st_size != manifest.get("bytes")
                or file_digest(self.data_path) != manifest.get("sha256")):
            return None, f"{self.data_path.name} does not match its recorded size/sha256 (truncated or modified)"
        try:
            tensors = _read(self.data_path)
        except Exception as exc:  # a file that passed the digest but does not load is still unusable
            return None, f"{self.data_path.name} does not load ({type(exc).__name__})"
        problem = check(tensors)
        return (None, problem) if problem else (tensors, "")

    def save(self, tensors: dict[str, Tensor]) -> None:
        payload = _serialize(tensors)
        write_bytes_atomic(self.data_path, payload)
        write_json_atomic(self.manifest_path, {
            "format": FORMAT, "key": self.key, "bytes": len(payload), "sha256": hashlib.sha256(payload).hexdigest(),
            "tensors": {k: {"shape": list(v.shape), "dtype": str(v.dtype)} for k, v in tensors.items()},
            "settings": self.settings,
        })
        shutil.rmtree(self.parts_dir, ignore_errors=True)

    def invalidate(self) -> None:
        for path in (self.manifest_path, self.data_path):
            path.unlink(missing_ok=True)

    # -- finished parts of an entry being built
    def _part(self, index: int) -> tuple[Path, Path]:
        return self.parts_dir / f"{index:05d}.pt", self.parts_dir / f"{index:05d}.json"

    def save_part(self, index: int, tensors: dict[str, Tensor]) -> None:
        data_path, meta_path = self._part(index)
        payload = _serialize(tensors)
        write_bytes_atomic(data_path, payload)
        write_json_atomic(meta_path, {"key": self.key, "sha256": hashlib.sha256(payload).hexdigest()})

    def load_part(self, index: int, check: Check) -> dict[str, Tensor] | None:
        """A finished part if it is intact, belongs to this key and passes ``check``; else None (redo it)."""
        data_path, meta_path = self._part(index)
        try:
            meta = json.loads(meta_path.read_text())
            if meta.get("key") != self.key or file_digest(data_path) != meta.get("sha256"):
                return None
            tensors = _read(data_path)
        except Exception:
            return None
        return None if check(tensors) else tensors
