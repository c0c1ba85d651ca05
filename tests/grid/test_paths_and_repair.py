"""Where a grid writes and what it refuses before writing (issue 27): every path comes from --out,
the run name and the trial ids of the grid's own specs, never from a field inside a file; a run name
is one plain folder; an unusable results folder, a quantizer option that fits no module and a bad
executor option are one line before any trial starts; and a run of a finished grid repairs a
leaderboard left behind its result files."""

from __future__ import annotations

import errno
import json
import shutil
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import one_line_error, run_argv
from support.data import write_random_weights, write_test_set
from support.fresh_plugins import fresh_plugins  # noqa: F401 (autouse fixture)

from zsqbench.api.plugins import get_plugins
from zsqbench.cli.main import main
from zsqbench.errors import UserError
from zsqbench.grid.runner import check_run_name, run_grid
from zsqbench.progress import NullProgress
from zsqbench.runs.environment import Environment
from zsqbench.runs.folder import TrialFolder
from zsqbench.runs.lease import LEASE, LeaseInfo, LeaseOwner

GRID = ["--generators", "gdfq", "--loss", "kd", "--bits", "3", "--budget", "smoke"]


@pytest.fixture(scope="module")
def done_grid(tmp_path_factory, plugins) -> tuple[Path, Path, Path]:
    """Two finished smoke trials (seeds 0 and 1) under run 'default': (data root, weights, results)."""
    base = tmp_path_factory.mktemp("done_grid")
    root = base / "data"
    write_test_set(root, "cifar10", n=24)
    weights = write_random_weights(base / "teacher.pth", plugins.models.get("resnet20_cifar10").build())
    out = base / "results"
    get_plugins.cache_clear()
    assert main(run_argv(root, weights, out, *GRID, "--seeds", "0,1")) == 0
    assert len(pd.read_csv(out / "leaderboard.csv")) == 2
    return root, weights, out


def _error_line(capsys, argv: list[str]) -> str:
    """The run's one error line (exit 2, no traceback); the random teacher's warning may come before it."""
    code = main(argv)
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err
    errors = [line for line in captured.err.splitlines() if line.startswith("zsqbench: error:")]
    assert code == 2 and len(errors) == 1 and captured.err.strip().endswith(errors[0]), captured.err
    return errors[0]


def _copy(done_grid, tmp_path: Path) -> Path:
    out = tmp_path / "results"
    shutil.copytree(done_grid[2], out)
    return out


# ------------------------------------------------------------------ run names


@pytest.mark.parametrize("name", ["../escaped", "a/b", "..", ".hidden", "", "-x", "a\\b", "sp ace", "x" * 101])
def test_a_run_name_is_one_plain_folder_name(name):
    with pytest.raises(UserError, match="is not a plain folder name"):
        check_run_name(name)


@pytest.mark.parametrize("name", ["default", "w4-sweep", "run_2.1", "gdfq+kd", "lr=0.1", "A1@host"])
def test_plain_run_names_are_accepted(name):
    assert check_run_name(name) == name


@pytest.mark.parametrize("dry_run", [[], ["--dry-run"]])
def test_a_run_name_leading_out_of_the_results_folder_is_refused_before_anything_is_written(
        tiny, tmp_path, capsys, dry_run):
    root, weights = tiny
    out = tmp_path / "inside" / "results"
    err = one_line_error(capsys, run_argv(root, weights, out, *GRID, "--run", "../escaped", *dry_run))
    assert "run name '../escaped' is not a plain folder name" in err and "--run w4-sweep" in err
    assert not (tmp_path / "inside").exists()


def test_run_grid_itself_refuses_a_run_name_with_a_separator(tmp_path):
    env = Environment(data_root=tmp_path, device=torch.device("cpu"), cache_dir=tmp_path / "cache")
    with pytest.raises(UserError, match="not a plain folder name"):
        run_grid([], get_plugins(), env, "cpu", tmp_path / "out", "a/../../b", NullProgress())


