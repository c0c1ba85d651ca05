"""`zsqbench analyze hessian` on real (tiny) trials, the saved JSON, and the curvature figure."""

from __future__ import annotations

import json

import pytest
from support.data import write_random_weights, write_test_set

from zsqbench.api.plugins import get_plugins
from zsqbench.cli.main import main


@pytest.fixture(autouse=True)
def fresh_plugins():
    get_plugins.cache_clear()
    yield
    get_plugins.cache_clear()


@pytest.mark.slow
def test_analyze_feature_loss_trials_and_plot_curvature(tmp_path, plugins, capsys):
    pytest.importorskip("matplotlib")
    root = tmp_path / "data"
    write_test_set(root, "cifar10", n=16)
    weights = write_random_weights(tmp_path / "teacher.pth", plugins.models.get("resnet20_cifar10").build())
    out = tmp_path / "results"
    common = ["--data-root", str(root), "--teacher-weights", str(weights), "--device", "cpu"]
    assert main(["run", "--generators", "adadfq", "--loss", "channel,spatial,akt", "--bits", "3", "--budget", "smoke",
                 "--out", str(out), "-q", *common]) == 0
    trials = sorted(p.parent for p in out.glob("*/*/result.json"))
    assert len(trials) == 3
    assert all(sorted(p.name for p in (t / "snapshots").iterdir()) == ["epoch_0000.pt", "epoch_0001.pt"]
               for t in trials)
    capsys.readouterr()

    argv = ["analyze", "hessian", str(out), "--filter", "bits=w3a3", "--batch-size", "4", "--probes", "3",
            "--min-probes", "2", "--json", *common]
    assert main(argv) == 0
    analyses = json.loads(capsys.readouterr().out)
    assert {a["spec"]["loss"] for a in analyses} == {"channel", "spatial", "akt"}
    for a in analyses:
        assert set(a["epochs"]) == {"0", "1"}
        for e in a["epochs"].values():
            assert e["num_probes"] >= 2 and e["trace"] == e["trace"]  # finite, not NaN
            assert abs(sum(g["trace"] for g in e["groups"].values()) - e["trace"]) <= 1e-6 * max(1.0, abs(e["trace"]))
    for t in trials:
        assert (t / "analysis" / "hessian.json").is_file()

    # listing reads the saved files; a second analysis with the same settings recomputes nothing
    saved = {t: (t / "analysis" / "hessian.json").read_text() for t in trials}
    assert main(argv) == 0
    capsys.readouterr()
    assert {t: (t / "analysis" / "hessian.json").read_text() for t in trials} == saved
    assert main(["analyze", "list", str(out), "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 3

    assert main(["plot", str(out)]) == 0
    written = capsys.readouterr().out.split()
    assert any(p.endswith("curvature.png") for p in written)
    assert any(p.endswith("gradient_norms.png") for p in written)


def test_analyze_errors_are_one_line(tmp_path, capsys):
    assert main(["analyze", "hessian", str(tmp_path / "none")]) == 2
    assert "results folder not found" in capsys.readouterr().err
    (tmp_path / "r").mkdir()
    assert main(["analyze", "hessian", str(tmp_path / "r")]) == 2
    assert "no trial" in capsys.readouterr().err
