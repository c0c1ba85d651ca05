"""`zsqbench ledger RESULTS` on a grid that really ran: a smoke grid of two methods is not comparable
by budget, and the ledger reads what the trials certify and the machine they ran on."""

from __future__ import annotations

import json

from conftest import run_argv

from zsqbench.cli.main import main


def test_a_smoke_grid_of_two_methods_is_marked_not_comparable_by_budget(tiny, tmp_path, capsys):
    root, weights = tiny
    out = tmp_path / "results"
    assert main(run_argv(root, weights, out, "--generators", "gdfq,adadfq", "--loss", "kd", "--bits", "3",
                         "--budget", "smoke")) == 0
    capsys.readouterr()
    assert main(["ledger", str(out), "--json"]) == 0
    cells = json.loads(capsys.readouterr().out)["cells"]
    assert sorted(c["name"] for c in cells) == ["resnet20_cifar10 adadfq+kd W3A3 zsq-asym-pc",
                                                "resnet20_cifar10 gdfq+kd W3A3 zsq-asym-pc"]
    for cell in cells:
        rep = cell["reproduction"]
        assert rep["budget"] == "smoke" and rep["paper_schedule"] is False and rep["n"] == 1
        assert rep["certified"]["real_training_data"] is False and rep["certified"]["activations"] == "static"
        assert rep["machines"] and "(" in rep["machines"][0]  # the CPU model and its capability
        assert cell["versus"] and {v["verdict"] for v in cell["versus"]} == {"not comparable (budget)"}
    assert main(["ledger", str(out)]) == 0
    text = capsys.readouterr().out
    assert text.count("not comparable (budget)") >= 4 and "adadfq+kd W3A3" in text
