"""Format versions of the files a results folder keeps, and the steps that bring older files up to date.

A results folder outlives the code that wrote it (it is shared, downloaded, resumed months later), so
each file a reader trusts says which format it is in: ``schema_version`` in ``spec.json`` and
``result.json``. Writers write the current version; readers pass what they read through
:func:`upgrade` first, which applies in order the step from each older version to the next, and
refuses a file of a newer zsqbench in one line (its fields may mean what this code does not know).
Light (no torch): the leaderboard reads result files through it.

A step must never change what a trial id hashes: ids name the trial folders, and a folder whose id
moved would be trained again. Options leave ids by declaration instead
(:mod:`zsqbench.api.options`: ``OmitAtDefault``, ``SpeedOnly``, ``Retired``).

History (a file without ``schema_version`` is version 1):

``spec.json``
    1. Up to f49c149.
    2. ``schema_version`` written. Which options reach the id is declared on the plugins' options;
       for the same trial the content is the same as in version 1. A version-1 file may still hold
       a speed-only option at a non-default value (``adadfq.share_student_forward``, ``uniform.ste``)
       or HAST's retired ``groups``: it reads as written and keeps its id (the options drop the
       retired key when they are built; a speed switch in an old spec still applies).
``result.json``
    1. Up to f49c149.
    2. ``schema_version`` written; written and read through one model
       (:class:`zsqbench.runs.result_file.ResultFile`), with the same fields as version 1.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from zsqbench.errors import UserError

SCHEMA_FIELD = "schema_version"
SPEC_VERSION = 2
RESULT_VERSION = 2

Step = Callable[[dict[str, Any]], dict[str, Any]]


def _same_content(data: dict[str, Any]) -> dict[str, Any]:
    """A step that only numbers the format (the content was already what the next version holds)."""
    return data


#: Per kind of file: its current version, and the step from each older version to the next.
FORMATS: dict[str, tuple[int, dict[int, Step]]] = {
    "spec": (SPEC_VERSION, {1: _same_content}),
    "result": (RESULT_VERSION, {1: _same_content}),
}


def upgrade(kind: str, data: dict[str, Any], path: Path | str) -> dict[str, Any]:
    """``data``, a ``kind`` file as read from ``path``, in the current format with its
    ``schema_version``; a version that is not a positive integer, or newer than this code reads,
    is a one-line error."""
    current, steps = FORMATS[kind]
    version = data.get(SCHEMA_FIELD, 1)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise UserError(f"corrupt {kind} file {path} ({SCHEMA_FIELD} {version!r} is not a format version); "
                        "delete its trial folder and re-run")
    if version > current:
        raise UserError(f"{path} was written by a newer zsqbench ({kind} format {version}; this one reads up to "
                        f"{current}); upgrade zsqbench to read it")
    upgraded = dict(data)
    for old in range(version, current):
        upgraded = steps[old](upgraded)
    upgraded[SCHEMA_FIELD] = current
    return upgraded
