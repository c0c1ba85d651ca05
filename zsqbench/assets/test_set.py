"""A test split as zsqbench holds it: uint8 images, normalized batch by batch when read.

Its own module so that every loader (CIFAR in :mod:`~zsqbench.assets.data`, ImageNet in
:mod:`~zsqbench.assets.imagenet`) builds the same type without importing the other.
A :class:`TestSet` holds uint8 images only; the network's inputs are normalized batch by batch
(:class:`NormalizedImages`), so evaluation memory is bounded by the batch size (the ImageNet
set is 7.5 GB as uint8 and would be 30 GB as float32).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from zsqbench.api.models import Normalization
from zsqbench.assets.datasets import dataset_info


def normalize(images: torch.Tensor, norm: Normalization) -> torch.Tensor:
    """uint8 images -> the network's float inputs, on the images' device. The operations and their
    order (divide by 255, subtract the mean, divide by the std) are those every recorded number
    was measured with; each element's value does not depend on how the set is split into batches."""
    mean = torch.tensor(norm.mean, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(norm.std, device=images.device).view(1, 3, 1, 1)
    return (images.float().div_(255.0) - mean) / std


class NormalizedImages:
    """A test set's images as a network sees them, normalized slice by slice when read.

    Slicing gives float tensors on the CPU (what export and tests read); :meth:`batch` moves the
    uint8 slice to the device first and normalizes there (a quarter of the transfer)."""

    def __init__(self, images: torch.Tensor, norm: Normalization) -> None:
        self.images = images
        self.norm = norm

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: slice) -> torch.Tensor:
        if not isinstance(index, slice):
            raise TypeError("NormalizedImages is read by slices, e.g. inputs[0:500]")
        return normalize(self.images[index], self.norm)

    def batch(self, start: int, stop: int, device: torch.device) -> torch.Tensor:
        return normalize(self.images[start:stop].to(device, non_blocking=True), self.norm)


@dataclass(frozen=True)
class TestSet:
    """A test split: uint8 NCHW images (in memory, or memory-mapped from a cache), int64 labels,
    and a sha256 that identifies the data (the file's; for ImageNet the cache key, which covers
    the file list, the transform and the PIL version). ``details`` go into each result's provenance."""

    name: str
    images: torch.Tensor
    labels: torch.Tensor
    path: Path
    sha256: str
    details: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def complete(self) -> bool:
        """Whether this is the dataset's full test split (published accuracies refer to it)."""
        return len(self) == dataset_info(self.name).num_test_images

    def inputs(self, norm: Normalization) -> NormalizedImages:
        """The network's inputs, normalized batch by batch when read (bounded memory)."""
        return NormalizedImages(self.images, norm)

    def normalized(self, norm: Normalization) -> torch.Tensor:
        """All inputs at once (float32: small sets only; evaluation reads :meth:`inputs`)."""
        return normalize(self.images, norm)
