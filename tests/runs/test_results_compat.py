"""A results folder written by an older zsqbench keeps working: its done trials stay done under the
same ids, so a grid is never re-trained because the code that plans it was reorganised.

``fixtures/results_f49c149`` was written by the code of commit f49c149 (its README says how); its
trials used the chenyaofo teacher, whose digest is part of every id, so the check needs the real
weights (``realdata``)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import one_line_error

from zsqbench.cli.main import main
from zsqbench.runs.folder import TrialFolder
from zsqbench.runs.migrations import RESULT_VERSION

FIXTURE = Path(__file__).parents[1] / "support" / "results_f49c149"

#: The grids that wrote the fixture, and the ids they gave each trial then.
GRIDS = {
    ("gdfq,adadfq", "kd", "4"): {"9200e3652d7f92f9", "00cdb61a54ba7dda"},
    ("hast,intraq", "kd,akt", "3"): {"0694845", "8527a22", "8451327", "783c456"},
}


@pytest.mark.realdata
@pytest.mark.parametrize("grid", list(GRIDS), ids=["gdfq-adadfq-w4", "hast-intraq-w3"])
def test_a_results_folder_written_by_f49c149_dry_runs_as_all_done(grid, data_root, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("ZSQBENCH_DATA", str(data_root))
    out = tmp_path / "results"
    shutil.copytree(FIXTURE, out)
    generators, losses, bits = grid
    code = main(["run", "--generators", generators, "--loss", losses, "--bits", bits, "--budget", "smoke",
                 "--out", str(out), "--data-root", str(data_root), "--dry-run", "--json"])
    assert code == 0
    planned = json.loads(capsys.readouterr().out)
    assert {t["state"] for t in planned} == {"done"}
    written = {p.name for p in (out / "default").iterdir() if p.is_dir()}
    assert {t["trial_id"] for t in planned} <= written
    assert all(any(t["trial_id"].startswith(prefix) for t in planned) for prefix in GRIDS[grid])


def test_the_files_of_f49c149_read_in_the_current_format_under_the_ids_of_their_folders():
    """Without the data: each spec hashes to its folder's name and each result validates as the
    current format (files without ``schema_version`` are format 1)."""
    folders = TrialFolder.find(FIXTURE)
    assert len(folders) == 6
    for folder in folders:
        assert "schema_version" not in json.loads(folder.file(folder.SPEC).read_text())
        assert folder.read_spec().trial_id == folder.trial_id
        result = folder.read_result()
        assert result["schema_version"] == RESULT_VERSION and result["trial_id"] == folder.trial_id


@pytest.mark.parametrize("name, version, needle", [
    ("spec.json", 99, "was written by a newer zsqbench (spec format 99; this one reads up to"),
    ("result.json", 99, "was written by a newer zsqbench (result format 99; this one reads up to"),
    ("spec.json", "2", "corrupt spec file"),
    ("result.json", 0, "corrupt result file"),
])
def test_a_file_of_a_newer_or_unknown_format_is_refused_in_one_line(tmp_path, capsys, name, version, needle):
    out = tmp_path / "results"
    shutil.copytree(FIXTURE, out)
    path = out / "default" / "9200e3652d7f92f9" / name
    path.write_text(json.dumps({**json.loads(path.read_text()), "schema_version": version}))
    command = ["status", str(out)] if name == "spec.json" else ["leaderboard", str(out)]
    assert needle in one_line_error(capsys, command)
