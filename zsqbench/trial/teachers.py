"""Loading a pinned teacher checkpoint: find it, verify it, and say which one it is.

Lookup order: an explicit file (any weights; sha256 recorded and matched against the pinned
list), ``<data root>/weights/<filename>`` for each pinned checkpoint, then a download into
the data root when allowed. A file found under a pinned name whose hash differs is an
error: a corrupt or substituted teacher silently changes every number.
"""

from __future__ import annotations

import io
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from zsqbench.errors import ChecksumError, DataNotFoundError, UserError
from zsqbench.files import file_digest, write_bytes_atomic
from zsqbench.api.interfaces import Normalization, PretrainedWeights, TeacherModel


@dataclass(frozen=True)
class LoadedTeacher:
    module: nn.Module
    weights_tag: str
    weights_path: Path
    sha256: str
    normalization: Normalization
    expected_top1: float | None


def _verify_pinned(w: PretrainedWeights, path: Path, sha256: str) -> None:
    if w.sha256 and sha256 != w.sha256:
        raise ChecksumError(
            f"weights file {path} has sha256 {sha256[:12]}…, expected {w.sha256[:12]}… for the "
            f"'{w.tag}' checkpoint; it is corrupt or a different file: delete it and fetch it again, "
            "or pass it with --teacher-weights to use it as unpinned weights"
        )
    if w.sha1 and not w.sha256:
        sha1 = file_digest(path, "sha1")
        if sha1 != w.sha1:
            raise ChecksumError(
                f"weights file {path} has sha1 {sha1[:12]}…, expected {w.sha1[:12]}… for the "
                f"'{w.tag}' checkpoint; delete it and fetch it again"
            )


def _download(w: PretrainedWeights, dest: Path) -> None:
    from urllib.request import urlopen

    if not w.url:
        raise DataNotFoundError(f"the '{w.tag}' weights have no download URL")
    try:
        with urlopen(w.url, timeout=60) as resp:  # noqa: S310 - pinned https URL
            data = resp.read()
    except Exception as exc:  # network errors come in many types
        raise DataNotFoundError(
            f"could not download {w.url}: {exc}; download it by hand into {dest.parent}"
        ) from None
    if w.url.endswith(".zip"):
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            data = zf.read(w.archive_member or zf.namelist()[0])
    write_bytes_atomic(dest, data)


def _load_state(module: nn.Module, path: Path) -> None:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ChecksumError(f"cannot read weights file {path} ({type(exc).__name__}); it is corrupt: fetch it again") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    missing, unexpected = module.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise UserError(
            f"weights file {path} does not fit this model: {len(missing)} missing keys "
            f"(e.g. {missing[:2]}), {len(unexpected)} unexpected (e.g. {unexpected[:2]}); "
            "use a checkpoint in pytorchcv's layout"
        )


def load_teacher(
    entry: TeacherModel, data_root: Path, weights_file: Path | None = None, download: bool = False
) -> LoadedTeacher:
    module = entry.build()
    if weights_file is not None:
        path = Path(weights_file).expanduser()
        if not path.is_file():
            raise DataNotFoundError(f"teacher weights file not found: {path}; check --teacher-weights")
        sha = file_digest(path)
        pinned = next((w for w in entry.weights if w.sha256 == sha), None)
        _load_state(module, path)
        if pinned is None:
            default = entry.weights[0]
            warnings.warn(
                f"{path} is not a pinned {entry.name} checkpoint; using the '{default.tag}' "
                "normalization and no expected accuracy",
                stacklevel=2,
            )
            return LoadedTeacher(module, "unpinned", path, sha, default.normalization, None)
        return LoadedTeacher(module, pinned.tag, path, sha, pinned.normalization, pinned.expected_top1)

    folder = data_root / "weights"
    for w in entry.weights:
        path = folder / w.filename
        if path.is_file():
            sha = file_digest(path)
            _verify_pinned(w, path, sha)
            _load_state(module, path)
            return LoadedTeacher(module, w.tag, path, sha, w.normalization, w.expected_top1)
    if download:
        w = entry.weights[0]
        path = folder / w.filename
        _download(w, path)
        sha = file_digest(path)
        _verify_pinned(w, path, sha)
        _load_state(module, path)
        return LoadedTeacher(module, w.tag, path, sha, w.normalization, w.expected_top1)
    names = ", ".join(w.filename for w in entry.weights)
    raise DataNotFoundError(
        f"no weights for teacher '{entry.name}' under {folder} (looked for {names}); "
        "set --data-root/ZSQBENCH_DATA, pass --teacher-weights FILE, or --download"
    )
