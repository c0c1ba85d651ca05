"""Teachers: a pretrained FP network with its pinned checkpoints and what the core must know of it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from torch import nn


@dataclass(frozen=True)
class Normalization:
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


@dataclass(frozen=True)
class RefusedFile:
    """A known checkpoint that must never stand in for a pinned one, and why.

    It is recognised by its release file name or by its sha1 (``sha1_prefix``: the 8 hex digits
    pytorchcv puts in its file names, or the full digest), so a copy renamed to the pinned name is
    caught as well. Example: pytorchcv >= 0.0.61 fetches a different ResNet-18 file for
    ``pretrained=True`` (73.06 % instead of the papers' 71.47 %, IMAGENET.md §1.2); a trial on it
    would silently not be the papers' protocol. ``reason`` says what the file is, in words.
    """

    filename: str
    sha1_prefix: str
    reason: str

    def matches(self, name: str, sha1: str | None) -> bool:
        """Whether a file called ``name`` with this ``sha1`` (None: not hashed) is this file."""
        return name == self.filename or (sha1 is not None and sha1.startswith(self.sha1_prefix.lower()))


@dataclass(frozen=True)
class PretrainedWeights:
    """One pinned checkpoint of a teacher: where it comes from, how it is checked, what it expects.

    ``filename`` is looked up under ``<data root>/weights/``; ``url`` (with ``sha1`` as in
    pytorchcv's release names) is where it is downloaded from. The pinned digest (``sha256``,
    else ``sha1``) identifies the checkpoint in every trial id that uses it. A file whose sha1
    equals a sha1-only pin *is* that checkpoint (explicit files are matched by either digest).
    ``refused`` lists known wrong files for this checkpoint (:class:`RefusedFile`): offered under
    the pinned name or with ``--teacher-weights`` for this teacher (pinned or unpinned), they are
    refused with their reason and where to get this checkpoint (``url``).
    """

    tag: str
    filename: str
    normalization: Normalization
    expected_top1: float | None
    sha256: str | None = None
    url: str | None = None
    sha1: str | None = None
    archive_member: str | None = None
    note: str = ""
    refused: tuple[RefusedFile, ...] = ()
    # the sha256 *prefix* a release name carries (torchvision's ``resnet18-f37072fd.pth``), for files
    # whose full digest is not known yet: exactly torchvision's own download check, no stronger.
    # Used only when neither sha256 nor sha1 is pinned; pin the full sha256 once a file is verified.
    sha256_prefix: str | None = None

    def identifies(self, sha256: str, sha1: str | None) -> bool:
        """Whether a file with these digests is this checkpoint: by its sha256 when one is pinned
        (a sha1 match never satisfies a sha256 pin), else by its sha1, else by the sha256 prefix.
        ``sha1`` may be None (not hashed) unless this is a sha1-only pin."""
        if self.sha256:
            return sha256 == self.sha256
        if self.sha1:
            return sha1 == self.sha1
        return bool(self.sha256_prefix) and sha256.startswith(self.sha256_prefix)

    @property
    def digest(self) -> str:
        """``sha256:<hex>`` or ``sha1:<hex>`` (``sha256:<prefix>`` for a prefix pin): the pinned identity."""
        if self.sha256:
            return f"sha256:{self.sha256}"
        if self.sha1:
            return f"sha1:{self.sha1}"
        if self.sha256_prefix:
            return f"sha256:{self.sha256_prefix}"
        raise ValueError(f"pinned weights '{self.tag}' ({self.filename}) have neither sha256 nor sha1")


@dataclass(frozen=True)
class TeacherModel:
    """A pretrained FP network registered by a model plugin.

    Everything the core and the methods need to know about the architecture is declared here
    rather than assumed: the input size (generators and benchmarks build images of it), the
    classifier's module path, and named sets of module paths whose outputs feature losses may
    tap ("default" is required by losses that use the model's recommended maps). ``cam_target`` is
    the layer whose output class-activation maps are made from (SynQ's Grad-CAM term): the last
    convolution with spatial extent; None = the last ``Conv2d`` in registration order. It is not
    part of trial ids (nothing of the model declaration is; the id names the model).
    """

    name: str
    description: str
    arch: str
    dataset: str
    num_classes: int
    build: Callable[[], nn.Module]
    weights: tuple[PretrainedWeights, ...]
    feature_taps: dict[str, tuple[str, ...]] = field(default_factory=dict)
    input_size: tuple[int, int, int] = (3, 32, 32)
    classifier: str | None = None
    # multiply-accumulates of one image's forward (Conv2d and Linear layers only, IMAGENET.md §7.1):
    # what compute estimates scale by; None = unknown (estimates then assume ResNet-20's cost)
    macs: int | None = None
    cam_target: str | None = None

    def refused_file(self, name: str, sha1: str | None) -> tuple[PretrainedWeights, RefusedFile] | None:
        """The pinned checkpoint that refuses a file called ``name`` with this ``sha1``, and the
        refusal; None when no checkpoint of this teacher refuses it."""
        for w in self.weights:
            for r in w.refused:
                if r.matches(name, sha1):
                    return w, r
        return None

    def pinned(self, tag: str) -> PretrainedWeights:
        for w in self.weights:
            if w.tag == tag:
                return w
        raise KeyError(f"teacher '{self.name}' has no pinned checkpoint '{tag}'")
