"""Test-set loading, teacher checkpoints (which one, verified), and verified downloads."""

from __future__ import annotations

import hashlib
import io
import pickle
import tarfile
import zipfile

import pytest
import torch
from support.data import write_random_weights, write_test_set

from zsqbench.api import Normalization
from zsqbench.assets.data import load_test_set, resolve_data_root
from zsqbench.assets.datasets import DATASETS
from zsqbench.assets.download import download
from zsqbench.assets.teachers import load_teacher, select_checkpoint
from zsqbench.errors import ChecksumError, DataNotFoundError, UserError
from zsqbench.files import file_digest


def test_cifar100_fixture_loads_with_fine_labels(tmp_path):
    path = write_test_set(tmp_path, "cifar100", n=30)
    test = load_test_set("cifar100", tmp_path)
    assert test.images.shape == (30, 3, 32, 32) and test.images.dtype == torch.uint8
    assert test.labels.max() < 100
    assert test.sha256 == file_digest(path)


def test_normalization_matches_definition(tmp_path):
    write_test_set(tmp_path, "cifar10", n=4)
    test = load_test_set("cifar10", tmp_path)
    norm = Normalization((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    x = test.normalized(norm)
    assert torch.allclose(x, (test.images.float() / 255 - 0.5) / 0.25)


def test_missing_test_set_says_how_to_fix(tmp_path):
    with pytest.raises(DataNotFoundError, match="ZSQBENCH_DATA.*without --offline"):
        load_test_set("cifar10", tmp_path, offline=True)


def test_corrupt_test_file_is_reported(tmp_path):
    path = write_test_set(tmp_path, "cifar10", n=4)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(UserError, match="corrupt cifar10 test file"):
        load_test_set("cifar10", tmp_path)


def test_data_root_resolution_order(monkeypatch, tmp_path):
    monkeypatch.setenv("ZSQBENCH_DATA", str(tmp_path / "env"))
    assert resolve_data_root(tmp_path / "flag") == tmp_path / "flag"
    assert resolve_data_root(None) == tmp_path / "env"


def _load(entry, root, weights_file=None):
    """Select then load, as a trial does."""
    ref = select_checkpoint(entry, root, weights_file, offline=True)
    return load_teacher(entry, ref, root, weights_file, offline=True)


def test_pinned_weights_with_wrong_hash_are_refused(plugins, tmp_path):
    entry = plugins.models.get("resnet20_cifar10")
    write_random_weights(tmp_path / "weights" / "resnet20_cifar10.pth", entry.build())
    assert select_checkpoint(entry, tmp_path).tag == "chenyaofo"
    with pytest.raises(ChecksumError, match="sha256"):
        _load(entry, tmp_path)


def test_explicit_unpinned_weights_are_used_and_hashed(plugins, tmp_path):
    entry = plugins.models.get("resnet20_cifar100")
    path = write_random_weights(tmp_path / "mine.pth", entry.build())
    ref = select_checkpoint(entry, tmp_path, path)
    assert ref.tag == "unpinned" and ref.digest == f"sha256:{file_digest(path)}"
    with pytest.warns(UserWarning, match="not a pinned"):
        loaded = _load(entry, tmp_path, path)
    assert loaded.weights_tag == "unpinned" and loaded.sha256 == file_digest(path)


def test_unpinned_weights_changed_after_planning_are_refused(plugins, tmp_path):
    entry = plugins.models.get("resnet20_cifar10")
    path = write_random_weights(tmp_path / "mine.pth", entry.build(), seed=0)
    ref = select_checkpoint(entry, tmp_path, path)
    write_random_weights(path, entry.build(), seed=1)
    with pytest.raises(ChecksumError, match="changed since the trial was planned"):
        load_teacher(entry, ref, tmp_path, path)


def test_missing_weights_say_how_to_fix(plugins, tmp_path):
    with pytest.raises(DataNotFoundError, match="--teacher-weights.*without --offline"):
        select_checkpoint(plugins.models.get("resnet20_cifar10"), tmp_path, offline=True)
    # online, the first downloadable checkpoint (the papers' pytorchcv file) is planned
    assert select_checkpoint(plugins.models.get("resnet20_cifar10"), tmp_path, offline=False).tag == "pytorchcv"


def test_garbage_weights_file_is_reported(plugins, tmp_path):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ChecksumError, match="corrupt"):
        _load(plugins.models.get("resnet20_cifar10"), tmp_path, bad)


# ----------------------------------------------------------------------------- downloads


def _cifar10_archive(path, n=6):
    """A tar.gz in the official layout (test batch, metadata, and a train batch we must not keep)."""
    payload = {"batch_label": "testing batch 1 of 1", "labels": list(range(n)),
               "data": torch.randint(0, 256, (n, 3072), dtype=torch.uint8).numpy()}
    with tarfile.open(path, "w:gz") as tar:
        for name, blob in (("test_batch", pickle.dumps(payload, protocol=2)), ("batches.meta", b"meta"),
                           ("data_batch_1", b"train")):
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return path


def test_missing_test_set_is_downloaded_verified_and_only_the_test_split_kept(tmp_path, monkeypatch):
    archive = _cifar10_archive(tmp_path / "cifar-10-python.tar.gz")
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    monkeypatch.setitem(DATASETS, "cifar10", DATASETS["cifar10"].__class__(
        **{**DATASETS["cifar10"].__dict__, "url": archive.as_uri(), "md5": md5}))
    root = tmp_path / "root"
    test = load_test_set("cifar10", root, offline=False)
    assert len(test.labels) == 6
    kept = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    assert kept == ["cifar-10-batches-py/batches.meta", "cifar-10-batches-py/test_batch"]


def test_a_download_with_the_wrong_checksum_leaves_nothing(tmp_path, monkeypatch):
    archive = _cifar10_archive(tmp_path / "cifar-10-python.tar.gz")
    monkeypatch.setitem(DATASETS, "cifar10", DATASETS["cifar10"].__class__(
        **{**DATASETS["cifar10"].__dict__, "url": archive.as_uri(), "md5": "0" * 32}))
    root = tmp_path / "root"
    with pytest.raises(ChecksumError, match="md5"):
        load_test_set("cifar10", root, offline=False)
    assert not [p for p in root.rglob("*") if p.is_file()]
    with pytest.raises(DataNotFoundError, match="could not download"):
        download(f"{archive.as_uri()}.missing", tmp_path / "x", what="a file", by_hand="fetch it by hand")
    assert not (tmp_path / "x").exists()


def test_pinned_weights_are_downloaded_from_their_release_zip_and_verified(plugins, tmp_path):
    entry = plugins.models.get("resnet20_cifar10")
    weights = write_random_weights(tmp_path / "w.pth", entry.build())
    blob = weights.read_bytes()
    zipped = tmp_path / "release.pth.zip"
    with zipfile.ZipFile(zipped, "w") as zf:
        zf.writestr("resnet20_cifar10-0597-9b0024ac.pth", blob)
    pinned = entry.pinned("pytorchcv")
    fake = pinned.__class__(**{**pinned.__dict__, "url": zipped.as_uri(), "sha1": hashlib.sha1(blob).hexdigest()})
    entry = entry.__class__(**{**entry.__dict__, "weights": (fake, entry.pinned("chenyaofo"))})
    root = tmp_path / "root"
    ref = select_checkpoint(entry, root, offline=False)
    assert ref.tag == "pytorchcv"
    loaded = load_teacher(entry, ref, root, offline=False)
    assert (root / "weights" / fake.filename).read_bytes() == blob and loaded.weights_tag == "pytorchcv"

    wrong = fake.__class__(**{**fake.__dict__, "sha1": "0" * 40})
    entry = entry.__class__(**{**entry.__dict__, "weights": (wrong,)})
    other = tmp_path / "other"
    with pytest.raises(ChecksumError, match="sha1"):
        load_teacher(entry, select_checkpoint(entry, other, offline=False), other, offline=False)
    assert not (other / "weights" / fake.filename).exists()


@pytest.mark.realdata
def test_shared_cifar10_and_teacher(plugins, data_root):
    test = load_test_set("cifar10", data_root)
    assert len(test.labels) == 10_000
    assert test.labels[:10].tolist() == [3, 8, 8, 0, 6, 6, 1, 6, 3, 1]
    for name in ("resnet20_cifar10", "resnet20_cifar100"):
        entry = plugins.models.get(name)
        ref = select_checkpoint(entry, data_root)
        loaded = load_teacher(entry, ref, data_root)
        assert ref.tag == loaded.weights_tag == "chenyaofo"
        # the same file passed explicitly is recognised as the pinned checkpoint: the same trial id
        assert select_checkpoint(entry, data_root, loaded.weights_path) == ref
