"""Errors a user can cause are one line that says what to do (issue 27): argparse's usage errors,
an unknown teacher for `teacher-eval`, an OS error a user fixes (full disk, read-only folder) in any
command, and a snapshot that `analyze hessian` refuses to load."""

from __future__ import annotations

import errno

import pytest
import torch
from conftest import one_line_error, run_argv
from support.pickles import RunsCode

from zsqbench.api.plugins import get_plugins
from zsqbench.cli import status_cmd
from zsqbench.cli.main import main


@pytest.fixture(autouse=True)
def fresh_plugins():
    get_plugins.cache_clear()
    yield
    get_plugins.cache_clear()


@pytest.mark.parametrize("argv, needle, command", [
    (["run", "--seeds"], "argument --seeds: expected one argument", "zsqbench run"),
    (["run", "--bogus"], "unrecognized arguments: --bogus", "zsqbench run"),
    (["run", "--max-parallel", "x"], "argument --max-parallel: invalid int value: 'x'", "zsqbench run"),
    (["nosuch"], "argument COMMAND: invalid choice: 'nosuch'", "zsqbench"),
    (["leaderboard", "--pivot", "x"], "argument --pivot: invalid choice: 'x'", "zsqbench leaderboard"),
    (["analyze", "hessian", "--probes", "x"], "argument --probes: invalid int value: 'x'", "zsqbench analyze hessian"),
    (["teacher-eval"], "the following arguments are required: --model", "zsqbench teacher-eval"),
])
def test_usage_errors_are_one_line_pointing_at_the_commands_help(capsys, argv, needle, command):
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2  # argparse's status for usage errors
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("zsqbench: error: ") and needle in err and err.endswith(f"see `{command} --help`")
    assert "usage:" not in err and captured.out == ""


def test_help_and_version_still_work(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["run", "--help"])
    assert exited.value.code == 0 and "usage: zsqbench run" in capsys.readouterr().out
    assert main([]) == 2  # no command: the overview


@pytest.mark.parametrize("argv, needle", [
    (["teacher-eval", "--model", "nosuch"],
     "unknown model 'nosuch'. Known models: mobilenet_w1_imagenet, mobilenetv2_w1_imagenet, resnet18_imagenet,"),
    (["teacher-eval", "--model", "nosuch", "--dataset", "cifar10"], "unknown model 'nosuch'. Known models:"),
    (["teacher-eval", "--model", "resnet20"],
     "'resnet20' is an architecture, not a teacher name: give --dataset too (one of cifar10, cifar100)"),
    (["teacher-eval", "--model", "resnet18", "--dataset", "cifar10"],
     "architecture 'resnet18' has no teacher for cifar10, only for imagenet; pass --dataset imagenet"),
])
def test_teacher_eval_names_the_unknown_model_and_the_known_ones(capsys, argv, needle):
    assert needle in one_line_error(capsys, argv)


@pytest.mark.parametrize("code, reason, fix", [
    (errno.ENOSPC, "No space left on device", "the disk is full"),
    (errno.EROFS, "Read-only file system", "the file system is read-only"),
    (errno.EACCES, "Permission denied", "fix its permissions"),
    (errno.ENOTDIR, "Not a directory", "a file is where a folder should be"),
])
def test_an_os_error_a_user_fixes_is_one_line_in_any_command(capsys, monkeypatch, tmp_path, code, reason, fix):
    def execute(args):
        raise OSError(code, reason, str(tmp_path / "somewhere"))

    monkeypatch.setattr(status_cmd, "execute", execute)
    err = one_line_error(capsys, ["status", str(tmp_path)])
    assert reason in err and str(tmp_path / "somewhere") in err and fix in err


def test_other_os_errors_are_not_disguised(monkeypatch, tmp_path):
    def execute(args):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(status_cmd, "execute", execute)
    with pytest.raises(OSError):
        main(["status", str(tmp_path)])


@pytest.mark.slow
def test_analyze_refuses_a_snapshot_that_would_run_code_in_one_line(tiny, tmp_path, capsys):
    root, weights = tiny
    out = tmp_path / "results"
    assert main(run_argv(root, weights, out, "--generators", "gdfq", "--loss", "kd", "--bits", "3",
                         "--budget", "smoke")) == 0
    (trial,) = [p.parent for p in out.glob("*/*/result.json")]
    snapshots = sorted((trial / "snapshots").glob("epoch_*.pt"))
    assert snapshots
    capsys.readouterr()
    argv = ["analyze", "hessian", str(out), "--batch-size", "2", "--probes", "2", "--min-probes", "2",
            "--data-root", str(root), "--teacher-weights", str(weights), "--device", "cpu"]

    marker = tmp_path / "code-ran"
    torch.save({"weight": RunsCode(str(marker))}, snapshots[0])
    err = one_line_error(capsys, argv)
    assert f"snapshot {snapshots[0]} holds more than tensors" in err and "it is not loaded" in err
    assert not marker.exists()

    snapshots[0].write_bytes(b"PK\x03\x04 truncated")
    err = one_line_error(capsys, argv)
    assert f"corrupt snapshot {snapshots[0]}" in err

    torch.save({"nothing": torch.zeros(1)}, snapshots[0])
    assert main(argv) == 2  # found once the student is built (after the unpinned teacher's warning)
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err
    last = captured.err.strip().splitlines()[-1]
    assert last.startswith("zsqbench: error: ")
    assert f"snapshot {snapshots[0]} does not fit trial {trial.name}'s student" in last


@pytest.mark.parametrize("flags, needle", [
    (["--seeds", "0,1,0"], "invalid grid in the command line: seeds: '0' is listed twice; give each value once"),
    (["--generators", "gdfq,adadfq,gdfq"], "generators: 'gdfq' is listed twice"),
    (["--loss", "kd,kd"], "losses: 'kd' is listed twice"),
    (["--bits", "4,3,4"], "bit-width W4A4 is listed twice in '4,3,4'; give each once"),
    (["--bits", "4/8,4/8"], "bit-width W4A8 is listed twice"),
])
def test_a_value_listed_twice_in_a_grid_is_refused_not_run_twice(capsys, tmp_path, flags, needle):
    """The same trial twice in one grid would run it twice (or have two workers race for its lease)."""
    given = dict(zip(flags[::2], flags[1::2]))
    argv = ["run", "--dry-run", "--budget", "smoke", "--out", str(tmp_path),
            *(["--generators", "gdfq"] if "--generators" not in given else []),
            *(["--loss", "kd"] if "--loss" not in given else []),
            *(["--bits", "4"] if "--bits" not in given else []), *flags]
    assert needle in one_line_error(capsys, argv)


def test_a_grid_file_with_a_repeated_seed_is_named_in_the_error(capsys, tmp_path):
    grid = tmp_path / "grid.toml"
    grid.write_text('generators = ["gdfq"]\nlosses = ["kd"]\nbits = "4"\nseeds = [1, 1]\nbudget = "smoke"\n')
    err = one_line_error(capsys, ["run", "--dry-run", "--config", str(grid), "--out", str(tmp_path / "r")])
    assert f"invalid grid in {grid}: seeds: '1' is listed twice" in err
