"""Teacher checkpoints: which one a trial uses, and loading it verified.

:func:`select_checkpoint` decides, before anything runs, which checkpoint a trial will use (its
:class:`~zsqbench.api.spec.TeacherRef` goes into the trial id): an explicit file (matched
against the pinned list by sha256, or by sha1 for checkpoints pinned by sha1 only, as
pytorchcv's are; else "unpinned"), else the first pinned checkpoint found under
``<data root>/weights/``, else the first downloadable one when downloads are allowed.
:func:`load_teacher` then loads exactly that checkpoint, verifying its digest: a file found under
a pinned name whose hash differs is an error (a corrupt or substituted teacher silently changes
every number), and so is an explicit file that changed since the trial was planned. A file a pin
declares refused (:class:`~zsqbench.api.models.RefusedFile`, e.g. pytorchcv >= 0.0.61's 73.06 %
ResNet-18 in place of the papers' 71.47 % one) is refused under every name and route, with why
and where the right file is. Whatever loads, the sha256 of the file read is what provenance records.
"""

from __future__ import annotations

import hashlib
import io
import tempfile
import warnings
import zipfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from zsqbench.api.models import Normalization, PretrainedWeights, RefusedFile, TeacherModel
from zsqbench.api.spec import TeacherRef, TrialSpec
from zsqbench.assets.download import download
from zsqbench.errors import ChecksumError, DataNotFoundError, UserError
from zsqbench.files import file_digest, made_folders, write_bytes_atomic
from zsqbench.progress import ProgressSink

if TYPE_CHECKING:
    from zsqbench.runs.environment import Environment
    from zsqbench.runs.folder import TrialFolder

UNPINNED = "unpinned"
#: points by which a measured FP top-1 may differ from its pin (IMAGENET.md §5.1: PIL/torchvision
#: versions move it by a few hundredths)
FP_TOLERANCE = 0.15


def fp_verdict(top1: float, expected: float | None, complete: bool, tolerance: float = FP_TOLERANCE
               ) -> tuple[str, bool]:
    """How a measured FP top-1 compares with the checkpoint's expectation: ``no-expectation`` and
    ``subset`` (nothing to compare: unpinned weights, or not the full test set the expectation is
    for) pass; else ``ok`` or ``outside``. Shared by every trial's first check and ``teacher-eval``."""
    if expected is None:
        return "no-expectation", True
    if not complete:
        return "subset", True
    return ("ok", True) if abs(top1 - expected) <= tolerance else ("outside", False)


@dataclass(frozen=True)
class LoadedTeacher:
    module: nn.Module
    weights_tag: str
    weights_path: Path
    sha256: str
    normalization: Normalization
    expected_top1: float | None


@lru_cache(maxsize=64)
def _digest(path: Path, size: int, mtime_ns: int, algorithm: str) -> str:
    return file_digest(path, algorithm)


def sha256_of(path: Path) -> str:
    """The file's sha256, hashed once per process while the file is unchanged."""
    st = path.stat()
    return _digest(path.resolve(), st.st_size, st.st_mtime_ns, "sha256")


def sha1_of(path: Path) -> str:
    """The file's sha1 (what pytorchcv pins and puts in its file names), hashed once per process."""
    st = path.stat()
    return _digest(path.resolve(), st.st_size, st.st_mtime_ns, "sha1")


def _uses_sha1(entry: TeacherModel) -> bool:
    """Whether identifying a file for ``entry`` needs its sha1: a sha1-only pin or a refused file."""
    return any((w.sha1 and not w.sha256) or w.refused for w in entry.weights)


def _refusal(entry: TeacherModel, w: PretrainedWeights, refused: RefusedFile, path: Path, sha1: str | None) -> str:
    found = f"sha1 {sha1[:12]}…" if sha1 else "by its name"
    where = (f"download {w.url} and unzip {w.filename} into <data root>/weights/" if w.url
             else f"put {w.filename} into <data root>/weights/")
    expected = f", {w.expected_top1}%" if w.expected_top1 is not None else ""
    return (f"weights file {path} ({found}) is {refused.reason}: refused for teacher '{entry.name}', whose "
            f"'{w.tag}' checkpoint is {w.filename} ({w.digest[:13]}…{expected}); {where} "
            "(never pytorchcv's pretrained=True)")


def fetch_by_hand(w: PretrainedWeights, dest: Path) -> str:
    """How to get a pinned checkpoint without us: its URL (and the zip member), its pinned digest, and
    the final path it must have (what every missing-or-undownloadable weights message ends with)."""
    algorithm, _, expected = w.digest.partition(":")
    check = f"{algorithm} {expected}{'…' if not (w.sha256 or w.sha1) else ''}"  # a prefix pin: a prefix
    if not w.url:
        return f"put {w.filename} ({check}) at {dest}"
    if w.url.endswith(".zip"):
        return f"download {w.url} by hand and unzip {w.archive_member or 'its checkpoint'} from it as {dest} ({check})"
    return f"download {w.url} by hand to {dest} ({check})"


