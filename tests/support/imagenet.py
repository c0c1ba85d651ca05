"""Tiny ImageNet validation sets in the three layouts zsqbench reads (IMAGENET.md §5.3, §8.4):
an ImageFolder ``val/<wnid>/``, torchvision's archives (a devkit with ``meta.mat`` written by
scipy in the devkit's structure, a ground-truth file in devkit ids, a flat val tar) and a root
torchvision already parsed (``meta.bin`` + ``val/``). The same eight JPEGs in each: odd sizes,
one grayscale, one CMYK, one smaller than 256 px and not square."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

#: wnid -> devkit id; the ids are deliberately not in sorted-wnid order (as in the real devkit).
DEVKIT_IDS = {"n02119789": 1, "n15075141": 2, "n01440764": 3, "n01443537": 4}
WNIDS = sorted(DEVKIT_IDS)
#: (val file number, wnid, PIL mode, (width, height))
IMAGES = [
    (1, "n15075141", "RGB", (500, 375)),
    (2, "n01440764", "L", (333, 500)),  # grayscale
    (3, "n02119789", "CMYK", (400, 300)),  # CMYK JPEG
    (4, "n01443537", "RGB", (180, 120)),  # smaller than 256 and not square: upscaled
    (5, "n01440764", "RGB", (257, 301)),  # odd crop offsets
    (6, "n02119789", "RGB", (640, 427)),
    (7, "n01443537", "RGB", (256, 256)),  # already the resize target
    (8, "n15075141", "RGB", (300, 1000)),
]


def val_name(number: int) -> str:
    return f"ILSVRC2012_val_{number:08d}.JPEG"


def jpeg_bytes(mode: str, size: tuple[int, int], seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    w, h = size
    channels = {"L": 1, "RGB": 3, "CMYK": 4}[mode]
    # smooth content (a gradient plus noise) so resizing has something to average
    base = np.linspace(0, 255, w)[None, :, None] * np.linspace(0.3, 1.0, h)[:, None, None]
    pixels = np.clip(base + rng.normal(0, 40, (h, w, channels)), 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels[..., 0] if channels == 1 else pixels, mode=mode)
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def image_files() -> list[tuple[str, str, bytes]]:
    """(file name, wnid, JPEG bytes) of the fixture's images."""
    return [(val_name(i), wnid, jpeg_bytes(mode, size, seed=i)) for i, wnid, mode, size in IMAGES]


def expected_labels() -> list[int]:
    """Labels in ImageFolder order (sorted wnid, then file name): the wnid's sorted index."""
    rows = sorted((wnid, name) for name, wnid, _ in image_files())
    return [WNIDS.index(wnid) for wnid, _ in rows]


def write_imagefolder(folder: Path) -> Path:
    """``folder/<wnid>/<file>`` for every fixture image (pass ``root / "val"``)."""
    for name, wnid, data in image_files():
        (folder / wnid).mkdir(parents=True, exist_ok=True)
        (folder / wnid / name).write_bytes(data)
    return folder


def _meta_mat() -> bytes:
    from scipy.io import savemat

    fields = ["ILSVRC2012_ID", "WNID", "words", "gloss", "num_children", "wordnet_height", "num_train_images"]
    rows = [(i, w, f"class {w}, thing {i}", "a gloss", 0, 0, 1300) for w, i in DEVKIT_IDS.items()]
    rows += [(1001, "n00001740", "entity", "the root", 2, 18, 0), (1002, "n00002137", "abstraction", "x", 1, 17, 0)]
    synsets = np.zeros((len(rows), 1), dtype=[(f, "O") for f in fields])
    for k, row in enumerate(rows):
        synsets[k, 0] = tuple(np.array(v) if not isinstance(v, str) else v for v in row)
    buf = io.BytesIO()
    savemat(buf, {"synsets": synsets})
    return buf.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_archives(root: Path) -> tuple[Path, Path]:
    """torchvision's ``ILSVRC2012_devkit_t12.tar.gz`` and ``ILSVRC2012_img_val.tar`` in ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    files = sorted(image_files())
    truth = "".join(f"{DEVKIT_IDS[wnid]}\n" for _, wnid, _ in files)  # in the val files' sorted order
    devkit = root / "ILSVRC2012_devkit_t12.tar.gz"
    with tarfile.open(devkit, "w:gz") as tar:
        _add(tar, "ILSVRC2012_devkit_t12/data/meta.mat", _meta_mat())
        _add(tar, "ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt", truth.encode())
    val = root / "ILSVRC2012_img_val.tar"
    with tarfile.open(val, "w") as tar:
        for name, _, data in files:
            _add(tar, name, data)
    return devkit, val


def write_parsed(root: Path) -> Path:
    """A root as torchvision leaves it after parsing: ``meta.bin`` + ``val/<wnid>/``."""
    write_imagefolder(root / "val")
    wnid_to_classes = {w: (f"class {w}", f"thing {i}") for w, i in DEVKIT_IDS.items()}
    val_wnids = [wnid for _, wnid, _ in sorted(image_files())]
    torch.save((wnid_to_classes, val_wnids), root / "meta.bin")
    return root
