"""Tiny synthetic data roots in torchvision's layout (CIFAR-10 and CIFAR-100)."""

from __future__ import annotations

import pickle
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch import nn


def write_test_set(root: Path, dataset: str = "cifar10", n: int = 40, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    classes = 10 if dataset == "cifar10" else 100
    data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    labels = [int(v) for v in rng.integers(0, classes, size=n)]
    if dataset == "cifar10":
        path = root / "cifar-10-batches-py" / "test_batch"
        payload = {"batch_label": "testing batch 1 of 1", "labels": labels, "data": data}
    else:
        path = root / "cifar-100-python" / "test"
        payload = {"filenames": [f"{i}.png" for i in range(n)], "fine_labels": labels,
                   "coarse_labels": [v // 5 for v in labels], "data": data}
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        pickle.dump(payload, fh, protocol=2)
    return path


def write_random_weights(path: Path, model: torch.nn.Module, seed: int = 0) -> Path:
    """A randomly initialized checkpoint whose BNs are not the identity (as in a trained net),
    so no feature map is exactly zero when low-bit activations all round to zero."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0.0, 0.2)
                m.running_mean.normal_(0.0, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return path


def write_normalized_teacher(path: Path, model: nn.Module, seed: int = 0) -> Path:
    """Random weights with BN statistics measured on (normalized) random images, as a trained
    network's are measured on its data: the export's agreement checks need activations of a trained
    network's scale."""
    torch.manual_seed(seed)
    mean, std = torch.tensor([0.4914, 0.4822, 0.4465]), torch.tensor([0.2470, 0.2435, 0.2616])
    x = (torch.rand(256, 3, 32, 32) - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None  # a cumulative average: the statistics of this batch
            m.reset_running_stats()
    with torch.no_grad():
        model.train()(x)
    torch.save(model.eval().state_dict(), path)
    return path


def export_grid_inputs(base: Path, build: Callable[[], nn.Module], seed: int = 0) -> tuple[Path, Path]:
    """The export tests' smoke grids: a 24-image CIFAR-10 test set under base/data and a normalized random
    teacher built under ``seed`` (its conv weights would otherwise depend on whatever test ran before, and
    with them whether a code lands on a rounding tie at the export gate)."""
    root = base / "data"
    write_test_set(root, "cifar10", n=24)
    torch.manual_seed(seed)
    return root, write_normalized_teacher(base / "teacher.pth", build(), seed)


@contextmanager
def one_thread() -> Iterator[None]:
    """torch on one thread inside the block (the smoke grids' numbers then do not depend on the CI machine's
    thread count), the previous count restored after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
