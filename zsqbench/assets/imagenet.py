"""The ImageNet-1K validation set from the user's copy (IMAGENET.md §5.3): where it is, which
images it holds, and their labels; decoded once into a cache by :mod:`zsqbench.assets.imagenet_cache`.

ImageNet cannot be downloaded by zsqbench (its licence requires registration at image-net.org).
The data root (or its ``imagenet/`` subfolder, so one root can hold CIFAR, ImageNet and
``weights/``) may hold, looked for in this order:

(c) a root torchvision already parsed: ``meta.bin`` + ``val/<wnid>/*.JPEG``;
(a) an ImageFolder ``val/<wnid>/*.JPEG`` (what GDFQ, Qimera, HAST and IntraQ read);
(b) torchvision's archives ``ILSVRC2012_devkit_t12.tar.gz`` + ``ILSVRC2012_img_val.tar``, parsed
    with torchvision's own functions (md5 checked by them) into the *cache* folder, because they
    move files and the user's root must stay as it is;
and finally the root may be the ``val`` folder itself (wnid folders directly inside).

Labels are the index of the image's wnid in the sorted wnid list, the order of every
pytorchcv/torchvision classifier head. For (b) and (c) that list is the devkit's 1000 leaf wnids
(``meta.bin``), so a subset of the images keeps the head's indices; the devkit's own ground truth
uses devkit ids and is only ever read through torchvision's id -> wnid mapping. For (a) it is the
wnid folders present (ImageFolder's rule). Training images are never needed (ZSQ).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tarfile
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from zsqbench.assets.datasets import IMAGENET
from zsqbench.assets.imagenet_source import ImageNetSource
from zsqbench.assets.test_set import TestSet
from zsqbench.errors import ChecksumError, DataNotFoundError, UserError
from zsqbench.files import write_json_atomic
from zsqbench.progress import NullProgress, ProgressSink

DEVKIT = "ILSVRC2012_devkit_t12.tar.gz"
VAL_ARCHIVE = "ILSVRC2012_img_val.tar"
#: md5 of the two archives as torchvision pins them (datasets/imagenet.py ARCHIVE_META; IMAGENET.md §5.3).
ARCHIVE_MD5 = {DEVKIT: "fa75699e90414af021442c21a62c3abf", VAL_ARCHIVE: "29b22e2961454d5413ddabcf34fc5622"}
NUM_CLASSES = 1000
IMAGES_PER_CLASS = 50
NUM_IMAGES = NUM_CLASSES * IMAGES_PER_CLASS
FIRST_WNID, LAST_WNID = "n01440764", "n15075141"
WNID = re.compile(r"n\d{8}")
#: torchvision's ImageFolder extensions.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")

WHERE_TO_GET = (
    "zsqbench cannot download ImageNet (its licence requires registration): get the ILSVRC2012 validation "
    f"images and devkit ({VAL_ARCHIVE}, {DEVKIT}) from https://image-net.org and point --data-root or "
    "ZSQBENCH_DATA at a folder holding, directly or in imagenet/, both archives, or val/<wnid>/*.JPEG "
    "(an ImageFolder), or torchvision's parsed meta.bin + val/"
)


def _wnid_dirs(folder: Path) -> list[str]:
    try:
        return sorted(e.name for e in os.scandir(folder) if e.is_dir() and WNID.fullmatch(e.name))
    except OSError:
        return []


def _meta_classes(meta_bin: Path) -> tuple[str, ...]:
    """The devkit's leaf wnids, sorted, from torchvision's ``meta.bin`` (wnid -> names, val wnids)."""
    try:
        wnid_to_classes, _ = torch.load(meta_bin, weights_only=True)
        return tuple(sorted(str(w) for w in wnid_to_classes))
    except Exception as exc:
        raise UserError(f"cannot read torchvision's {meta_bin} ({type(exc).__name__}); delete it (and val/) and "
                        "let zsqbench parse the archives, or point at the val/ folder instead") from None


def locate(root: Path, cache_dir: Path, progress: ProgressSink) -> tuple[str, Path, tuple[str, ...]]:
    """(layout, folder of wnid folders, class list) for the validation set under ``root``."""
    bases = [b for b in dict.fromkeys([root / "imagenet", root]) if b.is_dir()]
    for base in bases:
        val = base / "val"
        if _wnid_dirs(val):
            if (base / "meta.bin").is_file():
                return "torchvision-parsed", val, _meta_classes(base / "meta.bin")
            return "imagefolder", val, tuple(_wnid_dirs(val))
        have = [(base / name).is_file() for name in (DEVKIT, VAL_ARCHIVE)]
        if all(have):
            parsed = parse_archives(base, cache_dir, progress)
            return "torchvision-archives", parsed / "val", _meta_classes(parsed / "meta.bin")
        if any(have):
            missing = VAL_ARCHIVE if have[0] else DEVKIT
            raise DataNotFoundError(f"{base} holds {DEVKIT if have[0] else VAL_ARCHIVE} but not {missing}; put "
                                    "both ImageNet archives (from https://image-net.org) side by side")
        if base.name != "train" and _wnid_dirs(base):
            return "imagefolder", base, tuple(_wnid_dirs(base))
    for base in bases:
        if base.name == "train" or _wnid_dirs(base / "train"):
            where = base if base.name == "train" else base / "train"
            raise DataNotFoundError(f"{where} holds ImageNet training images, but zsqbench needs only the validation "
                                    "set (training images are never read): put val/<wnid>/*.JPEG or the "
                                    f"{VAL_ARCHIVE} + {DEVKIT} archives there")
    raise DataNotFoundError(f"no ImageNet validation set under {root}; {WHERE_TO_GET}")


def list_images(val_dir: Path, classes: tuple[str, ...]) -> tuple[list[str], list[int], list[int]]:
    """Relative paths, sizes and labels in ImageFolder's order (classes sorted, then files sorted)."""
    index = {w: i for i, w in enumerate(classes)}
    unknown = [w for w in _wnid_dirs(val_dir) if w not in index]
    if unknown:
        raise UserError(f"{val_dir} holds wnid folders the devkit does not list (e.g. {unknown[0]}); "
                        "point at an unmodified ImageNet validation set")
    files: list[str] = []
    sizes: list[int] = []
    labels: list[int] = []
    for wnid in classes:
        folder = val_dir / wnid
        for dirpath, _, names in sorted(os.walk(folder, followlinks=True)):
            for name in sorted(names):
                if name.lower().endswith(IMAGE_EXTENSIONS):
                    path = Path(dirpath) / name
                    files.append(path.relative_to(val_dir).as_posix())
                    sizes.append(path.stat().st_size)
                    labels.append(index[wnid])
    return files, sizes, labels


