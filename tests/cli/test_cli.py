"""The command line: bad input gives one line and exit 2; a tiny grid runs end to end."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from support.data import write_random_weights, write_test_set

from zsqbench.api.config import _load
from zsqbench.api.plugins import get_plugins
from zsqbench.cli.main import main
from zsqbench.leaderboard.schema import PER_TRIAL, documented


@pytest.fixture(autouse=True)
def fresh_caches():
    get_plugins.cache_clear()
    _load.cache_clear()
    yield
    get_plugins.cache_clear()
    _load.cache_clear()


@pytest.fixture
def tiny_root(tmp_path, plugins):
    root = tmp_path / "data"
    write_test_set(root, "cifar10", n=24)
    write_test_set(root, "cifar100", n=24)
    weights = {
        ds: write_random_weights(tmp_path / f"teacher_{ds}.pth", plugins.models.get(f"resnet20_{ds}").build())
        for ds in ("cifar10", "cifar100")
    }
    return root, weights


def _tiny_args(root, weights, out, *extra):
    return ["run", "--budget", "smoke", "--data-root", str(root), "--teacher-weights", str(weights),
            "--out", str(out), "--device", "cpu", "-q", "-o", "gdfq.bns_weight=0.1", *extra]


def _one_line_error(capsys, argv) -> str:
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.startswith("zsqbench: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["run", "--generators", "gdfqq", "--dry-run"], "unknown generator 'gdfqq'. Did you mean 'gdfq'?"),
        (["run", "--loss", "nope", "--dry-run"], "unknown loss 'nope'"),
        (["run", "--model", "resnet56", "--dry-run"], "unknown model"),
        (["run", "--bits", "9", "--dry-run"], "bits must be between 2 and 8"),
        (["run", "--budget", "huge", "--dry-run"], "unknown budget preset 'huge'"),
        (["run", "--dataset", "mnist", "--dry-run"], "unknown dataset 'mnist'"),
        (["run", "-o", "gdfq.nonsense=1", "--dry-run"], "bad option for generator 'gdfq'"),
        (["run", "-o", "gdfq", "--dry-run"], "PLUGIN.KEY=VALUE"),
    ],
)
def test_bad_names_and_values(capsys, argv, needle):
    assert needle in _one_line_error(capsys, argv)


def test_malformed_registry(capsys, tmp_path, monkeypatch):
    bad = tmp_path / "registry.toml"
    bad.write_text("bundled = [")
    monkeypatch.setenv("ZSQBENCH_REGISTRY", str(bad))
    assert "malformed registry file" in _one_line_error(capsys, ["run", "--dry-run"])


def test_malformed_config_file(capsys, tmp_path):
    cfg = tmp_path / "grid.toml"
    cfg.write_text("generators = ['gdfq']\nbits = 3\nsurprise = true\n")
    msg = _one_line_error(capsys, ["run", "--config", str(cfg), "--dry-run"])
    assert "invalid grid" in msg and str(cfg) in msg


def test_missing_test_set_leaves_no_result(capsys, tmp_path, tiny_root):
    _, weights = tiny_root
    out = tmp_path / "results"
    msg = _one_line_error(capsys, ["run", "--budget", "smoke", "--data-root", str(tmp_path / "empty"),
                                   "--teacher-weights", str(weights["cifar10"]), "--out", str(out), "--device", "cpu"])
    assert "test set not found" in msg and "without --offline" in msg
    assert not (out / "leaderboard.csv").exists()
    assert not list(out.rglob("result.json"))


def test_corrupt_weights_leave_no_result(capsys, tmp_path, plugins):
    root = tmp_path / "data"
    write_test_set(root, "cifar10", n=8)
    write_random_weights(root / "weights" / "resnet20_cifar10.pth", plugins.models.get("resnet20_cifar10").build())
    out = tmp_path / "results"
    msg = _one_line_error(capsys, ["run", "--budget", "smoke", "--data-root", str(root), "--out", str(out),
                                   "--device", "cpu"])
    assert "sha256" in msg and "fetch it again" in msg
    assert not (out / "leaderboard.csv").exists()


def test_dry_run_lists_the_grid_as_json(capsys, tiny_root):
    _, weights = tiny_root
    assert main(["run", "--generators", "gdfq", "--loss", "kd", "--bits", "3,4/8", "--seeds", "0,1",
                 "--teacher-weights", str(weights["cifar10"]), "--dry-run", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["bits"], r["seed"]) for r in rows] == [("W3A3", 0), ("W3A3", 1), ("W4A8", 0), ("W4A8", 1)]
    assert all(r["state"] == "pending" for r in rows)
    assert all(r["teacher"].startswith("unpinned (sha256 ") for r in rows)
    assert [(r["epochs"], r["iters_per_epoch"], r["batch_size"]) for r in rows] == [(8, 100, 64)] * 4


@pytest.mark.parametrize("terminal", [True, False], ids=["terminal", "pipe"])
def test_the_dry_run_grid_is_readable_at_80_columns(monkeypatch, tiny_root, terminal):
    """Nine columns of a dry run do not fit 80: each trial becomes a record, its cells whole (a trial id or
    "pending" cut in two cannot be read or grepped), and a pipe gets no box drawing."""
    import io
    import re

    from rich.cells import cell_len
    from rich.console import Console

    from zsqbench.cli import console, run_cmd

    buf = io.StringIO()
    screen = Console(file=buf, width=80, force_terminal=terminal, color_system=None, legacy_windows=False)
    monkeypatch.setattr(console, "out", screen)
    monkeypatch.setattr(run_cmd, "out", screen)
    _, weights = tiny_root
    assert main(["run", "--generators", "gdfq,hast", "--loss", "kd", "--bits", "3", "--seeds", "0,1",
                 "--teacher-weights", str(weights["cifar10"]), "--dry-run"]) == 0
    text = buf.getvalue()
    assert all(cell_len(line) <= 80 for line in text.splitlines()), text
    assert not re.search("[\u2500-\u257f]", text) or terminal
    lines = text.splitlines()
    ids = [line.strip() for line in lines if re.fullmatch(r"[0-9a-f]{16}", line.strip())]
    assert len(ids) == 4  # one heading line per trial, its id whole
    assert sum("state: pending" in line for line in lines) == 4


def test_dry_run_needs_a_teacher_and_says_where_to_get_one(capsys, tmp_path):
    msg = _one_line_error(capsys, ["run", "--data-root", str(tmp_path), "--dry-run", "--offline"])
    assert "no weights for teacher 'resnet20_cifar10'" in msg and "--teacher-weights" in msg


def test_default_run_is_gdfq_kd_w3a3_cpu(capsys, tiny_root):
    assert main(["run", "--teacher-weights", str(tiny_root[1]["cifar10"]), "--dry-run", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 1
    assert (rows[0]["generator"], rows[0]["loss"], rows[0]["bits"], rows[0]["budget"]) == ("gdfq", "kd", "W3A3", "cpu")


@pytest.mark.slow
def test_tiny_run_writes_result_and_leaderboard_and_skips_when_done(capsys, tiny_root, tmp_path):
    root, weights = tiny_root
    out = tmp_path / "results"
    assert main(_tiny_args(root, weights["cifar10"], out, "--bits", "4", "--json")) == 0
    payload = json.loads(capsys.readouterr().out)
    (result_summary,) = payload["results"]
    trial = out / "default" / result_summary["trial_id"]
    result = json.loads((trial / "result.json").read_text())
    assert result["status"] == "done" and result["spec"]["w_bits"] == 4
    assert len(result["epochs"]) == 2 and result["epochs"][0]["phase"] == "warmup"
    assert result["ptq_top1"] == result["epochs"][0]["top1"]
    assert result["top1_last"] == result["epochs"][-1]["top1"]
    assert result["top1_oracle"] == max(result["ptq_top1"], result["top1_last"])
    assert result["teacher"]["sha256"] and result["data"]["sha256"] and result["git_hash"]
    assert result["data"]["num_images"] == 24
    header = (out / "leaderboard.csv").read_text().splitlines()[0].split(",")
    assert header == list(PER_TRIAL)
    # a second identical command skips the done trial and keeps one row
    mtime = (trial / "result.json").stat().st_mtime_ns
    assert main(_tiny_args(root, weights["cifar10"], out, "--bits", "4")) == 0
    assert (trial / "result.json").stat().st_mtime_ns == mtime
    assert len((out / "leaderboard.csv").read_text().splitlines()) == 2
    assert not list(out.rglob("*.tmp"))


@pytest.mark.slow
def test_cifar100_path_runs_on_a_synthetic_fixture(capsys, tiny_root, tmp_path):
    root, weights = tiny_root
    out = tmp_path / "results"
    assert main(_tiny_args(root, weights["cifar100"], out, "--dataset", "cifar100", "--bits", "3", "--json")) == 0
    (row,) = json.loads(capsys.readouterr().out)["results"]
    assert row["spec"]["model"] == "resnet20_cifar100"
    assert 0.0 <= row["top1_last"] <= 100.0


@pytest.mark.slow
def test_same_seed_gives_same_numbers_on_cpu(capsys, tiny_root, tmp_path):
    root, weights = tiny_root
    results = []
    for name in ("a", "b"):
        assert main(_tiny_args(root, weights["cifar10"], tmp_path / name, "--bits", "3", "--json")) == 0
        (row,) = json.loads(capsys.readouterr().out)["results"]
        trial = tmp_path / name / "default" / row["trial_id"] / "result.json"
        results.append([e["losses"] for e in json.loads(trial.read_text())["epochs"]] + [row["top1_last"]])
    assert results[0] == results[1]


def test_entry_point_error_is_one_line_without_traceback():
    proc = subprocess.run([sys.executable, "-m", "zsqbench.cli.main", "run", "--bits", "12", "--dry-run"],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr


@pytest.mark.realdata
@pytest.mark.slow
def test_smoke_run_on_real_cifar10_measures_the_teacher(capsys, data_root, tmp_path):
    out = tmp_path / "results"
    argv = ["run", "--generators", "gdfq", "--loss", "kd", "--bits", "4", "--budget", "smoke",
            "--data-root", str(data_root), "--out", str(out), "--device", "cpu", "-q"]
    assert main(argv) == 0
    import pandas as pd

    (row,) = pd.read_csv(out / "leaderboard.csv").to_dict("records")
    assert row["fp_top1"] == pytest.approx(92.60, abs=0.05)
    assert row["teacher_weights"] == "chenyaofo"
    assert row["data_sha256"] == "72b7c94d2a99e46101e01e52e7fcb8f1066d3402fa9f22998d8ffd54fb01ba4c"
    assert (row["generator"], row["loss"], row["w_bits"], row["a_bits"]) == ("gdfq", "kd", 4, 4)


def test_docs_document_every_leaderboard_column():
    from pathlib import Path

    page = (Path(__file__).parents[2] / "docs" / "results-and-statistics.md").read_text()
    for column, meaning in documented("per-trial").items():
        assert f"| `{column}` | {meaning} |" in page, column


def test_a_reader_that_stops_early_gets_no_traceback():
    """`zsqbench ... --json | head`: the closed pipe is the reader's choice, not an error."""
    proc = subprocess.Popen([sys.executable, "-m", "zsqbench.cli.main", "compare", "paper:akt", "paper:akt", "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # before anything is read: the first write hits a broken pipe
    stderr = proc.stderr.read().decode()
    assert proc.wait() == 0
    assert "Traceback" not in stderr and "BrokenPipeError" not in stderr
