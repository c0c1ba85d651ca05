"""Downloading a file with a progress bar, verified by its checksum before it is used.

Nothing half-downloaded or unverified is ever left under the final name: the bytes go to a
temporary sibling that is checked, then renamed (or deleted with a one-line error).

A failed download says how to do it by hand (``by_hand``, written by the caller): the URL, the
pinned checksum, and the *final* place the file goes. Callers download into temporary folders
(an archive is unpacked, a zip's member extracted) that are gone by the time the user reads the
message, so ``dest`` is never what the message names.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from urllib.request import urlopen

from zsqbench.errors import ChecksumError, DataNotFoundError
from zsqbench.progress import NullProgress, ProgressSink

CHUNK = 1 << 20


def download(url: str, dest: Path, *, what: str, by_hand: str, algorithm: str = "sha256",
             digest: str | None = None, progress: ProgressSink | None = None) -> Path:
    """Fetch ``url`` into ``dest`` and check its ``algorithm`` digest (md5, sha1, sha256). Without
    ``digest`` the caller verifies the content (an archive whose member is what is pinned).
    ``by_hand`` completes the errors' "...; " with how to fetch it without us (see the module doc)."""
    progress = progress or NullProgress()
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".download")
    h = hashlib.new(algorithm)
    try:
        try:
            with os.fdopen(fd, "wb") as fh, urlopen(url, timeout=60) as resp:  # noqa: S310 - pinned URL
                total = int(resp.headers.get("Content-Length") or 0)
                progress.start(f"downloading {what}", total or 1)
                done = 0
                while chunk := resp.read(CHUNK):
                    fh.write(chunk)
                    h.update(chunk)
                    done += len(chunk)
                    progress.advance(done if total else 0, f"{done / 2**20:.0f} MiB")
        except OSError as exc:  # URLError, HTTPError, timeouts, a full disk
            raise DataNotFoundError(f"could not download {what} from {url}: {exc}; {by_hand}") from None
        if digest is not None and h.hexdigest() != digest:
            raise ChecksumError(f"the download of {what} from {url} has {algorithm} {h.hexdigest()[:12]}…, expected "
                                f"{digest[:12]}…; it is corrupt or was replaced: try again, or {by_hand}")
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    progress.message(f"downloaded {what} to {dest}")
    return dest
