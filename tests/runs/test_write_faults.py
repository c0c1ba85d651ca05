"""A full disk while writing a checkpoint, a result or the leaderboard: the previous file stays
intact, the trial is reported failed with the OS error and resumes on the next run."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pandas as pd
import pytest
from conftest import run_argv

import zsqbench.files
from zsqbench.cli.main import main
from zsqbench.runs import checkpoint

GRID = ["--generators", "gdfq", "--loss", "kd", "--bits", "4", "--epochs", "3", "--iters-per-epoch", "2",
        "--batch-size", "8", "--warmup-epochs", "1"]


def _args(root, weights, out, *extra):
    return run_argv(root, weights, out, *GRID, *extra)


def _disk_full_on(monkeypatch, name: str, nth: int = 1) -> None:
    """The ``nth`` write of a file called ``name`` fails as on a full disk (inside the atomic write)."""
    real, seen = zsqbench.files._fill, {"count": 0}

    def fill(tmp: str, data: bytes) -> None:
        if Path(tmp).name.startswith(f".{name}."):
            seen["count"] += 1
            if seen["count"] == nth:
                Path(tmp).write_bytes(data[: len(data) // 2])  # the disk filled up half-way
                raise OSError(errno.ENOSPC, "No space left on device")
        real(tmp, data)

    monkeypatch.setattr(zsqbench.files, "_fill", fill)


def _epochs(result_file: Path) -> list[dict]:
    return [{k: v for k, v in e.items() if k != "seconds"} for e in json.loads(result_file.read_text())["epochs"]]


@pytest.fixture
def reference(tiny, tmp_path) -> Path:
    root, weights = tiny
    assert main(_args(root, weights, tmp_path / "reference")) == 0
    (result,) = (tmp_path / "reference").glob("*/*/result.json")
    return result


def test_a_full_disk_while_checkpointing_keeps_the_last_checkpoint_and_resumes(tiny, tmp_path, reference,
                                                                               monkeypatch, capsys):
    root, weights = tiny
    out = tmp_path / "out"
    capsys.readouterr()
    _disk_full_on(monkeypatch, "checkpoint.pt", nth=2)
    assert main(_args(root, weights, out, "--json")) == 1
    (failure,) = json.loads(capsys.readouterr().out)["failed"]
    assert "OSError: [Errno 28] No space left on device" in failure["error"]
    assert "resumes from its last checkpoint" in failure["error"]
    (trial,) = [p.parent for p in out.glob("*/*/spec.json")]
    assert checkpoint.decode(trial / "checkpoint.pt", trial.name)["epoch"] == 0  # the previous one, intact
    assert len((trial / "metrics.jsonl").read_text().splitlines()) == 1
    assert not list(trial.glob(".*.tmp")) and not (trial / "result.json").exists()
    assert json.loads((trial / "error.json").read_text())["resumable"] is True

    monkeypatch.undo()
    assert main(_args(root, weights, out)) == 0  # space freed: resumed without --retry-failed
    assert _epochs(trial / "result.json") == _epochs(reference)
    assert not (trial / "error.json").exists()
    assert len(pd.read_csv(out / "leaderboard.csv")) == 1


def test_a_full_disk_while_writing_the_result_loses_no_epoch(tiny, tmp_path, reference, monkeypatch, capsys):
    root, weights = tiny
    out = tmp_path / "out"
    _disk_full_on(monkeypatch, "result.json")
    assert main(_args(root, weights, out)) == 1
    (trial,) = [p.parent for p in out.glob("*/*/spec.json")]
    assert not (trial / "result.json").exists() and checkpoint.decode(trial / "checkpoint.pt")["epoch"] == 2
    monkeypatch.undo()
    capsys.readouterr()
    assert main(_args(root, weights, out)) == 0
    assert _epochs(trial / "result.json") == _epochs(reference)


def test_a_full_disk_while_writing_the_leaderboard_only_warns(tiny, tmp_path, monkeypatch, capsys):
    root, weights = tiny
    out = tmp_path / "out"
    _disk_full_on(monkeypatch, "leaderboard.csv")
    assert main(_args(root, weights, out)) == 0
    warning = capsys.readouterr().err
    assert "warning: could not update" in warning and "No space left on device" in warning
    assert f"zsqbench leaderboard {out} --rebuild` repairs" in warning
    assert list(out.glob("*/*/result.json")) and not (out / "leaderboard.csv").exists()
    monkeypatch.undo()
    assert main(["leaderboard", str(out), "--rebuild"]) == 0
    assert len(pd.read_csv(out / "leaderboard.csv")) == 1
