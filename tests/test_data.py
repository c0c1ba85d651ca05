"""Test-set loading and teacher checkpoints."""

from __future__ import annotations

import pytest
import torch

from zsqbench.trial.data import load_test_set, resolve_data_root
from zsqbench.errors import ChecksumError, DataNotFoundError, UserError
from zsqbench.files import file_digest
from zsqbench.trial.teachers import load_teacher

from fixtures_data import write_random_weights, write_test_set


def test_cifar100_fixture_loads_with_fine_labels(tmp_path):
    path = write_test_set(tmp_path, "cifar100", n=30)
    test = load_test_set("cifar100", tmp_path)
    assert test.images.shape == (30, 3, 32, 32) and test.images.dtype == torch.uint8
    assert test.labels.max() < 100
    assert test.sha256 == file_digest(path)


def test_normalization_matches_definition(tmp_path):
    write_test_set(tmp_path, "cifar10", n=4)
    test = load_test_set("cifar10", tmp_path)
    from zsqbench.api.interfaces import Normalization

    norm = Normalization((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    x = test.normalized(norm)
    assert torch.allclose(x, (test.images.float() / 255 - 0.5) / 0.25)


def test_missing_test_set_says_how_to_fix(tmp_path):
    with pytest.raises(DataNotFoundError, match="ZSQBENCH_DATA"):
        load_test_set("cifar10", tmp_path)


def test_corrupt_test_file_is_reported(tmp_path):
    path = write_test_set(tmp_path, "cifar10", n=4)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(UserError, match="corrupt cifar10 test file"):
        load_test_set("cifar10", tmp_path)


def test_data_root_resolution_order(monkeypatch, tmp_path):
    monkeypatch.setenv("ZSQBENCH_DATA", str(tmp_path / "env"))
    assert resolve_data_root(tmp_path / "flag") == tmp_path / "flag"
    assert resolve_data_root(None) == tmp_path / "env"


def test_pinned_weights_with_wrong_hash_are_refused(plugins, tmp_path):
    entry = plugins.models.get("resnet20_cifar10")
    write_random_weights(tmp_path / "weights" / "resnet20_cifar10.pth", entry.build())
    with pytest.raises(ChecksumError, match="sha256"):
        load_teacher(entry, tmp_path)


def test_explicit_unpinned_weights_are_used_and_hashed(plugins, tmp_path):
    entry = plugins.models.get("resnet20_cifar100")
    path = write_random_weights(tmp_path / "mine.pth", entry.build())
    with pytest.warns(UserWarning, match="not a pinned"):
        loaded = load_teacher(entry, tmp_path, weights_file=path)
    assert loaded.weights_tag == "unpinned" and loaded.sha256 == file_digest(path)


def test_missing_weights_say_how_to_fix(plugins, tmp_path):
    with pytest.raises(DataNotFoundError, match="--teacher-weights"):
        load_teacher(plugins.models.get("resnet20_cifar10"), tmp_path)


def test_garbage_weights_file_is_reported(plugins, tmp_path):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ChecksumError, match="corrupt"):
        load_teacher(plugins.models.get("resnet20_cifar10"), tmp_path, weights_file=bad)


@pytest.mark.realdata
def test_shared_cifar10_and_teacher(plugins, data_root):
    test = load_test_set("cifar10", data_root)
    assert len(test.labels) == 10_000
    assert test.labels[:10].tolist() == [3, 8, 8, 0, 6, 6, 1, 6, 3, 1]
    for name in ("resnet20_cifar10", "resnet20_cifar100"):
        loaded = load_teacher(plugins.models.get(name), data_root)
        assert loaded.weights_tag == "chenyaofo"
