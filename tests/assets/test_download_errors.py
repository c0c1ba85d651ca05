"""What a newcomer without data or internet is told (issue 25): every failed download and every
offline "missing file" error names the final path the file must have, the URL and the pinned
checksum, and never the temporary folder the download went to (gone by the time it is read);
that folder is removed.

Downloads here read ``file://`` URLs (a missing file is a failed download, like no network), so
nothing leaves the machine.
"""

from __future__ import annotations

import dataclasses
import hashlib
import zipfile
from pathlib import Path

import pytest
from conftest import one_line_error, run_argv
from support.data import write_random_weights
from test_data import _cifar10_archive

from zsqbench.api.models import PretrainedWeights
from zsqbench.api.spec import TeacherRef
from zsqbench.assets.data import load_test_set
from zsqbench.assets.data import test_file_path as final_test_file
from zsqbench.assets.datasets import DATASETS
from zsqbench.assets.teachers import load_teacher, select_checkpoint
from zsqbench.errors import ChecksumError, DataNotFoundError, UserError

TEMP_PREFIX = ".download-"


def _leftovers(root: Path) -> list[Path]:
    """Anything a download left behind: its temporary folder or a partial file."""
    return [p for p in root.rglob("*") if p.name.startswith(TEMP_PREFIX) or p.name.endswith(".download")]


def _cifar10_at(monkeypatch, url: str, md5: str) -> None:
    monkeypatch.setitem(DATASETS, "cifar10", dataclasses.replace(DATASETS["cifar10"], url=url, md5=md5))


def _assert_names_the_final_test_file(message: str, root: Path, url: str, md5: str) -> None:
    assert str(final_test_file("cifar10", root)) in message and url in message and md5 in message
    assert TEMP_PREFIX not in message, message


@pytest.mark.parametrize("failure", ["unreachable", "wrong checksum"])
def test_a_failed_test_set_download_names_the_final_file_not_a_temporary_folder(tmp_path, monkeypatch, failure):
    archive = _cifar10_archive(tmp_path / "cifar-10-python.tar.gz")
    if failure == "unreachable":
        url, md5, error = f"{archive.as_uri()}.gone", hashlib.md5(archive.read_bytes()).hexdigest(), DataNotFoundError
    else:
        url, md5, error = archive.as_uri(), "0" * 32, ChecksumError
    _cifar10_at(monkeypatch, url, md5)
    root = tmp_path / "data"
    with pytest.raises(error) as caught:
        load_test_set("cifar10", root, offline=False)
    _assert_names_the_final_test_file(str(caught.value), root, url, md5)
    assert not _leftovers(root) and not final_test_file("cifar10", root).exists()
    assert not root.exists()  # the data root this download created goes with it: the disk as it was


def test_the_offline_missing_test_set_says_where_from_and_where_to(tmp_path):
    info = DATASETS["cifar10"]
    with pytest.raises(DataNotFoundError) as caught:
        load_test_set("cifar10", tmp_path, offline=True)
    _assert_names_the_final_test_file(str(caught.value), tmp_path, info.url, info.md5)


def _zipped_pin(plugins, tmp_path: Path, *, reachable: bool, sha1: str | None = None):
    """resnet20_cifar10 whose only pin is the pytorchcv release zip at a local URL."""
    entry = plugins.models.get("resnet20_cifar10")
    blob = write_random_weights(tmp_path / "w.pth", entry.build()).read_bytes()
    pinned = entry.pinned("pytorchcv")
    zipped = tmp_path / f"{pinned.filename}.zip"
    with zipfile.ZipFile(zipped, "w") as zf:
        zf.writestr(pinned.archive_member, blob)
    url = zipped.as_uri() if reachable else f"{zipped.as_uri()}.gone"
    fake = dataclasses.replace(pinned, url=url, sha1=sha1 or hashlib.sha1(blob).hexdigest())
    return dataclasses.replace(entry, weights=(fake,)), fake


def _assert_names_the_final_checkpoint(message: str, root: Path, w: PretrainedWeights) -> None:
    assert str(root / "weights" / w.filename) in message and w.digest.partition(":")[2] in message, message
    assert (w.url or "") in message and (w.archive_member or "") in message and TEMP_PREFIX not in message


@pytest.mark.parametrize("failure", ["unreachable", "wrong checksum"])
def test_a_failed_checkpoint_download_names_the_final_file_not_a_temporary_folder(plugins, tmp_path, failure):
    entry, w = _zipped_pin(plugins, tmp_path, reachable=failure == "wrong checksum",
                           sha1="0" * 40 if failure == "wrong checksum" else None)
    root = tmp_path / "data"
    with pytest.raises(UserError) as caught:
        load_teacher(entry, select_checkpoint(entry, root, offline=False), root, offline=False)
    assert isinstance(caught.value, ChecksumError if failure == "wrong checksum" else DataNotFoundError)
    _assert_names_the_final_checkpoint(str(caught.value), root, w)
    assert not _leftovers(root) and not (root / "weights" / w.filename).exists()
    assert not root.exists()  # neither data/ nor data/weights/ stays behind, empty


def test_a_failed_download_keeps_folders_that_existed_or_hold_something(tmp_path):
    from zsqbench.files import made_folders

    kept = tmp_path / "data"
    (kept / "notes").mkdir(parents=True)
    with pytest.raises(OSError), made_folders(kept / "weights" / "deep"):
        raise OSError("no space left on device")
    assert sorted(p.name for p in kept.iterdir()) == ["notes"]  # weights/deep removed, data/ and notes/ kept


def test_every_pinned_checkpoint_missing_offline_says_where_from_and_where_to(plugins, tmp_path):
    """Both offline errors (nothing to plan a trial with; the planned checkpoint gone), every pin."""
    for name in plugins.models.names():
        entry = plugins.models.get(name)
        for w in entry.weights:
            with pytest.raises(DataNotFoundError) as caught:
                load_teacher(entry, TeacherRef(tag=w.tag, digest=w.digest), tmp_path, offline=True)
            _assert_names_the_final_checkpoint(str(caught.value), tmp_path, w)
        first = next((w for w in entry.weights if w.url), None)
        if first is not None:
            with pytest.raises(DataNotFoundError) as caught:
                select_checkpoint(entry, tmp_path, offline=True)
            _assert_names_the_final_checkpoint(str(caught.value), tmp_path, first)


def test_the_first_run_without_data_or_internet_is_one_line_naming_the_final_file(plugins, tmp_path, capsys,
                                                                                   monkeypatch):
    archive = _cifar10_archive(tmp_path / "cifar-10-python.tar.gz")
    url, md5 = f"{archive.as_uri()}.gone", hashlib.md5(archive.read_bytes()).hexdigest()
    _cifar10_at(monkeypatch, url, md5)
    monkeypatch.delenv("ZSQBENCH_OFFLINE", raising=False)
    root = tmp_path / "data"
    weights = write_random_weights(tmp_path / "teacher.pth", plugins.models.get("resnet20_cifar10").build())
    message = one_line_error(capsys, run_argv(root, weights, tmp_path / "results", "--generators", "gdfq",
                                              "--loss", "kd", "--bits", "4", "--epochs", "2", "--warmup-epochs", "1",
                                              "--iters-per-epoch", "1", "--batch-size", "4"))
    _assert_names_the_final_test_file(message, root, url, md5)
    assert not _leftovers(root)
