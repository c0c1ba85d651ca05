"""Test sets (ZSQ never reads training data), data-root resolution and checksums.

The data root comes from, in order: an explicit flag/config value, ``ZSQBENCH_DATA``, or
``~/.cache/zsqbench/data``. CIFAR files are read in torchvision's layout directly, so a root
that holds only the test file (no train batches) works. A missing CIFAR test set is downloaded
(the official archive, md5 verified; only the test split and its metadata are kept) unless
the run is offline. ImageNet's validation set cannot be downloaded (licence): it is read from
the user's copy and decoded once into a memory-mapped cache (:mod:`zsqbench.assets.imagenet`).

A :class:`TestSet` holds uint8 images only; the network's inputs are normalized batch by batch
(:class:`NormalizedImages`), so evaluation memory is bounded by the batch size (the ImageNet
set is 7.5 GB as uint8 and would be 30 GB as float32).
"""

from __future__ import annotations

import os
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import torch

from zsqbench.assets.datasets import IMAGENET, dataset_info
from zsqbench.assets.download import download
from zsqbench.assets.safe_pickle import RefusedGlobal, load_data_pickle_file
from zsqbench.assets.test_set import TestSet
from zsqbench.errors import DataNotFoundError, UserError
from zsqbench.files import file_digest, made_folders, write_bytes_atomic
from zsqbench.progress import ProgressSink

DATA_ENV = "ZSQBENCH_DATA"
DEFAULT_DATA_ROOT = Path("~/.cache/zsqbench/data").expanduser()
CACHE_ENV = "ZSQBENCH_CACHE"
DEFAULT_CACHE_DIR = Path("~/.cache/zsqbench").expanduser()


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


def fetch_by_hand(name: str, root: Path) -> str:
    """How to get a test set without us: the archive's URL and md5, and the final file it must give
    under ``root`` (what every missing-or-undownloadable message ends with)."""
    info = dataset_info(name)
    return (f"download {info.url} (md5 {info.md5}) by hand and extract it into {root}, which must give "
            f"{test_file_path(name, root)}")


def download_test_set(name: str, root: Path, progress: ProgressSink | None = None) -> None:
    """Fetch the official archive, verify its md5, and keep only the test split and metadata."""
    info = dataset_info(name)
    with made_folders(root), tempfile.TemporaryDirectory(dir=root, prefix=".download-") as tmp:
        archive = download(info.url, Path(tmp) / Path(info.url).name, algorithm="md5", digest=info.md5,
                           what=f"the {name} archive", progress=progress,
                           by_hand=f"{fetch_by_hand(name, root)}, or point --data-root/ZSQBENCH_DATA at a copy")
        with tarfile.open(archive, "r:gz") as tar:
            for member in (info.test_file, info.meta_file):
                source = tar.extractfile(f"{info.folder}/{member}")
                if source is None:
                    raise DataNotFoundError(f"the {name} archive from {info.url} holds no {info.folder}/{member}")
                write_bytes_atomic(root / info.folder / member, source.read())


def load_test_set(name: str, root: Path, offline: bool = True, progress: ProgressSink | None = None,
                  cache_dir: Path | None = None) -> TestSet:
    """The test split, downloaded first when it is missing and ``offline`` is False (CIFAR);
    ImageNet from the user's copy through its decoded cache under ``cache_dir``."""
    info = dataset_info(name)
    if name == IMAGENET:
        from zsqbench.assets.imagenet import load_imagenet  # PIL and the cache only when asked for

        return load_imagenet(root, resolve_cache_dir(cache_dir), progress)
    path = test_file_path(name, root)
    if not path.is_file():
        if offline:
            raise DataNotFoundError(
                f"{name} test set not found at {path}; set --data-root or ZSQBENCH_DATA to a folder "
                f"holding {info.folder}/{info.test_file} (torchvision layout), run without --offline "
                f"(and without ZSQBENCH_OFFLINE) to download it, or {fetch_by_hand(name, root)}"
            )
        download_test_set(name, root, progress)
    try:
        raw = load_data_pickle_file(path)
    except RefusedGlobal as exc:
        raise UserError(f"{name} test file {path} is not a plain CIFAR pickle: it asks to import {exc}, which "
                        "could run code, so it is not read; delete it and download the test set again") from None
    except Exception as exc:
        raise UserError(
            f"corrupt {name} test file {path} ({type(exc).__name__}: {exc}); delete it and download it again"
        ) from None
    try:
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
