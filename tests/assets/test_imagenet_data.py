"""The ImageNet validation set (IMAGENET.md §5): layouts, labels, the papers' pipeline, the
decoded cache (reused, rebuilt, refused), one-line errors, batched evaluation and `teacher-eval`."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import one_line_error
from PIL import Image
from support.data import write_random_weights, write_test_set
from support.imagenet import WNIDS, expected_labels, image_files, write_archives, write_imagefolder, write_parsed
from torch import nn

import zsqbench.assets.imagenet_cache as cache_mod
from zsqbench.api import Normalization, PretrainedWeights, TeacherModel, hookimpl
from zsqbench.assets.data import load_test_set
from zsqbench.assets.datasets import DATASETS
from zsqbench.assets.imagenet import ARCHIVE_MD5, find_imagenet
from zsqbench.errors import ChecksumError, DataNotFoundError, UserError
from zsqbench.trial.evaluate import top1

IMAGENET_NORM = Normalization((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def load(root: Path, cache: Path, progress=None):
    return load_test_set("imagenet", root, offline=True, progress=progress, cache_dir=cache)


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {p.relative_to(root).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


class Messages:
    shows_info = False

    def __init__(self):
        self.lines: list[str] = []

    def start(self, description, total):
        pass

    def advance(self, completed, info=""):
        pass

    def message(self, text):
        self.lines.append(text)


@pytest.fixture(scope="module")
def folder_set(tmp_path_factory):
    """An ImageFolder fixture loaded once: (root, cache, test set)."""
    base = tmp_path_factory.mktemp("in1k")
    write_imagefolder(base / "root" / "val")
    return base / "root", base / "cache", load(base / "root", base / "cache")


def _papers_pipeline(path: Path) -> np.ndarray:
    """The repos' code path: torchvision's Resize(256) + CenterCrop(224) on the RGB PIL image."""
    from torchvision import transforms

    with open(path, "rb") as fh:
        image = Image.open(fh).convert("RGB")
    out = transforms.CenterCrop(224)(transforms.Resize(256)(image))
    return np.asarray(out).transpose(2, 0, 1)


def _by_hand(path: Path) -> np.ndarray:
    """An independent computation: shorter side to 256 (bilinear), the central 224 x 224."""
    image = Image.open(path).convert("RGB")
    w, h = image.size
    scale = 256 / min(w, h)
    size = (256, int(h * 256 / w)) if w <= h else (int(w * 256 / h), 256)
    assert abs(max(size) - max(w, h) * scale) < 1
    image = image.resize(size, Image.Resampling.BILINEAR) if size != (w, h) else image
    left, top = round((size[0] - 224) / 2), round((size[1] - 224) / 2)
    return np.asarray(image)[top:top + 224, left:left + 224].transpose(2, 0, 1)


def test_imagefolder_labels_shapes_and_the_papers_pipeline(folder_set):
    root, cache, test = folder_set
    assert test.images.shape == (8, 3, 224, 224) and test.images.dtype == torch.uint8
    assert test.labels.tolist() == expected_labels() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert test.details["layout"] == "imagefolder" and test.details["num_classes"] == 4 and not test.complete
    files = find_imagenet(root, cache).paths()
    for i, path in enumerate(files):
        assert np.array_equal(test.images[i].numpy(), _papers_pipeline(path)), path.name
    gray = files[[p.parent.name for p in files].index("n01440764")]  # image 2 is grayscale
    assert Image.open(gray).mode == "L" and torch.equal(test.images[0][0], test.images[0][1])
    cmyk = next(p for p in files if Image.open(p).mode == "CMYK")
    assert np.array_equal(test.images[files.index(cmyk)].numpy(), _by_hand(cmyk))
    small = next(p for p in files if Image.open(p).size == (180, 120))  # upscaled, not square
    assert np.array_equal(test.images[files.index(small)].numpy(), _by_hand(small))


def test_other_roots_of_one_copy_share_its_cache_and_leave_it_untouched(folder_set, tmp_path):
    root, cache, test = folder_set
    before = snapshot(root)
    assert load(root / "val", cache).sha256 == test.sha256  # the val folder itself
    nested = tmp_path / "data"
    shutil.copytree(root, nested / "imagenet")  # <data root>/imagenet/val: copies get new mtimes
    again = load(nested, cache)
    assert again.sha256 == test.sha256 and torch.equal(again.images, test.images)
    assert snapshot(root) == before


def _fixture_md5s(monkeypatch, devkit: Path, val: Path) -> None:
    from torchvision.datasets import imagenet as tv

    monkeypatch.setitem(tv.ARCHIVE_META, "devkit", (devkit.name, hashlib.md5(devkit.read_bytes()).hexdigest()))
    monkeypatch.setitem(tv.ARCHIVE_META, "val", (val.name, hashlib.md5(val.read_bytes()).hexdigest()))


def test_torchvision_archives_are_parsed_into_the_cache_through_the_wnid_mapping(folder_set, tmp_path, monkeypatch):
    from torchvision.datasets import imagenet as tv

    assert {tv.ARCHIVE_META[k][0]: tv.ARCHIVE_META[k][1] for k in ("devkit", "val")} == ARCHIVE_MD5  # spec §5.3
    _, cache, reference = folder_set
    root = tmp_path / "archives"
    devkit, val = write_archives(root)
    before = snapshot(root)
    with pytest.raises(ChecksumError, match="md5") as info:  # the pinned md5s: a fixture is not the real devkit
        load(root, tmp_path / "cache")
    assert "\n" not in str(info.value)
    _fixture_md5s(monkeypatch, devkit, val)
    test = load(root, cache)
    assert snapshot(root) == before  # nothing moved, extracted or written beside the user's archives
    assert test.details["layout"] == "torchvision-archives" and test.path.is_relative_to(cache)
    assert test.labels.tolist() == expected_labels()  # devkit ids -> wnids -> sorted index
    assert test.sha256 == reference.sha256 and torch.equal(test.images, reference.images)  # one cache per copy
    monkeypatch.setattr(cache_mod, "preprocess", _refuse)
    assert load(root, cache).sha256 == test.sha256  # parsed folder and cache both reused


def test_a_parsed_root_takes_the_class_list_from_meta_bin(tmp_path):
    root = write_parsed(tmp_path / "parsed")
    test = load(root, tmp_path / "cache")
    assert test.details["layout"] == "torchvision-parsed" and test.labels.tolist() == expected_labels()
    shutil.rmtree(root / "val" / WNIDS[0])  # a subset without the first class keeps the head's indices
    subset = load(root, tmp_path / "cache")
    assert subset.labels.tolist() == [1, 1, 2, 2, 3, 3]


def _refuse(path):
    raise AssertionError(f"decoded {path} although the cache holds it")


def test_the_cache_is_reused_and_a_changed_file_list_gets_its_own(tmp_path, monkeypatch):
    root, cache = tmp_path / "root", tmp_path / "cache"
    write_imagefolder(root / "val")
    first = load(root, cache)
    calls = []
    real = cache_mod.preprocess
    monkeypatch.setattr(cache_mod, "preprocess", lambda p: calls.append(p) or real(p))
    second = load(root, cache)
    assert not calls and second.sha256 == first.sha256 and torch.equal(second.images, first.images)
    gone = next((root / "val" / WNIDS[0]).iterdir())
    gone.unlink()
    third = load(root, cache)
    assert len(calls) == 7 and third.sha256 != first.sha256 and len(third) == 7
    assert sorted(p.name for p in (cache / "imagenet").iterdir() if not p.name.startswith(".")) == sorted(
        [first.details["cache"].rsplit("/", 1)[1], third.details["cache"].rsplit("/", 1)[1]])


def test_a_cache_built_from_other_data_or_half_written_is_refused_and_rebuilt(tmp_path, monkeypatch):
    root, other, cache = tmp_path / "root", tmp_path / "other", tmp_path / "cache"
    write_imagefolder(root / "val")
    write_imagefolder(other / "val")
    next((other / "val" / WNIDS[1]).iterdir()).unlink()
    good = load(root, cache)
    foreign = load(other, cache)
    mine, theirs = Path(good.details["cache"]), Path(foreign.details["cache"])
    shutil.rmtree(mine)
    shutil.copytree(theirs, mine)  # another set's cache under this set's name
    calls = []
    real = cache_mod.preprocess
    monkeypatch.setattr(cache_mod, "preprocess", lambda p: calls.append(p) or real(p))
    progress = Messages()
    rebuilt = load(root, cache, progress)
    assert len(calls) == 8 and torch.equal(rebuilt.images, good.images) and torch.equal(rebuilt.labels, good.labels)
    assert any("refusing the ImageNet cache" in m and "other data" in m for m in progress.lines)
    (mine / "meta.json").unlink()  # a copy interrupted before its last file: incomplete
    calls.clear()
    assert torch.equal(load(root, cache, progress).images, good.images) and len(calls) == 8
    assert "incomplete" in progress.lines[-1]


def test_an_interrupted_build_leaves_nothing_that_looks_complete(tmp_path, monkeypatch):
    root, cache = tmp_path / "root", tmp_path / "cache"
    write_imagefolder(root / "val")
    real = cache_mod.preprocess

    def interrupted(path):
        if path.name.endswith("00000006.JPEG"):
            raise KeyboardInterrupt
        return real(path)

    monkeypatch.setattr(cache_mod, "preprocess", interrupted)
    with pytest.raises(KeyboardInterrupt):
        load(root, cache)
    assert [p.name for p in (cache / "imagenet").iterdir()] == []  # neither a published nor a staging folder
    stale = cache / "imagenet" / ".building-x"
    stale.mkdir()
    monkeypatch.setattr(cache_mod, "preprocess", real)
    test = load(root, cache)
    assert len(test) == 8 and stale.exists()  # a live build's staging folder is left alone
    os.utime(stale, (1, 1))
    next((root / "val" / WNIDS[0]).iterdir()).unlink()
    load(root, cache)  # another build cleans up what a killed one left
    assert not stale.exists()


def test_corrupt_image_is_a_one_line_error_and_nothing_is_cached(tmp_path):
    root = tmp_path / "root"
    write_imagefolder(root / "val")
    bad = next((root / "val" / WNIDS[2]).iterdir())
    bad.write_bytes(bad.read_bytes()[:200])
    with pytest.raises(UserError, match=f"cannot decode the ImageNet image .*{bad.name}") as info:
        load(root, tmp_path / "cache")
    assert "\n" not in str(info.value)
    assert not any((tmp_path / "cache" / "imagenet").iterdir())


@pytest.mark.parametrize("setup, error, match", [
    (lambda r: r.mkdir(), DataNotFoundError, "cannot download ImageNet.*ILSVRC2012_img_val.tar.*image-net.org"),
    (lambda r: write_imagefolder(r / "train"), DataNotFoundError, "training images.*validation"),
    (lambda r: write_imagefolder(r / "imagenet" / "train"), DataNotFoundError, "training images"),
    (lambda r: write_archives(r)[0].parent.joinpath("ILSVRC2012_img_val.tar").unlink(), DataNotFoundError,
     "but not ILSVRC2012_img_val.tar"),
    (lambda r: _too_many(r), UserError, "51 images.*training set"),
])
def test_what_is_not_a_validation_set_is_refused_in_one_line(tmp_path, setup, error, match):
    root = tmp_path / "root"
    setup(root)
    with pytest.raises(error, match=match) as info:
        load(root, tmp_path / "cache")
    assert "\n" not in str(info.value)


def _too_many(root: Path) -> None:
    folder = root / "val" / "n01440764"
    folder.mkdir(parents=True)
    data = image_files()[0][2]
    for i in range(51):
        (folder / f"{i}.JPEG").write_bytes(data)


def test_subset_warning_goes_to_the_progress_and_the_provenance(folder_set, tmp_path):
    root, cache, _ = folder_set
    progress = Messages()
    test = load(root, cache, progress)
    assert any(m.startswith("warning:") and "8 images of 4 classes, not 50,000 of 1,000" in m for m in progress.lines)
    assert test.details["warnings"] and test.details["complete"] is False


def test_evaluation_normalizes_per_batch_with_the_same_values(folder_set, tmp_path):
    _, _, test = folder_set
    lazy, full = test.inputs(IMAGENET_NORM), test.normalized(IMAGENET_NORM)
    assert torch.equal(lazy[0:8], full) and torch.equal(lazy.batch(3, 5, torch.device("cpu")), full[3:5])
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 7, stride=8), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 4))
    dev = torch.device("cpu")
    assert top1(model, lazy, test.labels, dev, 3) == top1(model, full, test.labels, dev, 3)
    write_test_set(tmp_path, "cifar10", n=30)
    cifar = load_test_set("cifar10", tmp_path)
    norm = Normalization((0.49, 0.48, 0.44), (0.25, 0.24, 0.26))
    assert torch.equal(torch.cat([cifar.inputs(norm)[i:i + 7] for i in range(0, 30, 7)]), cifar.normalized(norm))
    # a budget's eval_images: the first n images of the same lazy set
    assert top1(model, lazy, test.labels, dev, 2, images=3) == top1(model, full[0:3], test.labels[:3], dev, 2)
    assert top1(model, lazy, test.labels, dev, 2, images=100) == top1(model, full, test.labels, dev, 2)


# -- teacher-eval


def _tiny_imagenet_teacher(weights: Path) -> TeacherModel:
    def build() -> nn.Module:
        return nn.Sequential(nn.Conv2d(3, 4, 7, stride=8), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 1000))

    write_random_weights(weights, build())
    sha = hashlib.sha256(weights.read_bytes()).hexdigest()
    pinned = PretrainedWeights("fake", weights.name, IMAGENET_NORM, expected_top1=71.47, sha256=sha)
    return TeacherModel("tiny_in1k", "a random-init stand-in", "tiny", "imagenet", 1000, build, (pinned,),
                        input_size=(3, 224, 224))


@pytest.fixture
def tiny_in1k(tmp_path, monkeypatch):
    """An ImageNet fixture root with a pinned random-init teacher registered as 'tiny_in1k'."""
    import zsqbench.api.plugins as plugins_mod

    root = tmp_path / "root"
    write_imagefolder(root / "val")
    entry = _tiny_imagenet_teacher(root / "weights" / "tiny.pth")

    class Extra:
        @hookimpl
        def register_models(self, register):
            register(entry)

    monkeypatch.setattr(plugins_mod, "get_plugins", lambda: plugins_mod.build_plugins(extra={"tiny": Extra()}))
    return root


def _eval(capsys, *argv: str) -> tuple[int, dict]:
    from zsqbench.cli.main import main

    code = main(["teacher-eval", *argv, "--device", "cpu", "--json"])
    return code, json.loads(capsys.readouterr().out)


def test_teacher_eval_compares_a_full_set_within_the_tolerance(tiny_in1k, tmp_path, capsys, monkeypatch):
    args = ("--model", "tiny_in1k", "--data-root", str(tiny_in1k), "--cache-dir", str(tmp_path / "c"))
    code, result = _eval(capsys, *args)  # 8 fixture images: a subset, not compared
    assert code == 0 and result["verdict"] == "subset" and result["images"] == 8 and result["expected_top1"] == 71.47
    monkeypatch.setitem(DATASETS, "imagenet", DATASETS["imagenet"].__class__(
        **{**DATASETS["imagenet"].__dict__, "num_test_images": 8}))  # pretend the fixture is the full set
    code, result = _eval(capsys, *args)
    assert code == 1 and result["verdict"] == "outside" and not result["passed"]
    assert result["difference"] == pytest.approx(result["top1"] - 71.47)
    code, result = _eval(capsys, *args, "--tolerance", "100")
    assert code == 0 and result["verdict"] == "ok"
    from zsqbench.cli.main import main

    assert main(["teacher-eval", *args, "--device", "cpu", "-q"]) == 1
    line = capsys.readouterr().out.strip()
    assert len(line.splitlines()) == 1 and "FAILED, outside ±0.15" in line and "71.47" in line
    err = one_line_error(capsys, ["teacher-eval", "--model", "tiny_in1k", "--data-root", str(tmp_path / "none")])
    assert "cannot download ImageNet" in err


def test_teacher_eval_with_unpinned_weights_has_no_expectation(tiny, capsys):
    root, weights = tiny
    with pytest.warns(UserWarning, match="not a pinned"):
        code, result = _eval(capsys, "--model", "resnet20", "--dataset", "cifar10", "--data-root", str(root),
                             "--teacher-weights", str(weights))
    assert code == 0 and result["verdict"] == "no-expectation" and result["weights"] == "unpinned"
    assert result["images"] == 24 and 0 <= result["top1"] <= 100


@pytest.mark.realdata
def test_teacher_eval_reproduces_the_pinned_resnet20(data_root, capsys):
    code, result = _eval(capsys, "--model", "resnet20", "--dataset", "cifar10", "--data-root", str(data_root),
                         "--batch-size", "1000")
    assert code == 0 and result["verdict"] == "ok" and result["top1"] == pytest.approx(92.60, abs=0.005)


def test_trials_and_teacher_eval_check_the_fp_accuracy_alike():
    from zsqbench.assets.teachers import FP_TOLERANCE, fp_verdict
    from zsqbench.cli.teacher_eval_cmd import DEFAULT_TOLERANCE

    assert DEFAULT_TOLERANCE == FP_TOLERANCE == 0.15
    assert fp_verdict(92.60, 92.60, complete=True) == ("ok", True)
    assert fp_verdict(92.40, 92.60, complete=True) == ("outside", False)  # 0.2 points: warned, not 0.5
    assert fp_verdict(50.0, 92.60, complete=False) == ("subset", True)
    assert fp_verdict(50.0, None, complete=True) == ("no-expectation", True)
