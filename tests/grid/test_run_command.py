"""`zsqbench run` as a newcomer meets it: the estimate in the units of the device in use, the
question before a long grid (and the refusal without a terminal), every -o checked against the
plugin it names, what a smoke run's numbers are, and flags that would run nothing."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
import torch
from conftest import one_line_error
from support.data import write_random_weights
from support.fresh_plugins import fresh_plugins  # noqa: F401 (autouse fixture)

from zsqbench.api.plugins import build_plugins
from zsqbench.cli import run_cmd
from zsqbench.cli.main import main
from zsqbench.grid.runner import GridReport

#: The README's headline grid: 6 trials, about two days on the 2-core CPU, well under an hour on a GPU.
HEADLINE = ["--generators", "adadfq,hast", "--loss", "akt", "--bits", "3,4,5", "--budget", "paper"]


@pytest.fixture
def weights(tmp_path, plugins) -> Path:
    return write_random_weights(tmp_path / "teacher.pth", plugins.models.get("resnet20_cifar10").build())


class FakeStdin:
    """A stdin that is or is not a terminal and answers once; reading it when no question was
    due fails the test."""

    def __init__(self, tty: bool, answer: str | None = None) -> None:
        self.tty, self.answer, self.read = tty, answer, False

    def isatty(self) -> bool:
        return self.tty

    def readline(self) -> str:
        assert self.answer is not None, "asked a question nobody should have been asked"
        self.read = True
        return self.answer


@pytest.fixture
def started(monkeypatch):
    """Replaces run_grid: records whether the grid was started, runs nothing."""
    calls: list[int] = []

    def fake_run_grid(specs, *args, **kwargs) -> GridReport:
        calls.append(len(specs))
        return GridReport()

    monkeypatch.setattr(run_cmd, "run_grid", fake_run_grid)
    return calls


def _flat(text: str) -> str:
    return " ".join(text.split())  # rich wraps at the terminal width


# ------------------------------------------------------------------ the estimate


def test_durations_read_in_the_unit_a_person_plans_with():
    from zsqbench.perf.estimate import duration

    assert duration(40) == "40 seconds"
    assert duration(25 * 60) == "25 minutes"
    assert duration(13.5 * 3600) == "13.5 hours"
    assert duration(52.9 * 3600) == "2.2 days"


def test_the_headline_dry_run_estimates_the_device_it_will_run_on(capsys, weights):
    argv = ["run", *HEADLINE, "--teacher-weights", str(weights), "--dry-run"]
    assert main([*argv, "--device", "cpu"]) == 0
    cpu = _flat(capsys.readouterr().out)
    assert "days on the CPU" in cpu and "more than a day" in cpu and "--device cuda" in cpu
    assert "GPU-hours" not in cpu and "CPU-hours" not in cpu
    # a GPU run planned on a machine without one (a login node): the GPU's figure, not the CPU's
    assert main([*argv, "--device", "cuda"]) == 0
    gpu = _flat(capsys.readouterr().out)
    assert "minutes on one GPU" in gpu and "more than a day" not in gpu and "CPU" not in gpu


# ------------------------------------------------------------------ the question before a long grid


def test_a_long_grid_without_a_terminal_is_refused_until_yes(capsys, monkeypatch, weights, tmp_path, started):
    argv = ["run", *HEADLINE, "--teacher-weights", str(weights), "--device", "cpu", "--out", str(tmp_path / "r")]
    monkeypatch.setattr("sys.stdin", FakeStdin(tty=False))
    err = one_line_error(capsys, argv)
    assert "days on the CPU" in err and "pass --yes" in err
    assert started == [] and not (tmp_path / "r").exists()
    assert main([*argv, "--yes"]) == 0 and started == [6]


def test_one_long_trial_asks_too(capsys, monkeypatch, weights, tmp_path, started):
    """The question counts hours on the device, not iterations: one 13-hour trial is long."""
    argv = ["run", "--generators", "adadfq", "--loss", "akt", "--bits", "4", "--budget", "paper",
            "--teacher-weights", str(weights), "--device", "cpu", "--out", str(tmp_path / "r"), "--json"]
    stdin = FakeStdin(tty=True, answer="n\n")
    monkeypatch.setattr("sys.stdin", stdin)
    assert main(argv) == 0 and stdin.read and started == []
    captured = capsys.readouterr()
    assert "hours on the CPU. Start? [y/N]" in captured.err and "not started" in captured.err
    assert captured.out == ""  # the question goes to stderr: --json output stays parseable
    monkeypatch.setattr("sys.stdin", FakeStdin(tty=True, answer="y\n"))
    assert main(argv) == 0 and started == [1]


def test_the_same_trial_on_a_gpu_does_not_ask(monkeypatch, weights, tmp_path, started):
    monkeypatch.setattr("sys.stdin", FakeStdin(tty=False))  # fails the test if read
    monkeypatch.setattr(run_cmd, "resolve_device", lambda name: torch.device("cuda"))  # no GPU needed to plan
    assert main(["run", "--generators", "adadfq", "--loss", "akt", "--bits", "4", "--budget", "paper",
                 "--teacher-weights", str(weights), "--device", "cuda", "--out", str(tmp_path / "r"), "-q"]) == 0
    assert started == [1]  # ≈ 10 GPU-minutes


def test_smoke_grids_never_ask(monkeypatch, weights, tmp_path, started):
    monkeypatch.setattr("sys.stdin", FakeStdin(tty=False))
    assert main(["run", "--generators", "gdfq,adadfq,hast,qimera,zeroq,intraq", "--loss", "kd,akt",
                 "--bits", "2,3,4,5", "--seeds", "0,1,2", "--budget", "smoke", "--teacher-weights", str(weights),
                 "--device", "cpu", "--out", str(tmp_path / "r"), "-q"]) == 0
    assert started == [6 * 2 * 4 * 3]


# ------------------------------------------------------------------ -o checked against the plugin it names


@pytest.mark.parametrize(
    "option, needle",
    [
        # akt is not in the grid (gdfq + kd): its options are still checked
        ("akt.lamb=1", "bad option for loss 'akt' given with -o: unknown key 'lamb'. Did you mean 'lam'? "
                       "Its options are: mode, logit, temperature, lam,"),
        ("akt.lam=abc", "bad option for loss 'akt' given with -o: lam: Input should be a valid number"),
        ("kdd.temperature=4", "options given with -o for unknown plugin 'kdd'. Did you mean 'kd'? "
                              "Plugins that take options: adadfq, ait, akt,"),
        ("adadfq.lambda_l=0.9", "lambda_l (0.9) must not exceed lambda_u (0.8)"),
        ("slurm.partitio=gpu", "bad option for executor 'slurm' given with -o: unknown key 'partitio'. "
                               "Did you mean 'partition'?"),
        ("local.workers=2", "unknown key 'workers'. Its options are: (none: it takes no options)"),
        ("resnet20_cifar10.x=1", "for unknown plugin 'resnet20_cifar10'"),
    ],
)
def test_every_option_names_a_plugin_and_one_of_its_keys(capsys, weights, option, needle):
    argv = ["run", "--generators", "gdfq", "--loss", "kd", "--teacher-weights", str(weights), "--dry-run",
            "-o", option]
    assert needle in one_line_error(capsys, argv)


def test_config_option_tables_are_checked_the_same_way(capsys, weights, tmp_path):
    config = tmp_path / "grid.toml"
    config.write_text("generators = ['gdfq']\n[options.akt]\nlamb = 1\n")
    err = one_line_error(capsys, ["run", "--config", str(config), "--teacher-weights", str(weights), "--dry-run"])
    assert f"bad option for loss 'akt' in {config}: unknown key 'lamb'. Did you mean 'lam'?" in err
    config.write_text("generators = ['gdfq']\n[options.at]\nbeta = 1\n")
    err = one_line_error(capsys, ["run", "--config", str(config), "--teacher-weights", str(weights), "--dry-run"])
    assert f"options in {config} for unknown plugin 'at'. Did you mean 'akt'?" in err


def test_a_third_party_loss_outside_the_grid_gets_its_options_checked(capsys, monkeypatch, weights):
    """The issue's case: the fixture package's generator in the grid, a typo for its loss `at`."""
    path = Path(__file__).parents[2] / "examples" / "zsqbench-noise" / "src" / "noise_zsq.py"
    spec = importlib.util.spec_from_file_location("noise_zsq", path)
    noise_zsq = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(noise_zsq)
    custom = build_plugins(extra={"noise": noise_zsq})
    monkeypatch.setattr(run_cmd, "get_plugins", lambda: custom)
    argv = ["run", "--generators", "noise", "--loss", "kd", "--budget", "smoke", "--teacher-weights", str(weights),
            "--dry-run"]
    assert main(argv) == 0
    capsys.readouterr()
    err = one_line_error(capsys, [*argv, "-o", "at.betaa=100"])
    assert "bad option for loss 'at' given with -o: unknown key 'betaa'. Did you mean 'beta'?" in err


# ------------------------------------------------------------------ flags that would run nothing


@pytest.mark.parametrize(
    "flags, needle",
    [
        (["--seeds", ""], "--seeds '' names no seed"),
        (["--seeds", ","], "--seeds ',' names no seed"),
        (["--seeds", "0,x"], "--seeds must be integers like '0,1,2', got '0,x'"),
        (["--max-parallel", "0"], "--max-parallel must be at least 1, got 0"),
        (["--max-parallel", "-2"], "--max-parallel must be at least 1, got -2"),
    ],
)
def test_flags_that_would_run_nothing_are_refused(capsys, weights, flags, needle):
    assert needle in one_line_error(capsys, ["run", "--teacher-weights", str(weights), "--dry-run", *flags])


# ------------------------------------------------------------------ what smoke numbers are


def _row(trial_id: str, top1: float, budget_name: str, dataset: str = "cifar10") -> dict:
    spec = {"generator": {"name": "gdfq"}, "loss": {"name": "kd"}, "w_bits": 4, "a_bits": 4, "seed": 0,
            "dataset": dataset, "budget_name": budget_name}
    return {"trial_id": trial_id, "spec": spec, "fp_top1": 92.6, "ptq_top1": top1, "top1_last": top1,
            "top1_oracle": top1}


def test_smoke_results_say_they_are_plumbing_and_chance_trials_are_marked(capsys, tmp_path):
    rows = [_row("aaaa", 14.9, "smoke"), _row("bbbb", 15.1, "smoke"), _row("cccc", 1.4, "smoke", "cifar100")]
    run_cmd._print_results(rows, GridReport(), tmp_path)
    text = capsys.readouterr().out
    # under a pipe: plain columns trial, generator, loss, bits, seed, FP, PTQ, top-1 last, oracle*
    row = re.compile(r"^(\w{4})\s+gdfq\s+kd\s+W4A4\s+0\s+92\.60\s+([\d.]+)\s+([\d.]+(?: †)?)\s+([\d.]+)$")
    last = {m[1]: m[3] for m in map(row.match, text.splitlines()) if m}
    # 1.5x chance: 15 % on CIFAR-10, 1.5 % on CIFAR-100
    assert last == {"aaaa": "14.90 †", "bbbb": "15.10", "cccc": "1.40 †"}
    assert not re.search("[\u2500-\u257f]", text)  # no box drawing under a pipe
    flat = _flat(text)
    assert "† at chance: 2 trial(s) ended within 1.5x of guessing" in flat
    assert "smoke-budget numbers are plumbing checks (does the grid run?), not results" in flat


def test_results_of_other_budgets_are_not_called_plumbing(capsys, tmp_path):
    run_cmd._print_results([_row("aaaa", 80.0, "cpu"), _row("bbbb", 70.0, "paper+custom")], GridReport(), tmp_path)
    text = capsys.readouterr().out
    assert "plumbing" not in text and "†" not in text
    assert run_cmd.is_smoke("in1k-smoke") and run_cmd.is_smoke("smoke+custom") and not run_cmd.is_smoke("cpu")
