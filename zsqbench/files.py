"""File helpers every part of zsqbench shares: checksums and atomic writes.

Results must never look complete when they are not, so every result file is written
to a temporary sibling and renamed into place.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

#: A test seam (fault injection): called with the destination after its temporary file is written and
#: synced, before the fence is checked — where a real writer is most likely suspended (the long write
#: of a checkpoint), so a test can take the trial over there and check that nothing is replaced.
before_fence: Callable[[Path], None] | None = None


def file_digest(path: Path, algorithm: str = "sha256") -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


#: The most a record zsqbench writes (spec.json, result.json, error.json) can hold: a result of a
#: few hundred epochs is well under 1 MiB; a larger file was not written by zsqbench.
MAX_RECORD_BYTES = 16 << 20


def read_record_text(path: Path, limit: int = MAX_RECORD_BYTES) -> str:
    """A small record file's text, read whole only when it is small enough to be one: a tampered
    multi-gigabyte file raises ``ValueError`` (which the callers report as a corrupt file) instead
    of being loaded into memory."""
    with open(path, "rb") as fh:
        data = fh.read(limit + 1)
    if len(data) > limit:
        raise ValueError(f"larger than {limit >> 20} MiB, which no file zsqbench writes is")
    return data.decode()


def read_json_object(path: Path, what: str, fix: str) -> dict[str, Any]:
    """A small JSON record (a result, an error, an analysis) as a dict; anything else, a file too large
    to be one included, is one line naming the file, what it should have been and ``fix``."""
    from zsqbench.errors import UserError

    try:
        data = json.loads(read_record_text(path))
    except (OSError, ValueError) as exc:  # a JSON or UTF-8 error, or too large
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"corrupt {what} {path} ({msg}); {fix}") from None
    if not isinstance(data, dict):
        raise UserError(f"corrupt {what} {path} (not a JSON object); {fix}")
    return data


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fill(tmp: str, data: bytes) -> None:
    """Write and sync the temporary file (where a full disk or an I/O error shows up)."""
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def write_bytes_atomic(path: Path, data: bytes, fence: Callable[[], None] | None = None) -> None:
    """Replace ``path`` by ``data`` all at once: on any error (``ENOSPC`` included) the previous file
    is left as it was and the temporary one is removed.

    ``fence`` (a trial's lease check) runs after the data is on disk and immediately before the
    rename, so a writer that was suspended during the write and lost its lease meanwhile raises
    there and replaces nothing. Checking before the write would leave the whole write as a window."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; results are ordinary files
        _fill(tmp, data)
        if fence is not None:
            if before_fence is not None:
                before_fence(path)
            fence()
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_text_atomic(path: Path, text: str, fence: Callable[[], None] | None = None) -> None:
    write_bytes_atomic(path, text.encode(), fence)


def write_json_atomic(path: Path, obj: Any, fence: Callable[[], None] | None = None) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False) + "\n", fence)


@contextmanager
def made_folders(folder: Path) -> Iterator[Path]:
    """``folder`` created with its missing parents for the block; if the block fails, the folders this
    made are removed again where they are still empty (deepest first), so a failed download or unpacking
    leaves the disk as it found it. Folders that existed before, or that something filled, stay."""
    folder = Path(folder)
    missing = [p for p in (folder, *folder.parents) if not p.exists()]
    folder.mkdir(parents=True, exist_ok=True)
    try:
        yield folder
    except BaseException:
        for made in missing:  # deepest first
            try:
                made.rmdir()
            except OSError:  # not empty (or gone): leave it
                break
        raise
