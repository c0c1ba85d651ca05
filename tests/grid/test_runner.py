"""The grid runner: checkpoints, resume after SIGKILL, failures, executors."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import make_spec, one_line_error, run_argv
from support.data import write_random_weights, write_test_set
from support.fresh_plugins import fresh_plugins  # noqa: F401 (autouse fixture)

from zsqbench.api import DistillationLoss, PretrainedWeights, hookimpl
from zsqbench.api.plugins import build_plugins
from zsqbench.cli.main import main
from zsqbench.files import file_digest
from zsqbench.runs.lease import LEASE, TrialLease


def _args(root, weights, out, *extra):
    return run_argv(root, weights, out, "--budget", "smoke", *extra)


def _epochs_without_timing(result_file: Path) -> list[dict]:
    epochs = json.loads(result_file.read_text())["epochs"]
    return [{k: v for k, v in e.items() if k != "seconds"} for e in epochs]


@pytest.mark.slow
def test_sigkill_then_resume_equals_an_uninterrupted_run(tiny, tmp_path):
    root, weights = tiny
    grid = ["--generators", "gdfq", "--loss", "kd", "--bits", "3", "--epochs", "8", "--iters-per-epoch", "4",
            "--warmup-epochs", "1"]
    reference = tmp_path / "reference"
    assert main(_args(root, weights, reference, *grid)) == 0

    killed = tmp_path / "killed"
    cmd = [sys.executable, "-m", "zsqbench.cli.main", *_args(root, weights, killed, *grid)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    metrics = None
    while time.monotonic() < deadline and proc.poll() is None:
        found = list(killed.glob("*/*/metrics.jsonl"))
        if found and len(found[0].read_text().splitlines()) >= 2:
            metrics = found[0]
            break
        time.sleep(0.01)
    assert metrics is not None and proc.poll() is None, "the trial finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    trial = metrics.parent
    assert not (trial / "result.json").exists()
    assert not (killed / "leaderboard.csv").exists()
    assert (trial / "checkpoint.pt").exists()

    assert main(_args(root, weights, killed, *grid)) == 0
    (ref_trial,) = [p.parent for p in reference.glob("*/*/result.json")]
    assert ref_trial.name == trial.name  # same spec, same trial id
    assert _epochs_without_timing(trial / "result.json") == _epochs_without_timing(ref_trial / "result.json")
    a = torch.load(trial / "checkpoint.pt", weights_only=False)["student"]
    b = torch.load(ref_trial / "checkpoint.pt", weights_only=False)["student"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert len(pd.read_csv(killed / "leaderboard.csv")) == 1
    assert len((trial / "metrics.jsonl").read_text().splitlines()) == 8


@pytest.mark.slow
def test_grid_local_executor_aggregates_over_seeds(tiny, tmp_path, capsys):
    root, weights = tiny
    out = tmp_path / "grid"
    grid = ["--generators", "gdfq,adadfq", "--loss", "kd,akt", "--bits", "3,4", "--seeds", "0,1"]
    assert main(_args(root, weights, out, *grid)) == 0
    capsys.readouterr()
    assert len(pd.read_csv(out / "leaderboard.csv")) == 16
    assert main(["leaderboard", str(out / "leaderboard.csv"), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 8 and all(r["n_seeds"] == 2 for r in rows)
    # the dry run now shows every trial as done, and a re-run does nothing
    assert main(_args(root, weights, out, *grid, "--dry-run", "--json")) == 0
    assert {r["state"] for r in json.loads(capsys.readouterr().out)} == {"done"}


def test_a_done_trial_is_not_reused_for_another_precision(tiny, tmp_path, capsys):
    """The trial id leaves compute settings out, so the runner checks the precision itself."""
    root, weights = tiny
    out = tmp_path / "prec"
    grid = ["--generators", "gdfq", "--loss", "kd", "--bits", "4"]
    assert main(_args(root, weights, out, *grid)) == 0
    row = pd.read_csv(out / "leaderboard.csv", keep_default_na=False).iloc[0]
    assert (row["precision"], row["channels_last"]) == ("fp32", True)  # the CPU default, recorded in every row
    capsys.readouterr()
    before = (out / "leaderboard.csv").read_text()
    err = one_line_error(capsys, _args(root, weights, out, *grid, "--precision", "bf16"))
    assert "was run at precision fp32, this run asks for bf16" in err and "--run NAME" in err
    assert (out / "leaderboard.csv").read_text() == before
    assert main(_args(root, weights, out, *grid, "--no-channels-last")) == 0  # rounding only: reused
    # an interrupted trial (checkpoint, no result) is not resumed at another precision either
    (trial,) = [p.parent for p in out.glob("*/*/result.json")]
    (trial / "result.json").unlink()
    assert (trial / "checkpoint.pt").is_file()
    err = one_line_error(capsys, _args(root, weights, out, *grid, "--precision", "bf16"))
    assert "was run at precision fp32, this run asks for bf16" in err
    assert not (trial / "result.json").exists()


@pytest.mark.slow
def test_grid_on_a_local_ray_instance(tiny, tmp_path, capsys):
    pytest.importorskip("ray", reason="the ray extra is not installed")
    root, weights = tiny
    out = tmp_path / "ray"
    grid = ["--generators", "gdfq,adadfq", "--loss", "kd,akt", "--bits", "3,4", "--seeds", "0,1",
            "--executor", "ray", "-o", "ray.gpus_per_trial=0", "-o", "ray.num_cpus=2", "--max-parallel", "2"]
    code = main(_args(root, weights, out, *grid, "--json"))
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and report["failed"] == [], report["failed"]
    assert main(["leaderboard", str(out / "leaderboard.csv"), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 8 and all(r["n_seeds"] == 2 for r in rows)


@pytest.mark.slow
def test_submitit_executor_with_its_local_backend(tiny, tmp_path):
    pytest.importorskip("submitit", reason="the slurm extra is not installed")
    root, weights = tiny
    out = tmp_path / "slurm"
    grid = ["--generators", "gdfq", "--loss", "kd", "--bits", "3,4", "--executor", "slurm",
            "-o", "slurm.cluster=local", "-o", "slurm.gpus_per_task=0", "-o", "slurm.timeout_min=10"]
    assert main(_args(root, weights, out, *grid)) == 0
    assert len(pd.read_csv(out / "leaderboard.csv")) == 2
    assert list((out / ".submitit").iterdir())


@pytest.mark.slow
def test_multi_process_executor_on_cpu_workers(tiny, tmp_path):
    root, weights = tiny
    out = tmp_path / "mp"
    grid = ["--generators", "gdfq", "--loss", "kd", "--bits", "3,4", "--executor", "multi-gpu",
            "-o", 'multi-gpu.devices=["cpu","cpu"]']
    assert main(_args(root, weights, out, *grid)) == 0
    assert len(pd.read_csv(out / "leaderboard.csv")) == 2


def test_multi_gpu_without_gpus_is_a_user_error(tiny, tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    root, weights = tiny
    code = main(_args(root, weights, tmp_path / "o", "--executor", "multi-gpu"))
    assert code == 2 and "no CUDA GPU" in capsys.readouterr().err


def test_unknown_executor_is_a_user_error(capsys):
    assert main(["run", "--executor", "kubernetes", "--dry-run"]) == 2
    assert "unknown executor 'kubernetes'" in capsys.readouterr().err


class _NaNLoss(DistillationLoss):
    name = "nan"
    description = "a loss that is NaN (for tests)"

    def __call__(self, inputs):
        total = inputs.student_logits.sum() * float("nan")
        return {"total": total, "logit": total}


class _NaNPlugin:
    @hookimpl
    def register_losses(self, register):
        register(_NaNLoss)


@pytest.mark.slow
def test_nan_run_is_marked_diverged_and_not_reported(tiny, tmp_path, monkeypatch, capsys):
    root, weights = tiny
    custom = build_plugins(extra={"nan-loss": _NaNPlugin()})
    monkeypatch.setattr("zsqbench.cli.run_cmd.get_plugins", lambda: custom)
    monkeypatch.setattr("zsqbench.grid.worker.get_plugins", lambda: custom)
    out = tmp_path / "nan"
    assert main(_args(root, weights, out, "--generators", "gdfq", "--loss", "nan,kd", "--bits", "4")) == 1
    (error_file,) = out.glob("*/*/error.json")
    assert json.loads(error_file.read_text())["status"] == "diverged"
    assert not (error_file.parent / "result.json").exists()
    board = pd.read_csv(out / "leaderboard.csv")
    assert list(board["loss"]) == ["kd"]
    capsys.readouterr()
    # failed trials are left alone unless asked
    assert main(_args(root, weights, out, "--generators", "gdfq", "--loss", "nan", "--bits", "4", "--dry-run",
                      "--json")) == 0
    assert json.loads(capsys.readouterr().out)[0]["state"] == "failed"
    assert main(_args(root, weights, out, "--generators", "gdfq", "--loss", "nan", "--bits", "4")) == 0
    assert main(_args(root, weights, out, "--generators", "gdfq", "--loss", "nan", "--bits", "4",
                      "--retry-failed")) == 1


def test_corrupt_checkpoint_stops_before_changing_anything(tiny, tmp_path, capsys):
    root, weights = tiny
    out = tmp_path / "corrupt"
    grid = ["--generators", "gdfq", "--loss", "kd", "--bits", "3"]
    assert main(_args(root, weights, out, *grid, "--dry-run", "--json")) == 0
    (row,) = json.loads(capsys.readouterr().out)
    trial = out / "default" / row["trial_id"]
    trial.mkdir(parents=True)
    (trial / "spec.json").write_text("{}")
    (trial / "checkpoint.pt").write_bytes(b"PK\x03\x04 truncated")
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    code = main(_args(root, weights, out, *grid))
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and "corrupt checkpoint" in err
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_status_summarizes_a_results_folder(tiny, tmp_path, capsys):
    out = tmp_path / "status"
    specs = {name: make_spec(bits=bits) for name, bits in (("abc", 3), ("def", 4))}
    ids = {name: spec.trial_id for name, spec in specs.items()}  # trial folders are named by their spec's hash
    for name, spec in specs.items():
        (out / "default" / ids[name]).mkdir(parents=True)
        (out / "default" / ids[name] / "spec.json").write_text(json.dumps(spec.model_dump(mode="json")))
    (out / "default" / ids["def"] / "error.json").write_text(json.dumps({"status": "failed", "error": "boom"}))
    assert main(["status", str(out), "--json"]) == 0
    states = {r["trial_id"]: r["state"] for r in json.loads(capsys.readouterr().out)}
    assert states == {ids["abc"]: "incomplete", ids["def"]: "failed"}

    lease = TrialLease(out / "default" / ids["abc"], timeout_s=600)  # a live worker: this process
    assert lease.acquire()
    try:
        assert main(["status", str(out), "--json"]) == 0
        (row,) = [r for r in json.loads(capsys.readouterr().out) if r["trial_id"] == ids["abc"]]
        assert row["state"] == "running" and row["owner"] == lease.me.describe() and row["stale_reason"] == ""
        assert row["heartbeat_age_s"] < 60
        dead = dict(json.loads((out / "default" / ids["abc"] / LEASE).read_text()))
        dead["owner"] = {**dead["owner"], "pid": 2**22 + 1}  # above Linux's pid_max: never a live process
        (out / "default" / ids["abc"] / LEASE).write_text(json.dumps(dead))
        assert main(["status", str(out), "--json"]) == 0
        (row,) = [r for r in json.loads(capsys.readouterr().out) if r["trial_id"] == ids["abc"]]
        assert row["state"] == "stale" and "is gone" in row["stale_reason"]
    finally:
        (out / "default" / ids["abc"] / LEASE).unlink()
    assert main(["status", str(tmp_path / "missing")]) == 2
    capsys.readouterr()
    (out / "default" / ids["abc"] / "spec.json").write_text("{}")
    assert "corrupt spec file" in one_line_error(capsys, ["status", str(out)])


def test_collapse_to_chance_is_divergence_only_on_a_real_sized_test_set():
    from zsqbench.trial.monitor import collapsed

    assert collapsed(10.5, 80.0, 10, 10_000)
    assert not collapsed(40.0, 80.0, 10, 10_000)
    assert not collapsed(10.5, 15.0, 10, 10_000)  # the calibrated student was never clearly above chance
    assert not collapsed(8.3, 25.0, 10, 24)  # a 24-image fixture: too noisy to call


def test_exploding_gradients_are_flagged():
    from zsqbench.runs.record import training_flags

    calm = [{"grad_norm_mean": None, "grad_norm_max": None},
            {"grad_norm_mean": 2.0, "grad_norm_max": 5.0}, {"grad_norm_mean": 3.0, "grad_norm_max": 50.0}]
    assert training_flags(calm) == []
    exploding = calm + [{"grad_norm_mean": 90.0, "grad_norm_max": 201.0}]
    assert training_flags(exploding) == ["exploding_gradients"]
    assert training_flags([{"warnings": ["feature term is exactly 0"]}]) == ["warnings"]


def _twin_teacher_plugins(plugins, first: Path, second: Path):
    """ResNet-20 CIFAR-10 pinned to two checkpoints ('first' preferred), as the bundled teacher pins
    pytorchcv's file before chenyaofo's."""
    base = plugins.models.get("resnet20_cifar10")
    norm = base.weights[0].normalization
    twin = base.__class__(**{**base.__dict__, "name": "twin_cifar10", "weights": (
        PretrainedWeights(tag="first", filename=first.name, normalization=norm, expected_top1=None,
                          sha256=file_digest(first)),
        PretrainedWeights(tag="second", filename=second.name, normalization=norm, expected_top1=None,
                          sha256=file_digest(second)))})

    class Twin:
        @hookimpl
        def register_models(self, register):
            register(twin)

    return build_plugins(extra={"twin": Twin()})


@pytest.mark.slow
def test_a_run_with_another_teacher_checkpoint_does_not_reuse_results(tmp_path, plugins, monkeypatch, capsys):
    """Run with one pinned checkpoint, add the preferred one, run again: a second trial (another id)
    is trained, and both stay done with their own teacher."""
    root = tmp_path / "data"
    write_test_set(root, "cifar10", n=24)
    build = plugins.models.get("resnet20_cifar10").build
    first = write_random_weights(tmp_path / "spare" / "first.pth", build(), seed=1)
    second = write_random_weights(root / "weights" / "second.pth", build(), seed=2)
    custom = _twin_teacher_plugins(plugins, first, second)
    monkeypatch.setattr("zsqbench.cli.run_cmd.get_plugins", lambda: custom)
    monkeypatch.setattr("zsqbench.grid.worker.get_plugins", lambda: custom)
    out = tmp_path / "results"
    argv = ["run", "--model", "twin_cifar10", "--generators", "gdfq", "--loss", "kd", "--bits", "4", "--budget",
            "smoke", "--data-root", str(root), "--out", str(out), "--device", "cpu", "-q", "--json"]

    assert main(argv) == 0
    (one,) = json.loads(capsys.readouterr().out)["results"]
    (root / "weights" / "first.pth").write_bytes(first.read_bytes())  # the preferred checkpoint appears
    assert main([*argv, "--dry-run"]) == 0
    (planned,) = json.loads(capsys.readouterr().out)
    assert planned["teacher"].startswith("first (sha256 ") and planned["state"] == "pending"
    assert main(argv) == 0
    (two,) = json.loads(capsys.readouterr().out)["results"]
    assert one["trial_id"] != two["trial_id"]
    assert (one["spec"]["teacher"]["tag"], two["spec"]["teacher"]["tag"]) == ("second", "first")
    board = pd.read_csv(out / "leaderboard.csv")
    assert sorted(board["teacher_weights"]) == ["first", "second"]
    assert set(board["teacher_sha256"]) == {file_digest(first), file_digest(second)}
    assert main(["status", str(out), "--json"]) == 0
    assert [r["state"] for r in json.loads(capsys.readouterr().out)] == ["done", "done"]

    # the same with explicit, unpinned files: another file, another trial
    other = write_random_weights(tmp_path / "other.pth", build(), seed=3)
    mine = write_random_weights(tmp_path / "mine.pth", build(), seed=4)
    ids = []
    for weights in (other, mine):
        assert main([*argv, "--teacher-weights", str(weights)]) == 0
        ids.append(json.loads(capsys.readouterr().out)["results"][0]["trial_id"])
    assert len(set(ids) | {one["trial_id"], two["trial_id"]}) == 4