def test_export_folders_come_from_the_grid_not_from_the_result_files(done_grid, tmp_path, monkeypatch, capsys):
    """A result.json naming another run (or another trial) must not decide which folder is exported."""
    import zsqbench.export.trial_export as trial_export

    root, weights, _ = done_grid
    out = _copy(done_grid, tmp_path)
    trials = sorted(p.parent for p in out.glob("default/*/result.json"))
    for trial in trials:
        result = json.loads((trial / "result.json").read_text())
        result["run"] = "victimrun"
        (trial / "result.json").write_text(json.dumps(result))
    exported: list[Path] = []

    def fake_export_all(folders, *args, **kwargs):
        exported.extend(f.path for f in folders)
        return []

    monkeypatch.setattr(trial_export, "export_all", fake_export_all)
    assert main(run_argv(root, weights, out, *GRID, "--seeds", "0,1", "--export", "onnx")) == 0
    assert sorted(exported) == trials


# ------------------------------------------------------------------ the leaderboard repairs itself


def test_a_run_of_a_finished_grid_restores_a_missing_leaderboard_row(done_grid, tmp_path, capsys):
    root, weights, _ = done_grid
    out = _copy(done_grid, tmp_path)
    board = out / "leaderboard.csv"
    full = pd.read_csv(board)
    full.iloc[:1].to_csv(board, index=False)  # killed between the second result.json and the rebuild
    assert main(run_argv(root, weights, out, *GRID, "--seeds", "0,1")) == 0
    assert sorted(pd.read_csv(board)["trial_id"]) == sorted(full["trial_id"])

    board.unlink()
    assert main(run_argv(root, weights, out, *GRID, "--seeds", "0")) == 0  # part of the grid is enough
    assert sorted(pd.read_csv(board)["trial_id"]) == sorted(full["trial_id"])
    unchanged = board.stat().st_mtime_ns
    assert main(run_argv(root, weights, out, *GRID, "--seeds", "0,1")) == 0
    assert board.stat().st_mtime_ns == unchanged  # an agreeing leaderboard is not rewritten


def test_a_run_of_a_finished_grid_removes_a_dead_workers_lease_and_keeps_a_live_one(done_grid, tmp_path):
    root, weights, _ = done_grid
    out = _copy(done_grid, tmp_path)
    dead, live = sorted(p.parent for p in out.glob("default/*/result.json"))
    now = time.time()
    me = LeaseOwner.me()
    ghost = LeaseOwner(me.host, 4_000_000, None, me.boot_id, None, 0, "ghost", me.pid_namespace)  # no such pid
    (dead / LEASE).write_text(json.dumps(LeaseInfo(ghost, now, now, 3).to_dict()))  # killed before its release
    elsewhere = LeaseOwner("elsewhere-node", 4242, None, None, None, 0, "elsewhere")
    (live / LEASE).write_text(json.dumps(LeaseInfo(elsewhere, now, now, 2).to_dict()))  # fresh heartbeat
    assert main(run_argv(root, weights, out, *GRID, "--seeds", "0,1")) == 0
    assert not (dead / LEASE).exists()
    assert json.loads((live / LEASE).read_text())["owner"]["token"] == "elsewhere"


def test_a_result_file_far_larger_than_a_result_is_refused_in_one_line_without_reading_it(done_grid, tmp_path,
                                                                                          capsys):
    out = _copy(done_grid, tmp_path)
    huge = next(out.glob("default/*/result.json"))
    with open(huge, "r+b") as fh:
        fh.truncate(64 << 20)  # sparse: 64 MiB of zeros on disk in no time
    line = one_line_error(capsys, ["leaderboard", str(out)])
    assert str(huge) in line and "larger than 16 MiB" in line


# ------------------------------------------------------------------ an unusable results folder


