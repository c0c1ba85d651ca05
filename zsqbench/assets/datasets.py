"""What is known about a dataset without loading it: its class count, test-set size and download
pins, and the one near-chance rule every view flags finished trials with.

Torch-free, so the leaderboard, compare and plot commands (which must not import torch) read the
same class counts the trainer evaluates with (:mod:`zsqbench.assets.data` re-exports all of it).
"""

from __future__ import annotations

from dataclasses import dataclass

from zsqbench.errors import UnknownNameError


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    num_classes: int
    folder: str
    test_file: str
    label_key: str
    meta_file: str
    url: str
    md5: str  # of the archive at ``url``, as torchvision pins it
    num_test_images: int  # the full test split (a smaller set is a subset or a fixture)


IMAGENET = "imagenet"

DATASETS = {
    "cifar10": DatasetInfo("cifar10", 10, "cifar-10-batches-py", "test_batch", "labels", "batches.meta",
                           "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                           "c58f30108f718f92721af3b95e74349a", 10_000),
    "cifar100": DatasetInfo("cifar100", 100, "cifar-100-python", "test", "fine_labels", "meta",
                            "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
                            "eb9058c3a382ffc7106e4002c42a8d85", 10_000),
    # Not downloadable (no url): read from the user's copy by zsqbench.assets.imagenet.
    IMAGENET: DatasetInfo(IMAGENET, 1000, "imagenet", "val", "", "", "", "", 50_000),
}


def dataset_info(name: str) -> DatasetInfo:
    try:
        return DATASETS[name]
    except KeyError:
        raise UnknownNameError(f"unknown dataset '{name}'. Known datasets: {', '.join(DATASETS)}") from None


#: A finished trial at or below this multiple of chance accuracy is flagged in every view: it is
#: not a result, whatever its PTQ accuracy was (a student calibrated at chance never "collapses").
CHANCE_FLAG_FACTOR = 1.5


def near_chance(top1: float, num_classes: int) -> bool:
    """Top-1 no better than guessing: the trial ran, but its number says nothing about the method."""
    return top1 <= CHANCE_FLAG_FACTOR * 100.0 / num_classes