def refuse_known_wrong(entry: TeacherModel, path: Path, sha1: str | None = None) -> None:
    """Raise :class:`ChecksumError` when ``path`` is a file a pin of ``entry`` refuses, by its
    name or by its sha1 (hashed here when ``sha1`` is None and the teacher refuses any file)."""
    if not any(w.refused for w in entry.weights):
        return
    sha1 = sha1 or sha1_of(path)
    hit = entry.refused_file(path.name, sha1)
    if hit is not None:
        raise ChecksumError(_refusal(entry, hit[0], hit[1], path, sha1))


def _matching_pin(entry: TeacherModel, sha256: str, sha1: str | None) -> PretrainedWeights | None:
    """The pinned checkpoint a file with these digests is: by sha256, or by sha1 where only sha1
    is pinned (a sha256 pin is never satisfied by a sha1 match), or by the sha256 prefix of a
    prefix-only pin."""
    return next((w for w in entry.weights if w.identifies(sha256, sha1)), None)


def _explicit(weights_file: Path) -> Path:
    path = Path(weights_file).expanduser()
    if not path.is_file():
        raise DataNotFoundError(f"teacher weights file not found: {path}; check --teacher-weights")
    return path


def select_checkpoint(entry: TeacherModel, data_root: Path, weights_file: Path | None = None,
                      offline: bool = True) -> TeacherRef:
    """The checkpoint trials of ``entry`` will use under these settings (nothing is loaded)."""
    if weights_file is not None:
        path = _explicit(weights_file)
        sha = sha256_of(path)
        sha1 = sha1_of(path) if _uses_sha1(entry) else None
        refuse_known_wrong(entry, path, sha1)
        pinned = _matching_pin(entry, sha, sha1)
        return TeacherRef(tag=pinned.tag, digest=pinned.digest) if pinned else TeacherRef(tag=UNPINNED,
                                                                                         digest=f"sha256:{sha}")
    folder = data_root / "weights"
    for w in entry.weights:
        if (folder / w.filename).is_file():
            return TeacherRef(tag=w.tag, digest=w.digest)
    for w in entry.weights:  # a refused file where the pinned one should be: say why it is not used
        for r in w.refused:
            if (folder / r.filename).is_file():
                raise ChecksumError(_refusal(entry, w, r, folder / r.filename, None))
    downloadable = next((w for w in entry.weights if w.url), None)
    if not offline and downloadable is not None:
        return TeacherRef(tag=downloadable.tag, digest=downloadable.digest)
    names = ", ".join(w.filename for w in entry.weights)
    how = (f"run without --offline to download it, or {fetch_by_hand(downloadable, folder / downloadable.filename)}"
           if downloadable else "(none can be downloaded)")
    raise DataNotFoundError(
        f"no weights for teacher '{entry.name}' under {folder} (looked for {names}); "
        f"set --data-root/ZSQBENCH_DATA, pass --teacher-weights FILE, {how}"
    )


def _verify_pinned(entry: TeacherModel, w: PretrainedWeights, path: Path, sha256: str) -> None:
    sha1 = sha1_of(path) if w.sha1 and not w.sha256 else None
    if w.identifies(sha256, sha1):
        return
    refuse_known_wrong(entry, path)  # a known wrong file gets its own explanation
    if w.sha256:
        raise ChecksumError(
            f"weights file {path} has sha256 {sha256[:12]}…, expected {w.sha256[:12]}… for the "
            f"'{w.tag}' checkpoint; it is corrupt or a different file: delete it and fetch it again, "
            "or pass it with --teacher-weights to use it as unpinned weights"
        )
    if w.sha1:
        fetch = f" from {w.url}" if w.url else ""
        fetch += f" (unzip {w.archive_member})" if w.url and w.archive_member else ""
        raise ChecksumError(
            f"weights file {path} has sha1 {sha1}, expected {w.sha1} for the '{w.tag}' checkpoint "
            f"{w.filename}; it is corrupt or a different file: delete it and fetch it again{fetch}, "
            "or pass it with --teacher-weights to use it as unpinned weights"
        )
    raise ChecksumError(
        f"weights file {path} has sha256 {sha256[:12]}…, expected one starting {w.sha256_prefix} (as its "
        f"release name says) for the '{w.tag}' checkpoint {w.filename}; delete it and fetch it again"
        + (f" from {w.url}" if w.url else "")
    )