def test_a_file_where_the_results_folder_should_be_is_one_line(tiny, tmp_path, capsys):
    root, weights = tiny
    out = tmp_path / "results"
    out.write_text("not a folder")
    err = one_line_error(capsys, run_argv(root, weights, out, *GRID))
    assert f"cannot use {out}:" in err and "a file is in the way of a folder: remove it or pass another --out" in err


@pytest.mark.parametrize("code, reason, fix", [
    (errno.ENOSPC, "No space left on device", "free space there"),
    (errno.EROFS, "Read-only file system", "pass an --out on a writable disk"),
    (errno.EACCES, "Permission denied", "fix its permissions"),
])
def test_a_full_or_read_only_disk_before_the_first_write_is_one_line(tiny, tmp_path, capsys, monkeypatch,
                                                                     code, reason, fix):
    root, weights = tiny
    out = tmp_path / "results"

    def refuse(self, spec):
        raise OSError(code, reason, str(self.file(self.SPEC)))

    monkeypatch.setattr(TrialFolder, "write_spec", refuse)
    err = _error_line(capsys, run_argv(root, weights, out, *GRID))
    assert f"cannot write to {out / 'default'}" in err and reason in err and fix in err


def test_a_lease_that_cannot_be_created_fails_the_trial_in_one_line(tiny, tmp_path, capsys, monkeypatch):
    root, weights = tiny
    out = tmp_path / "results"

    def refuse(self, timeout_s):
        raise OSError(errno.EROFS, "Read-only file system", str(self.path / "lease.json"))

    monkeypatch.setattr(TrialFolder, "claim", refuse)
    assert main(run_argv(root, weights, out, *GRID)) == 1
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err
    text = " ".join(captured.out.split())
    assert "Read-only file system" in text and "pass an --out on a writable disk" in text
    assert not list(out.glob("*/*/result.json")) and not list(out.glob("*/*/error.json"))


# ------------------------------------------------------------------ refused while planning


@pytest.mark.parametrize("dry_run", [[], ["--dry-run"]])
def test_a_quantize_outputs_pattern_matching_no_module_is_refused_before_any_trial(tiny, tmp_path, capsys, dry_run):
    root, weights = tiny
    out = tmp_path / "results"
    err = one_line_error(capsys, run_argv(root, weights, out, *GRID, "-o", 'uniform.quantize_outputs=["nosuch.*"]',
                                          *dry_run))
    assert "quantizer 'uniform' refuses model resnet20_cifar10" in err and "['nosuch.*'] match no module" in err
    assert not out.exists()


def test_a_quantize_outputs_pattern_that_matches_is_planned(tiny, tmp_path, capsys):
    root, weights = tiny
    argv = run_argv(root, weights, tmp_path / "r", *GRID, "-o", 'uniform.quantize_outputs=["features.stage1.*.body"]',
                    "--dry-run")
    assert main(argv) == 0


@pytest.mark.parametrize("value, needle", [
    ("5", "devices: Input should be a valid list (got 5)"),
    ('["5"]', "devices: '5' is not a device a worker can use; write 'cuda:N'"),
])
def test_multi_gpu_devices_are_checked_by_name_and_problem(tiny, tmp_path, capsys, value, needle):
    root, weights = tiny
    out = tmp_path / "results"
    err = one_line_error(capsys, run_argv(root, weights, out, *GRID, "--executor", "multi-gpu",
                                          "-o", f"multi-gpu.devices={value}"))
    assert needle in err
    assert not out.exists()


def test_run_grid_names_the_executor_option_and_its_problem(tmp_path):
    env = Environment(data_root=tmp_path, device=torch.device("cpu"), cache_dir=tmp_path / "cache")
    with pytest.raises(UserError) as caught:
        run_grid([], get_plugins(), env, "cpu", tmp_path / "out", "default", NullProgress(),
                 executor_name="multi-gpu", executor_options={"devices": 5})
    assert "bad option for executor 'multi-gpu'" in str(caught.value)
    assert "devices: Input should be a valid list" in str(caught.value)
    assert "validation error" not in str(caught.value)
