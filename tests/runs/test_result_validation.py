"""result.json is read through one strict model (issue 27, item 4): a number is a JSON number, an
accuracy a finite percentage, the file belongs to its folder; a file that is not so is named in one
line with its field and left as it is, by every reader (leaderboard, compare, plot). Results the
trainer writes, and those of f49c149, still read."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
from conftest import one_line_error

from zsqbench.api.spec import TrialSpec
from zsqbench.errors import UserError
from zsqbench.runs.result_file import check_trial_id, validate_result

FIXTURE = Path(__file__).parents[1] / "support" / "results_f49c149"
TRIAL = "783c45623969dc57"  # intraq+akt W3A3: two epochs, the second trained (losses, gradient norms)


def _spec_id(spec: dict) -> str:
    return TrialSpec.model_validate(spec).trial_id


@pytest.fixture
def results(tmp_path) -> Path:
    out = tmp_path / "results"
    shutil.copytree(FIXTURE, out)
    return out


def _tamper(results: Path, edit) -> Path:
    path = results / "default" / TRIAL / "result.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))  # NaN and Infinity as Python's json writes (and reads) them
    return path


def _set(*keys, value):
    def edit(data):
        *parents, last = keys
        for key in parents:
            data = data[key]
        data[last] = value
    return edit


TAMPERED = {
    "string accuracy": (_set("top1_last", value="85.0"), "top1_last: Input should be a valid number, got '85.0'"),
    "bool accuracy": (_set("fp_top1", value=True), "fp_top1: Input should be a valid number, got True"),
    "NaN accuracy": (_set("top1_last", value=math.nan), "top1_last: Input should be a finite number, got nan"),
    "infinite accuracy": (_set("top1_oracle", value=math.inf), "top1_oracle: Input should be a finite number"),
    "negative accuracy": (_set("ptq_top1", value=-1e9), "ptq_top1: Input should be greater than or equal to 0"),
    "accuracy over 100": (_set("top1_last", value=185.0), "top1_last: Input should be less than or equal to 100"),
    "epoch accuracy over 100": (_set("epochs", 1, "top1", value=150), "epochs.1.top1: Input should be less than"),
    "string bits": (_set("spec", "w_bits", value="4"), "spec.w_bits: Input should be a valid integer, got '4'"),
    "bool bits": (_set("spec", "a_bits", value=True), "spec.a_bits: Input should be a valid integer, got True"),
    "float epochs": (_set("spec", "budget", "epochs", value=2.0), "spec.budget.epochs: Input should be a valid "
                                                                   "integer, got 2.0"),
    "negative time": (_set("wall_s", value=-5.0), "wall_s: Input should be greater than or equal to 0"),
    "infinite time": (_set("wall_s", value=math.inf), "wall_s: Input should be a finite number"),
    "string flag": (_set("compute", "channels_last", value="no"), "compute.channels_last: Input should be a valid "
                                                                   "boolean, got 'no'"),
    "long string": (_set("top1_last", value="9" * 100_000), "top1_last: Input should be a valid number, got '9999"),
}


@pytest.mark.parametrize("edit, needle", TAMPERED.values(), ids=list(TAMPERED))
def test_a_tampered_result_is_named_in_one_line_with_its_field_and_left_as_it_is(results, capsys, edit, needle):
    path = _tamper(results, edit)
    written = path.read_bytes()
    err = one_line_error(capsys, ["leaderboard", str(results)])
    assert f"corrupt result file {path} ({needle}" in err and err.endswith("delete its trial folder and re-run")
    assert len(err) < 400 + len(str(path))  # a value is quoted cut short
    assert "leaderboard CSV" not in err  # the result file is to blame, not the table built from it
    assert path.read_bytes() == written


@pytest.mark.parametrize("command", [["leaderboard"], ["compare", "--by", "generator", "--baseline", "gdfq"]],
                         ids=["leaderboard", "compare"])
def test_every_table_reader_refuses_it_in_one_line(results, capsys, command):
    path = _tamper(results, _set("top1_last", value="85.0"))
    command = [command[0], str(results), *command[1:]]
    assert f"corrupt result file {path} (top1_last" in one_line_error(capsys, command)


def test_the_plots_refuse_it_in_one_line(results, capsys, tmp_path):
    pytest.importorskip("matplotlib")
    path = _tamper(results, _set("epochs", 1, "top1", value="9.94"))
    err = one_line_error(capsys, ["plot", str(results), "--out", str(tmp_path / "figures")])
    assert f"corrupt result file {path} (epochs.1.top1: Input should be a valid number" in err


def test_a_result_moved_to_another_trials_folder_is_refused(results, capsys):
    other = results / "default" / "9200e3652d7f92f9"
    shutil.copy(results / "default" / TRIAL / "result.json", other / "result.json")
    err = one_line_error(capsys, ["leaderboard", str(results)])
    assert f"result file {other / 'result.json'} belongs to trial '{TRIAL}', not to its folder 9200e3652d7f92f9" in err


def test_a_trial_folder_copied_under_another_name_reads_as_it_is(results, tmp_path):
    """One trial copied out of its results folder (to export it) has no id to be checked against."""
    copy = tmp_path / "my trial"
    shutil.copytree(results / "default" / TRIAL, copy)
    assert validate_result(json.loads((copy / "result.json").read_text()), copy / "result.json", _spec_id)


@pytest.mark.parametrize("run", ["../victimrun", "a/b", "..", ""])
def test_a_run_that_is_not_a_folder_name_is_refused(results, capsys, run):
    path = _tamper(results, _set("run", value=run))
    assert f"corrupt result file {path} (run: not a run folder name" in one_line_error(capsys, ["leaderboard",
                                                                                               str(results)])


def test_whole_numbers_stand_for_floats_and_readers_get_floats(results):
    """JSON writes 85.0 as 85 in other tools; a reader gets the float the model declares."""
    path = _tamper(results, _set("top1_last", value=85))
    result = validate_result(json.loads(path.read_text()), path)
    assert result["top1_last"] == 85.0 and isinstance(result["top1_last"], float)


def test_diagnostics_may_be_non_finite_but_must_be_numbers(results):
    """Loss terms and gradient norms are only plotted (non-finite points skipped); the trainer never
    finishes a trial whose losses went non-finite, but a record holding one is not a wrong number."""
    path = _tamper(results, _set("epochs", 1, "losses", "total", value=math.nan))
    assert math.isnan(validate_result(json.loads(path.read_text()), path)["epochs"][1]["losses"]["total"])
    path = _tamper(results, _set("epochs", 1, "losses", "total", value="153.08"))
    with pytest.raises(UserError, match=r"epochs\.1\.losses\.total: Input should be a valid number"):
        validate_result(json.loads(path.read_text()), path)


def test_the_f49c149_results_read_unchanged_and_their_specs_hash_to_their_folders():
    for path in sorted(FIXTURE.glob("*/*/result.json")):
        written = json.loads(path.read_text())
        assert validate_result(written, path, _spec_id) == {**written, "schema_version": 2}


def test_a_spec_edited_inside_the_result_is_refused_by_a_reader_that_hashes_it(results):
    path = _tamper(results, _set("spec", "w_bits", value=4))  # the trial was W3A3
    assert validate_result(json.loads(path.read_text()), path)["spec"]["w_bits"] == 4  # without the hash: readable
    with pytest.raises(UserError, match=f"the spec recorded in result file {path} belongs to trial '[0-9a-f]{{16}}', "
                                        f"not to its folder {TRIAL}"):
        validate_result(json.loads(path.read_text()), path, _spec_id)


def test_a_spec_file_edited_after_planning_is_refused_by_check_trial_id(results):
    """What a spec.json reader calls with the spec's hash (W3A3 edited to W4A4 in a done trial)."""
    path = results / "default" / TRIAL / "spec.json"
    spec = json.loads(path.read_text())
    check_trial_id(path, _spec_id(spec), "spec file")
    with pytest.raises(UserError, match=f"spec file {path} belongs to trial '[0-9a-f]{{16}}', not to its folder "
                                        f"{TRIAL} .*; restore it, or delete the trial folder and re-run the grid"):
        check_trial_id(path, _spec_id({**spec, "w_bits": 4, "a_bits": 4}), "spec file")


def test_the_leaderboard_refuses_a_result_whose_spec_was_edited_after_the_trial(results, capsys):
    """Readers of result.json (the leaderboard's rebuild, a trial folder's read_result) hash its spec: a
    W3A3 trial relabelled W4A4 inside its result is one line naming the file, never a W4A4 row."""
    _tamper(results, _set("spec", "w_bits", value=4))
    _tamper(results, _set("spec", "a_bits", value=4))
    err = one_line_error(capsys, ["leaderboard", str(results), "--rebuild"])
    assert f"the spec recorded in result file {results / 'default' / TRIAL / 'result.json'} belongs to trial" in err