def check_set(source: ImageNetSource) -> list[str]:
    """Refuse what cannot be the validation set; the warnings for what is not all of it."""
    n, where = len(source.files), source.val_dir
    if n == 0:
        raise DataNotFoundError(f"no images under {where}'s wnid folders; {WHERE_TO_GET}")
    label, most = Counter(source.labels.tolist()).most_common(1)[0]
    if most > IMAGES_PER_CLASS:
        raise UserError(f"{where}/{source.classes[label]} holds {most} images, the validation set {IMAGES_PER_CLASS} "
                        "per class: is this the training set? point at the validation images")
    if len(source.classes) > NUM_CLASSES or (
            len(source.classes) == NUM_CLASSES and (source.classes[0], source.classes[-1]) != (FIRST_WNID, LAST_WNID)):
        raise UserError(f"the {len(source.classes)} classes under {where} ({source.classes[0]} .. "
                        f"{source.classes[-1]}) are not ImageNet-1K's ({FIRST_WNID} .. {LAST_WNID}); labels would "
                        "not match the classifier heads")
    warnings = []
    if n != NUM_IMAGES or len(source.classes) != NUM_CLASSES:
        warnings.append(f"the ImageNet validation set at {where} holds {n:,} images of {len(source.classes):,} "
                        f"classes, not {NUM_IMAGES:,} of {NUM_CLASSES:,}: a subset or fixture, so its accuracies "
                        "are not comparable with published ones")
    if len(source.classes) < NUM_CLASSES and source.layout == "imagefolder":
        warnings.append(f"labels are the sorted order of the {len(source.classes)} wnid folders present, which is "
                        f"a {NUM_CLASSES}-class head's order only when all {NUM_CLASSES} folders exist (empty ones count)")
    return warnings


