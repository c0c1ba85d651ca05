"""What :func:`~zsqbench.assets.imagenet.find_imagenet` found, in a module of its own so that the
decode cache (:mod:`~zsqbench.assets.imagenet_cache`) can key on it without importing the finder."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class ImageNetSource:
    """The validation images found: where, in which layout, the class list and each image's
    path (relative to ``val_dir``), size in bytes and label."""

    root: Path  # what the user pointed at (the archives' folder for layout (b))
    val_dir: Path  # the folder of wnid folders actually read (in the cache for layout (b))
    layout: str  # "imagefolder", "torchvision-parsed", "torchvision-archives"
    classes: tuple[str, ...]
    files: tuple[str, ...]
    sizes: tuple[int, ...]
    labels: np.ndarray

    def paths(self) -> list[Path]:
        return [self.val_dir / f for f in self.files]