def _download(w: PretrainedWeights, dest: Path, progress: ProgressSink | None) -> None:
    """The release file (for pytorchcv a zip holding the checkpoint); the checkpoint's pinned
    digest is checked before it is written under its name."""
    if not w.url:
        raise DataNotFoundError(f"the '{w.tag}' weights have no download URL; {fetch_by_hand(w, dest)}")
    with made_folders(dest.parent):
        with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".download-") as tmp:
            fetched = download(w.url, Path(tmp) / Path(w.url).name, what=f"the '{w.tag}' weights of {w.filename}",
                               progress=progress, by_hand=f"{fetch_by_hand(w, dest)}, or pass --teacher-weights FILE")
            data = fetched.read_bytes()
        if w.url.endswith(".zip"):
            with zipfile.ZipFile(io.BytesIO(data)) as zf:
                data = zf.read(w.archive_member or zf.namelist()[0])
        algorithm, _, expected = w.digest.partition(":")
        digest = hashlib.new(algorithm, data).hexdigest()
        if not w.identifies(hashlib.sha256(data).hexdigest(), hashlib.sha1(data).hexdigest()):
            raise ChecksumError(f"the downloaded '{w.tag}' weights have {algorithm} {digest[:12]}…, expected "
                                f"{expected[:12]}…; try again, or {fetch_by_hand(w, dest)}")
        write_bytes_atomic(dest, data)


def _load_state(module: nn.Module, path: Path) -> None:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ChecksumError(f"cannot read weights file {path} ({type(exc).__name__}); it is corrupt: fetch it again") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise UserError(f"weights file {path} holds a {type(state).__name__}, not a state dict; "
                        "use a checkpoint in pytorchcv's layout")
    # strict in effect: only the BN counters (absent from pytorchcv's 2019 files) may be missing
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    try:
        missing, unexpected = module.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # same keys, other shapes (e.g. another width or class count)
        first = next((line.strip() for line in str(exc).splitlines() if "size mismatch" in line), str(exc)[:200])
        raise UserError(f"weights file {path} does not fit this model: {first}; use the teacher's own checkpoint "
                        "in pytorchcv's layout") from None
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise UserError(
            f"weights file {path} does not fit this model: {len(missing)} missing keys "
            f"(e.g. {missing[:2]}), {len(unexpected)} unexpected (e.g. {unexpected[:2]}); "
            "use a checkpoint in pytorchcv's layout"
        )


def load_teacher(entry: TeacherModel, ref: TeacherRef, data_root: Path, weights_file: Path | None = None,
                 offline: bool = True, progress: ProgressSink | None = None) -> LoadedTeacher:
    """The FP teacher with exactly the checkpoint ``ref`` names, verified."""
    module = entry.build()
    if ref.tag == UNPINNED:
        if weights_file is None:
            raise UserError(f"this trial uses unpinned teacher weights ({ref.digest[:15]}…); pass the same file "
                            "with --teacher-weights")
        path = _explicit(weights_file)
        refuse_known_wrong(entry, path)
        sha = sha256_of(path)
        if f"sha256:{sha}" != ref.digest:
            raise ChecksumError(f"teacher weights file {path} has changed since the trial was planned (sha256 "
                                f"{sha[:12]}…, the trial's spec says {ref.digest[7:19]}…); re-run the grid to "
                                "plan new trials for it")
        _load_state(module, path)
        default = entry.weights[0]
        warnings.warn(f"{path} is not a pinned {entry.name} checkpoint; using the '{default.tag}' normalization and "
                      "no expected accuracy", stacklevel=2)
        return LoadedTeacher(module, UNPINNED, path, sha, default.normalization, None)

    try:
        w = entry.pinned(ref.tag)
    except KeyError:
        raise UserError(f"teacher '{entry.name}' no longer pins a checkpoint '{ref.tag}'; this trial cannot run "
                        "with this zsqbench version") from None
    if w.digest != ref.digest:
        raise UserError(f"the '{ref.tag}' checkpoint of '{entry.name}' is now pinned as {w.digest[:15]}…, the trial's "
                        f"spec says {ref.digest[:15]}…; re-run the grid to plan new trials")
    path = _explicit(weights_file) if weights_file is not None else data_root / "weights" / w.filename
    if not path.is_file():
        if offline:
            raise DataNotFoundError(f"teacher weights {path} not found ('{w.tag}' checkpoint of '{entry.name}'); "
                                    "run without --offline to download it, pass --teacher-weights FILE, or "
                                    f"{fetch_by_hand(w, path)}")
        _download(w, path, progress)
    sha = sha256_of(path)
    _verify_pinned(entry, w, path, sha)
    _load_state(module, path)
    return LoadedTeacher(module, w.tag, path, sha, w.normalization, w.expected_top1)


def trial_teacher(folder: "TrialFolder", spec: TrialSpec, entry: TeacherModel, env: "Environment") -> LoadedTeacher:
    """A trial's teacher, for rebuilding its student later (analyses, export): its spec's checkpoint
    (trials from before teacher ids: the one the data root gives now); unpinned weights from the path
    the trial recorded, while it holds the same file."""
    ref: TeacherRef = spec.teacher or select_checkpoint(entry, env.data_root, env.teacher_weights, env.offline)
    weights = env.teacher_weights
    if ref.tag == UNPINNED and folder.state == "done":
        recorded = Path(folder.read_result()["teacher"]["path"])
        if recorded.is_file() and f"sha256:{sha256_of(recorded)}" == ref.digest:
            weights = recorded
    return load_teacher(entry, ref, env.data_root, weights, env.offline)
