"""A quantizer profile chosen with ``-o uniform.profile=NAME`` travels with the trial: its spec
(and so its id), its result and its leaderboard row; ``compare`` refuses to pair rows of different
profiles unless ``--force``; the default profile keeps the trial's id and folder."""

from __future__ import annotations

import json

from conftest import one_line_error, run_argv

from zsqbench.cli.main import main
from zsqbench.leaderboard.table import read_table

GRID = ("--generators", "gdfq", "--loss", "kd", "--bits", "3", "--budget", "smoke")


def _trial(out):
    (result,) = out.glob("default/*/result.json")
    return json.loads((result.parent / "spec.json").read_text()), json.loads(result.read_text())


def test_a_profile_is_recorded_in_spec_result_and_row_and_compare_refuses_across_profiles(tiny, tmp_path, capsys):
    root, weights = tiny
    plain, named, default = tmp_path / "plain", tmp_path / "first-last", tmp_path / "default"
    assert main(run_argv(root, weights, plain, *GRID)) == 0
    assert main(run_argv(root, weights, named, *GRID, "-o", "uniform.profile=first-last-8bit")) == 0
    assert main(run_argv(root, weights, default, *GRID, "-o", "uniform.profile=zsq-asym-pc")) == 0
    spec, result = _trial(named)
    assert spec["quantizer"]["options"]["profile"] == "first-last-8bit"
    assert result["spec"]["quantizer"]["options"]["profile"] == "first-last-8bit"
    plain_spec, plain_result = _trial(plain)
    assert "profile" not in plain_spec["quantizer"]["options"]  # the default stays out of the id
    assert _trial(default)[1]["trial_id"] == plain_result["trial_id"] != result["trial_id"]
    certified = result["certification"]  # what the trainer certifies, with the profile's description
    assert certified["quantizer"]["profile"] == "first-last-8bit" and certified["quantizer"]["version"] == 1
    assert "8 bits" in certified["quantized_layers"] and certified["activations"] == "static"
    assert certified["real_training_data"] is False and certified["headline_test_selected"] is False
    assert certified["budget"] == "smoke" and certified["paper_schedule"] is False
    assert plain_result["certification"]["quantizer"]["profile"] == "zsq-asym-pc"
    assert result["machine"]["kind"] and result["machine"]["cpu_capability"]
    frame, _ = read_table(named)
    assert frame["profile"].tolist() == ["first-last-8bit"]
    assert read_table(plain)[0]["profile"].tolist() == ["zsq-asym-pc"]
    capsys.readouterr()
    err = one_line_error(capsys, ["compare", str(plain), str(named)])
    assert "profile differs (A zsq-asym-pc, B first-last-8bit)" in err and "--force" in err
    assert main(["compare", str(plain), str(named), "--force", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)["rows"]
    assert row["profile"] == "first-last-8bit" and any("profile differs" in f for f in row["flags"])


def test_an_unknown_profile_is_one_line(tiny, tmp_path, capsys):
    root, weights = tiny
    err = one_line_error(capsys, run_argv(root, weights, tmp_path / "out", *GRID, "-o", "uniform.profile=sym",
                                          "--dry-run"))
    assert "profile" in err and "'sym-pc'" in err
