"""One results folder, many writers: concurrent runs, killed and suspended workers, the leaderboard view."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import one_line_error, run_argv
from support.leaderboard import fake_result

from zsqbench.cli.main import main
from zsqbench.files import write_json_atomic
from zsqbench.leaderboard.results_folder import LEADERBOARD_NAME, rebuild_leaderboard
from zsqbench.runs.lease import LEASE, read_log

TINY = ["--epochs", "2", "--iters-per-epoch", "2", "--batch-size", "8", "--warmup-epochs", "1"]


_argv = run_argv


def _spawn(argv: list[str]) -> subprocess.Popen:
    """A `zsqbench run` process with one thread: two of them share the two cores without stalling, and
    every run of a test computes with the same thread count (which changes the rounding)."""
    return subprocess.Popen([sys.executable, "-m", "zsqbench.cli.main", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1", "ZSQBENCH_OFFLINE": "1"})


def _run(argv: list[str]) -> None:
    _, err = (proc := _spawn(argv)).communicate(timeout=600)
    assert proc.returncode == 0, err[-2000:]


def _trainings(trial: Path) -> int:
    """How often a worker trained this trial: releases after training, and claims or takeovers never
    released (a killed holder). A claim that found the trial finished meanwhile only looked."""
    events = read_log(trial)
    trained = sum(e["event"] == "release" and e.get("outcome", "").startswith("trained") for e in events)
    unreleased = sum(e["event"] in ("claim", "takeover") for e in events) - sum(e["event"] == "release" for e in events)
    return trained + unreleased


def _epochs_without_timing(result_file: Path) -> list[dict]:
    return [{k: v for k, v in e.items() if k != "seconds"} for e in json.loads(result_file.read_text())["epochs"]]


@pytest.mark.slow
def test_two_runs_on_one_folder_train_every_trial_exactly_once(tiny, tmp_path):
    root, weights = tiny
    out = tmp_path / "shared"
    grid = ["--generators", "gdfq,adadfq", "--loss", "kd,akt", "--bits", "4", *TINY]
    runs = [_spawn(_argv(root, weights, out, *grid)) for _ in range(2)]
    for run in runs:
        _, err = run.communicate(timeout=600)
        assert run.returncode == 0, err[-2000:]
    trials = sorted(p.parent for p in out.glob("*/*/spec.json"))
    assert len(trials) == 4
    for trial in trials:
        assert _trainings(trial) == 1, read_log(trial)
        lines = (trial / "metrics.jsonl").read_text().splitlines()
        assert [json.loads(line)["epoch"] for line in lines] == [0, 1]
        assert (trial / "result.json").is_file() and not (trial / LEASE).exists()
    board = pd.read_csv(out / LEADERBOARD_NAME)
    assert sorted(board["trial_id"]) == sorted(t.name for t in trials)


def _wait_for_epochs(out: Path, proc: subprocess.Popen, epochs: int) -> Path:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        found = list(out.glob("*/*/metrics.jsonl"))
        if found and len(found[0].read_text().splitlines()) >= epochs:
            return found[0].parent
        time.sleep(0.01)
    raise AssertionError(f"the trial did not reach epoch {epochs} while running (exit {proc.poll()})")


GRID = ["--generators", "gdfq", "--loss", "kd", "--bits", "3", "--epochs", "6", "--iters-per-epoch", "4",
        "--batch-size", "8", "--warmup-epochs", "1"]


def _dry_run_states(capsys, root, weights, out) -> list[str]:
    """The trial states a `--dry-run` of the grid reports (a lease times out only after 600 s)."""
    capsys.readouterr()
    assert main([*_argv(root, weights, out, *GRID, "--dry-run", "--json", "--lease-timeout", "600")]) == 0
    return [row["state"] for row in json.loads(capsys.readouterr().out)]


@pytest.mark.slow
def test_a_killed_workers_lease_expires_and_the_next_run_resumes_its_trial(tiny, tmp_path, capsys):
    root, weights = tiny
    reference = tmp_path / "reference"
    _run(_argv(root, weights, reference, *GRID))
    (ref_trial,) = [p.parent for p in reference.glob("*/*/result.json")]

    out = tmp_path / "killed"
    proc = _spawn(_argv(root, weights, out, *GRID))
    trial = _wait_for_epochs(out, proc, 2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (trial / LEASE).is_file() and not (trial / "result.json").exists()
    assert _dry_run_states(capsys, root, weights, out) == ["stale"]  # its process is gone from this host

    time.sleep(1.5)  # past the (shortened) lease timeout
    _run(_argv(root, weights, out, *GRID, "--lease-timeout", "1"))
    assert [e["event"] for e in read_log(trial)] == ["claim", "takeover", "release"]
    assert _epochs_without_timing(trial / "result.json") == _epochs_without_timing(ref_trial / "result.json")
    assert len((trial / "metrics.jsonl").read_text().splitlines()) == 6


@pytest.mark.slow
def test_a_suspended_worker_is_taken_over_and_writes_nothing_when_it_wakes(tiny, tmp_path, capsys):
    root, weights = tiny
    out = tmp_path / "suspended"
    first = _spawn(_argv(root, weights, out, *GRID, "--lease-timeout", "2"))
    trial = _wait_for_epochs(out, first, 1)
    first.send_signal(signal.SIGSTOP)
    try:
        assert _dry_run_states(capsys, root, weights, out) == ["running"]  # a live process holds a fresh lease
        _run(_argv(root, weights, out, *GRID, "--lease-timeout", "2"))
        # started while the stopped worker's lease was still live, the second run left the trial to it
        if not (trial / "result.json").exists():
            time.sleep(2.5)
            _run(_argv(root, weights, out, *GRID, "--lease-timeout", "2"))
        result = (trial / "result.json").read_bytes()
    finally:
        first.send_signal(signal.SIGCONT)
    _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err[-2000:]
    assert (trial / "result.json").read_bytes() == result  # the woken worker did not overwrite it
    assert [json.loads(line)["epoch"] for line in (trial / "metrics.jsonl").read_text().splitlines()] == list(range(6))
    events = [e["event"] for e in read_log(trial)]
    assert events[:2] == ["claim", "takeover"] and events.count("release") == 1


def _finish_trials(out: str, worker: int, count: int) -> None:
    """A worker process: write result files and rebuild the leaderboard after each, as the runner does."""
    for i in range(count):
        result = fake_result(f"w{worker}t{i}", run="stress", seed=worker * 100 + i)
        path = Path(out) / "stress" / result["trial_id"] / "result.json"
        write_json_atomic(path, result)
        rebuild_leaderboard(Path(out))


def test_eight_processes_finishing_trials_at_once_lose_no_leaderboard_row(tmp_path):
    ctx = mp.get_context("spawn")
    workers = [ctx.Process(target=_finish_trials, args=(str(tmp_path), w, 5)) for w in range(8)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=120)
        assert w.exitcode == 0
    board = pd.read_csv(tmp_path / LEADERBOARD_NAME)
    assert len(board) == 40 and board["trial_id"].is_unique


def test_eight_threads_finishing_trials_at_once_lose_no_leaderboard_row(tmp_path):
    threads = [threading.Thread(target=_finish_trials, args=(str(tmp_path), w, 5)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(pd.read_csv(tmp_path / LEADERBOARD_NAME)) == 40


def test_the_leaderboard_of_a_folder_always_agrees_with_its_trials(tmp_path, capsys):
    _finish_trials(str(tmp_path), 0, 3)
    csv = tmp_path / LEADERBOARD_NAME
    good = csv.read_text()
    csv.write_text(good.splitlines()[0] + "\n" + good.splitlines()[1] + "\n")  # an editor dropped two rows
    assert main(["leaderboard", str(tmp_path), "--per-trial", "--json"]) == 0
    captured = capsys.readouterr()
    assert len(json.loads(captured.out)) == 3 and "rebuilt" in captured.err
    assert csv.read_text() == good
    csv.write_text("trial_id,top1_last\nx,")  # damaged beyond reading
    assert main(["leaderboard", str(tmp_path), "--rebuild"]) == 0
    assert csv.read_text() == good
    assert "rebuilt the 3 result file(s)" in capsys.readouterr().err
    assert "--rebuild needs a results folder" in one_line_error(capsys, ["leaderboard", str(csv), "--rebuild"])
