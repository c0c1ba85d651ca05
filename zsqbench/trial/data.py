"""CIFAR test sets (ZSQ never reads training data), data-root resolution and checksums.

The data root comes from, in order: an explicit flag/config value, ``ZSQBENCH_DATA``, or
``~/.cache/zsqbench/data``. Files are read in torchvision's layout directly, so a root
that holds only the test file (no train batches) works.
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from zsqbench.errors import DataNotFoundError, UnknownNameError, UserError
from zsqbench.files import file_digest
from zsqbench.api.interfaces import Normalization

DATA_ENV = "ZSQBENCH_DATA"
DEFAULT_DATA_ROOT = Path("~/.cache/zsqbench/data").expanduser()
CACHE_ENV = "ZSQBENCH_CACHE"
DEFAULT_CACHE_DIR = Path("~/.cache/zsqbench").expanduser()


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    num_classes: int
    folder: str
    test_file: str
    label_key: str


DATASETS = {
    "cifar10": DatasetInfo("cifar10", 10, "cifar-10-batches-py", "test_batch", "labels"),
    "cifar100": DatasetInfo("cifar100", 100, "cifar-100-python", "test", "fine_labels"),
}


@dataclass(frozen=True)
class TestSet:
    """A test split in memory: uint8 NCHW images, int64 labels, and the file's sha256."""

    name: str
    images: torch.Tensor
    labels: torch.Tensor
    path: Path
    sha256: str

    def normalized(self, norm: Normalization) -> torch.Tensor:
        mean = torch.tensor(norm.mean).view(1, 3, 1, 1)
        std = torch.tensor(norm.std).view(1, 3, 1, 1)
        return (self.images.float().div_(255.0) - mean) / std


def dataset_info(name: str) -> DatasetInfo:
    try:
        return DATASETS[name]
    except KeyError:
        raise UnknownNameError(f"unknown dataset '{name}'. Known datasets: {', '.join(DATASETS)}") from None


def resolve_data_root(explicit: str | Path | None = None) -> Path:
    if explicit:
        return Path(explicit).expanduser()
    env = os.environ.get(DATA_ENV)
    if env:
        return Path(env).expanduser()
    return DEFAULT_DATA_ROOT


def resolve_cache_dir(explicit: str | Path | None = None) -> Path:
    """Where synthesized data is cached: the flag, else ``ZSQBENCH_CACHE``, else ~/.cache/zsqbench."""
    if explicit:
        return Path(explicit).expanduser()
    return Path(os.environ.get(CACHE_ENV, str(DEFAULT_CACHE_DIR))).expanduser()


def test_file_path(name: str, root: Path) -> Path:
    info = dataset_info(name)
    return root / info.folder / info.test_file


def download_test_set(name: str, root: Path) -> None:
    """Fetch the official archive with torchvision (it holds train batches too; we read only test)."""
    import torchvision

    cls = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
    try:
        cls(str(root), train=False, download=True)
    except Exception as exc:  # network errors come in many types
        raise DataNotFoundError(
            f"could not download the {name} test set into {root}: {exc}; "
            "download it by hand or point --data-root/ZSQBENCH_DATA at a copy"
        ) from None


def load_test_set(name: str, root: Path, download: bool = False) -> TestSet:
    info = dataset_info(name)
    path = test_file_path(name, root)
    if not path.is_file():
        if download:
            download_test_set(name, root)
        if not path.is_file():
            raise DataNotFoundError(
                f"{name} test set not found at {path}; set --data-root or ZSQBENCH_DATA to a folder "
                f"holding {info.folder}/{info.test_file} (torchvision layout), or pass --download"
            )
    try:
        with open(path, "rb") as fh:
            raw = pickle.load(fh, encoding="latin1")
        data = np.asarray(raw["data"], dtype=np.uint8)
        labels = np.asarray(raw[info.label_key], dtype=np.int64)
        images = data.reshape(-1, 3, 32, 32)
    except Exception as exc:
        raise UserError(
            f"corrupt {name} test file {path} ({type(exc).__name__}: {exc}); delete it and download it again"
        ) from None
    if len(images) != len(labels) or len(labels) == 0:
        raise UserError(f"corrupt {name} test file {path}: {len(images)} images vs {len(labels)} labels")
    if labels.min() < 0 or labels.max() >= info.num_classes:
        raise UserError(f"corrupt {name} test file {path}: labels outside 0..{info.num_classes - 1}")
    return TestSet(
        name=name,
        images=torch.from_numpy(images.copy()),
        labels=torch.from_numpy(labels),
        path=path,
        sha256=file_digest(path),
    )
