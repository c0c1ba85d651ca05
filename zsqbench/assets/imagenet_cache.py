"""The papers' ImageNet test pipeline, and a verified, memory-mapped cache of its uint8 output.

Pipeline (IMAGENET.md §5.1, what every ZSQ repo and pytorchcv's published errors use), done with
PIL directly and nothing else, so its output depends only on the file and the PIL version: open,
``convert("RGB")`` (ImageNet holds grayscale and CMYK JPEGs), resize the shorter side to 256 with
the longer one ``int(256 * long / short)`` (torchvision's ``Resize(256)`` rule), bilinear
(PIL's resampling always antialiases), centre crop 224 at ``int(round((size - 224) / 2))``
(torchvision's ``CenterCrop``), uint8 CHW. No JPEG draft mode (it would change the pixels).
Normalization is not stored: it belongs to the teacher and is applied per evaluation batch.

Cache (the spec's fix for defect I12: decoding 50,000 JPEGs per evaluation costs hours per trial):
``<cache>/imagenet/<key[:24]>/`` holds ``images.npy`` (N x 3 x 224 x 224 uint8, 7.53 GB for the
real set, opened with NumPy's copy-on-write memory map: pages are read on demand and never
written back), ``labels.npy`` and ``meta.json``. The key is the sha256 of the file list (each
image's path relative to the val folder, with its size in bytes), the class list, the transform
spec and the PIL version. Names and sizes, not mtimes: copying or re-extracting the set changes
every mtime but not the data; not content hashes: hashing 6.4 GB at every process start costs
about a minute, and a same-named, same-sized, different JPEG is not an accident that happens.
Because the archives' layout (b) parses into the same relative paths, every layout of one copy
shares one cache.

A build decodes in a thread pool (PIL releases the GIL while decoding and resizing) into a
``.building-*`` sibling folder, writes ``meta.json`` last and publishes the folder by one rename,
so an interrupted build never looks complete. On load, ``meta.json``'s key and file-list digest,
the array's shape and the labels are checked against the data asked for; a cache that does not
match (built from other data, or incomplete) is refused and rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL
import torch
from PIL import Image

from zsqbench.assets.imagenet_source import ImageNetSource
from zsqbench.errors import UserError
from zsqbench.files import write_json_atomic
from zsqbench.progress import ProgressSink

FORMAT = 1
RESIZE = 256
CROP = 224
TRANSFORM_SPEC = (f"PIL open; convert RGB; resize shorter side to {RESIZE} (longer int({RESIZE}*long/short)), "
                  f"bilinear, PIL antialiased; center crop {CROP} at int(round((size-{CROP})/2)); uint8 CHW")
IMAGE_BYTES = 3 * CROP * CROP
STALE_BUILD_S = 24 * 3600  # a .building-* folder older than this was left by a killed process


def resized_size(width: int, height: int, size: int = RESIZE) -> tuple[int, int]:
    """(width, height) with the shorter side ``size`` and the longer one truncated, as Resize(int)."""
    if width <= height:
        return size, int(size * height / width)
    return int(size * width / height), size


def preprocess(path: Path) -> np.ndarray:
    """One image through the pipeline: a (3, 224, 224) uint8 array."""
    with Image.open(path) as image:
        rgb = image.convert("RGB")
    size = resized_size(*rgb.size)
    if size != rgb.size:
        rgb = rgb.resize(size, Image.Resampling.BILINEAR)
    left, top = (int(round((s - CROP) / 2.0)) for s in size)
    crop = rgb.crop((left, top, left + CROP, top + CROP))
    return np.asarray(crop, dtype=np.uint8).transpose(2, 0, 1)


def decode_workers() -> int:
    try:
        return max(1, min(32, len(os.sched_getaffinity(0))))
    except AttributeError:  # not Linux
        return max(1, min(32, os.cpu_count() or 1))


@dataclass(frozen=True)
class CachedSet:
    folder: Path
    key: str
    images: torch.Tensor  # memory-mapped
    labels: torch.Tensor
    transform: str
    pillow: str


def files_digest(source: ImageNetSource) -> str:
    h = hashlib.sha256()
    for name, size in zip(source.files, source.sizes):
        h.update(f"{name}\t{size}\n".encode())
    return h.hexdigest()


def cache_key(source: ImageNetSource) -> tuple[str, str]:
    """(key, file-list digest): what the decoded pixels and labels depend on, and nothing else."""
    files = files_digest(source)
    classes = hashlib.sha256("\n".join(source.classes).encode()).hexdigest()
    settings = {"format": FORMAT, "files": files, "classes": classes, "transform": TRANSFORM_SPEC,
                "pillow": PIL.__version__}
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest(), files


def _open(folder: Path, key: str, files: str, labels: np.ndarray) -> tuple[CachedSet | None, str]:
    """The cache in ``folder`` if it is complete and made from exactly this data, else why not."""
    try:
        meta = json.loads((folder / "meta.json").read_text())
    except FileNotFoundError:
        return None, "it is incomplete (no meta.json)"
    except (OSError, ValueError):
        return None, "its meta.json is unreadable"
    if meta.get("format") != FORMAT or meta.get("key") != key or meta.get("files_sha256") != files:
        return None, "it was built from other data or settings"
    try:
        images = np.load(folder / "images.npy", mmap_mode="c")
        stored = np.load(folder / "labels.npy")
    except (OSError, ValueError):
        return None, "its arrays are unreadable"
    n = len(labels)
    if images.shape != (n, 3, CROP, CROP) or images.dtype != np.uint8 or not np.array_equal(stored, labels):
        return None, "its arrays do not match the file list"
    return CachedSet(folder, key, torch.from_numpy(images), torch.from_numpy(stored.astype(np.int64)),
                     meta["transform"], meta["pillow"]), ""


def load_or_build(source: ImageNetSource, cache_dir: Path, progress: ProgressSink) -> CachedSet:
    key, files = cache_key(source)
    folder = cache_dir / "imagenet" / key[:24]
    if folder.exists():
        cached, why = _open(folder, key, files, source.labels)
        if cached is not None:
            return cached
        progress.message(f"warning: refusing the ImageNet cache {folder}: {why}; rebuilding it")
    _build(source, folder, key, files, progress)
    cached, why = _open(folder, key, files, source.labels)
    if cached is None:  # pragma: no cover - a just-verified build that fails its own check is a bug
        raise RuntimeError(f"the ImageNet cache {folder} just built fails its check: {why}")
    return cached


def _check_space(parent: Path, n: int) -> None:
    need = n * IMAGE_BYTES + n * 8 + (1 << 20)
    free = shutil.disk_usage(parent).free
    if free < need:
        raise UserError(f"the ImageNet cache needs {need / 1e9:.2f} GB in {parent} but only {free / 1e9:.2f} GB "
                        "are free; free space or set --cache-dir / ZSQBENCH_CACHE to a larger disk")


def _remove_stale_builds(parent: Path) -> None:
    for old in parent.glob(".building-*"):
        try:
            if time.time() - old.stat().st_mtime > STALE_BUILD_S:
                shutil.rmtree(old, ignore_errors=True)
        except OSError:
            pass


def _build(source: ImageNetSource, folder: Path, key: str, files: str, progress: ProgressSink) -> None:
    parent = folder.parent
    parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_builds(parent)
    n = len(source.files)
    _check_space(parent, n)
    stage = Path(tempfile.mkdtemp(dir=parent, prefix=f".building-{folder.name}-"))
    try:
        images = np.lib.format.open_memmap(stage / "images.npy", mode="w+", dtype=np.uint8, shape=(n, 3, CROP, CROP))
        decode_into(images, source.paths(), progress)
        images.flush()
        del images
        np.save(stage / "labels.npy", source.labels)
        with open(stage / "images.npy", "rb+") as fh:
            os.fsync(fh.fileno())
        write_json_atomic(stage / "meta.json", {
            "format": FORMAT, "key": key, "files_sha256": files, "num_images": n,
            "num_classes": len(source.classes), "first_wnid": source.classes[0], "last_wnid": source.classes[-1],
            "transform": TRANSFORM_SPEC, "pillow": PIL.__version__, "layout": source.layout,
            "source": str(source.val_dir), "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        })
        _publish(stage, folder, key, files, source.labels)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise


def _publish(stage: Path, folder: Path, key: str, files: str, labels: np.ndarray) -> None:
    """Rename the finished build into place; a complete one another process published meanwhile wins."""
    if folder.exists():
        if _open(folder, key, files, labels)[0] is not None:
            shutil.rmtree(stage, ignore_errors=True)
            return
        shutil.rmtree(folder)
    try:
        os.rename(stage, folder)
    except OSError:  # published by another process between the check and the rename
        shutil.rmtree(stage, ignore_errors=True)


class _DecodeError(Exception):
    def __init__(self, path: Path, exc: Exception) -> None:
        super().__init__(f"{path} ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})")


def decode_into(out: np.ndarray, paths: list[Path], progress: ProgressSink, workers: int | None = None) -> None:
    """Every image through :func:`preprocess` into ``out[i]``, in parallel threads, with a bar."""
    n = len(paths)

    def work(i: int) -> None:
        try:
            out[i] = preprocess(paths[i])
        except Exception as exc:
            raise _DecodeError(paths[i], exc) from exc

    progress.start(f"decoding {n:,} ImageNet validation images into the cache (once)", n)
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers or decode_workers()) as pool:
        futures = [pool.submit(work, i) for i in range(n)]
        try:
            for done, future in enumerate(as_completed(futures), 1):
                future.result()
                if done % 50 == 0 or done == n:
                    progress.advance(done, f"{done / max(time.perf_counter() - t0, 1e-9):.0f} img/s")
        except _DecodeError as exc:
            pool.shutdown(cancel_futures=True)
            raise UserError(f"cannot decode the ImageNet image {exc}; replace it with an intact copy "
                            "(nothing was cached)") from None
        except BaseException:
            pool.shutdown(cancel_futures=True)
            raise