def find_imagenet(root: Path, cache_dir: Path, progress: ProgressSink | None = None) -> ImageNetSource:
    """The validation set under ``root``, listed and checked (nothing decoded yet)."""
    progress = progress or NullProgress()
    layout, val_dir, classes = locate(Path(root), cache_dir, progress)
    files, sizes, labels = list_images(val_dir, classes)
    return ImageNetSource(Path(root), val_dir, layout, classes, tuple(files), tuple(sizes),
                          np.asarray(labels, dtype=np.int64))


def load_imagenet(root: Path, cache_dir: Path, progress: ProgressSink | None = None) -> TestSet:
    """The validation set as a :class:`TestSet` over its memory-mapped uint8 cache (built on first use)."""
    from zsqbench.assets.imagenet_cache import load_or_build

    progress = progress or NullProgress()
    source = find_imagenet(root, cache_dir, progress)
    warnings = check_set(source)
    for text in warnings:
        progress.message(f"warning: {text}")
    cached = load_or_build(source, cache_dir, progress)
    details = {"layout": source.layout, "num_classes": len(source.classes), "cache": str(cached.folder),
               "transform": cached.transform, "pillow": cached.pillow, "complete": not warnings,
               "warnings": warnings}
    return TestSet(name=IMAGENET, images=cached.images, labels=cached.labels, path=source.val_dir,
                   sha256=cached.key, details=details)


def parse_archives(base: Path, cache_dir: Path, progress: ProgressSink) -> Path:
    """torchvision's parse_devkit_archive / parse_val_archive run in a staging folder of the cache
    (the archives linked in, never copied or moved), published by one rename: ``meta.bin`` + ``val/``.
    Reused while the archives keep their names and sizes (the md5s were checked when parsing)."""
    archives = [base / DEVKIT, base / VAL_ARCHIVE]
    identity = [(a.name, a.stat().st_size) for a in archives]
    key = hashlib.sha256(json.dumps(identity).encode()).hexdigest()[:16]
    target = cache_dir / "imagenet" / "parsed" / key
    if (target / "parsed.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    gb = archives[1].stat().st_size / 1e9
    progress.message(f"parsing the ImageNet archives in {base} into {target} with torchvision (md5 checks and "
                     f"extraction of {gb:.1f} GB; once)")
    stage = Path(tempfile.mkdtemp(dir=target.parent, prefix=".parsing-"))
    try:
        for archive in archives:
            os.symlink(archive.resolve(), stage / archive.name)
        _run_torchvision_parsers(stage, base)
        for archive in archives:
            (stage / archive.name).unlink()
        write_json_atomic(stage / "parsed.json", {"archives": identity, "from": str(base)})
        if target.exists():
            shutil.rmtree(target)  # an incomplete earlier parse (no parsed.json)
        os.rename(stage, target)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return target


def _run_torchvision_parsers(stage: Path, base: Path) -> None:
    try:
        from torchvision.datasets import imagenet as tv
    except ImportError:
        raise UserError("reading the ImageNet archives needs torchvision (pip install torchvision), or extract "
                        "the validation images into val/<wnid>/ yourself") from None
    try:
        tv.parse_devkit_archive(str(stage))
        tv.parse_val_archive(str(stage))
    except ImportError as exc:  # scipy, for the devkit's meta.mat
        raise UserError(f"reading the ImageNet devkit needs {exc.name or 'scipy'} (pip install scipy)") from None
    except RuntimeError as exc:  # torchvision: "The archive X is not present ... or is corrupted."
        name = DEVKIT if DEVKIT in str(exc) else VAL_ARCHIVE
        raise ChecksumError(f"{base / name} does not have the md5 torchvision pins ({ARCHIVE_MD5[name]}): it is "
                            "corrupt or a different file; download it again from https://image-net.org") from None
    except (tarfile.TarError, OSError, KeyError, ValueError, IndexError) as exc:
        what = str(exc).splitlines()[0] if str(exc) else ""
        raise UserError(f"cannot parse the ImageNet archives in {base} ({type(exc).__name__}: {what}); check them "
                        "or extract the validation images into val/<wnid>/ yourself") from None
