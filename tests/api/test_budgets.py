"""Budgets: presets from registry.toml, the overrides methods contribute, the user's grid file and
flags, and how they combine (one partial-budget model for all of them)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from conftest import one_line_error
from pydantic import ValidationError

from zsqbench.api import BudgetOverride, BudgetPreset, hookimpl
from zsqbench.api.budgets import PartialBudget
from zsqbench.api.plugins import build_plugins
from zsqbench.api.spec import Budget, TrialSpec
from zsqbench.cli.main import main
from zsqbench.errors import UserError
from zsqbench.grid.budgets import resolve_budget


def _plugins_with(*overrides: BudgetOverride):
    class Extra:
        @hookimpl
        def register_budget_overrides(self, register):
            for o in overrides:
                register(o)

    return build_plugins(extra={"extra": Extra()})


def test_akt_runs_its_own_schedule_under_paper_and_kd_keeps_adadfqs(plugins):
    akt = resolve_budget(plugins, "paper", "adadfq", "akt")
    assert (akt.budget.epochs, akt.budget.iters_per_epoch, akt.budget.batch_size) == (200, 200, 200)
    assert akt.budget.lr_milestones == [100] and akt.budget.warmup_epochs == 4
    kd = resolve_budget(plugins, "paper", "adadfq", "kd")
    assert (kd.budget.epochs, kd.budget.iters_per_epoch, kd.budget.batch_size) == (400, 200, 16)
    for loss in ("spatial", "channel"):  # Table 4 ran AKT's setup
        assert resolve_budget(plugins, "paper", "adadfq", loss).budget == akt.budget
    # GDFQ and HAST keep their own schedules with AKT's loss (docs/methods/akt.md#feature-losses-on-gdfq-and-hast)
    assert resolve_budget(plugins, "paper", "gdfq", "akt").budget == resolve_budget(plugins, "paper", "gdfq", "kd").budget
    hast = resolve_budget(plugins, "paper", "hast", "akt")
    assert (hast.budget.epochs, hast.budget.batch_size, hast.optim.student_lr) == (151, 64, 1e-5)


def test_hast_owns_its_synthesis_sizes(plugins):
    smoke = resolve_budget(plugins, "smoke", "hast", "kd")
    assert smoke.generator_options == {"num_images": 16, "synthesis_batch": 8, "synthesis_iters": 3}
    assert smoke.optim.student_lr == 1e-6 and smoke.sources[1:] == ("smoke:hast+*",)
    assert resolve_budget(plugins, "smoke", "gdfq", "kd").generator_options == {}


def test_a_pair_override_wins_and_disagreeing_singles_are_refused():
    plugins = _plugins_with(
        BudgetOverride(preset="cpu", loss="kd", epochs=5),
        BudgetOverride(preset="cpu", generator="gdfq", loss="kd", epochs=6),
        BudgetOverride(preset="cpu", loss="akt", batch_size=32),
        BudgetOverride(preset="cpu", generator="gdfq", batch_size=48),
    )
    assert resolve_budget(plugins, "cpu", "gdfq", "kd").budget.epochs == 6
    assert resolve_budget(plugins, "cpu", "adadfq", "kd").budget.epochs == 5
    with pytest.raises(UserError, match="disagree on batch_size for gdfq\\+akt under 'cpu'") as err:
        resolve_budget(plugins, "cpu", "gdfq", "akt")
    assert "cpu:gdfq+*" in str(err.value) and "cpu:*+akt" in str(err.value) and "\n" not in str(err.value)


def test_dry_run_shows_the_paper_schedules(capsys, tmp_path, plugins):
    from support.data import write_random_weights

    weights = write_random_weights(tmp_path / "t.pth", plugins.models.get("resnet20_cifar10").build())
    base = ["run", "--generators", "adadfq", "--bits", "3", "--budget", "paper", "--teacher-weights", str(weights),
            "--dry-run", "--json"]
    assert main([*base, "--loss", "akt"]) == 0
    (akt,) = json.loads(capsys.readouterr().out)
    assert (akt["epochs"], akt["iters_per_epoch"], akt["batch_size"], akt["lr_milestones"]) == (200, 200, 200, [100])
    assert main([*base, "--loss", "kd"]) == 0
    (kd,) = json.loads(capsys.readouterr().out)
    assert (kd["epochs"], kd["iters_per_epoch"], kd["batch_size"]) == (400, 200, 16)
    assert main([*base, "--loss", "akt", "--epochs", "10"]) == 0  # the user's own override wins
    assert json.loads(capsys.readouterr().out)[0]["epochs"] == 10


def _registry_error(tmp_path, monkeypatch, capsys, edit) -> str:
    """The one-line error of `zsqbench run --dry-run` under registry.toml changed by ``edit``."""
    from zsqbench.api.config import _load
    from zsqbench.api.plugins import get_plugins

    source = (Path(__file__).parents[2] / "registry.toml").read_text()
    bad = tmp_path / "registry.toml"
    bad.write_text(edit(source))
    monkeypatch.setenv("ZSQBENCH_REGISTRY", str(bad))
    _load.cache_clear()
    get_plugins.cache_clear()
    try:
        return one_line_error(capsys, ["run", "--dry-run"])
    finally:
        _load.cache_clear()
        get_plugins.cache_clear()


def test_registry_toml_holds_no_method_settings(tmp_path, monkeypatch, capsys):
    err = _registry_error(tmp_path, monkeypatch, capsys,
                          lambda text: text + "\n[budgets.paper.generators.hast]\nepochs = 151\n")
    assert "budgets.paper.generators" in err


def test_a_preset_sets_every_field_a_budget_requires(tmp_path, monkeypatch, capsys):
    err = _registry_error(tmp_path, monkeypatch, capsys,  # smoke's iters_per_epoch left out
                          lambda text: re.sub(r"(\[budgets\.smoke\][^\[]*?)iters_per_epoch = 2\n", r"\1", text, count=1))
    assert "budgets.smoke" in err and "add iters_per_epoch" in err


def test_docs_say_which_schedule_each_paper_cell_uses(plugins):
    page = (Path(__file__).parents[2] / "docs" / "budgets.md").read_text()
    rows = re.findall(r"^\| (gdfq|adadfq|hast|qimera|zeroq|intraq) \| (\w+) \| (\d+) x (\d+) x (\d+) \| (\d+) \| "
                      r"([\d, ]+|–) \| ([\de.-]+) \|", page, re.M)
    assert len(rows) == 30, "docs/budgets.md needs one row per (generator, loss) cell of the paper preset"
    for g, loss, epochs, iters, batch, warmup, milestones, lr in rows:
        r = resolve_budget(plugins, "paper", g, loss)
        b = r.budget
        assert (b.epochs, b.iters_per_epoch, b.batch_size, b.warmup_epochs) == tuple(map(int, (epochs, iters, batch, warmup)))
        assert b.lr_milestones == ([] if milestones == "–" else [int(m) for m in milestones.split(",")])
        assert r.optim.student_lr == float(lr), (g, loss)


# ------------------------------------------------------------------ one partial-budget model, stacked in one place


@pytest.fixture
def weights(tmp_path, plugins) -> Path:
    from support.data import write_random_weights

    return write_random_weights(tmp_path / "t.pth", plugins.models.get("resnet20_cifar10").build())


def test_every_layer_is_a_partial_budget_with_the_budgets_fields_and_limits():
    assert list(PartialBudget.model_fields)[:len(Budget.model_fields)] == list(Budget.model_fields)
    for name, field in Budget.model_fields.items():
        partial = PartialBudget.model_fields[name]
        assert not partial.is_required() and partial.default is None
        assert (partial.metadata, partial.description) == (field.metadata, field.description)
    assert issubclass(BudgetPreset, PartialBudget) and issubclass(BudgetOverride, PartialBudget)
    assert PartialBudget().fields() == {}
    assert BudgetOverride(preset="paper", generator="gdfq", lr_milestones=(3, 5)).fields() == {"lr_milestones": [3, 5]}
    with pytest.raises(ValidationError, match="greater than or equal to 1"):
        PartialBudget(warmup_epochs=0)
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        PartialBudget(epoch=3)


def test_a_budget_leaves_every_unset_field_that_may_be_none_out_of_its_id():
    b = Budget(epochs=2, iters_per_epoch=1, batch_size=1, warmup_epochs=1)
    may_be_none = {name for name, field in Budget.model_fields.items() if field.default is None}
    assert may_be_none and not may_be_none & set(b.model_dump()) and not may_be_none & set(json.loads(
        TrialSpec(model="m", dataset="d", generator={"name": "g"}, loss={"name": "l"}, w_bits=4, a_bits=4, seed=0,
                  budget=b).canonical_json())["budget"])


def test_layers_stack_preset_then_method_overrides_then_grid_file_then_flags(plugins):
    r = resolve_budget(plugins, "paper", "adadfq", "akt",
                       config=PartialBudget(epochs=7, batch_size=12, eval_every=3), flags=PartialBudget(epochs=9))
    b = r.budget  # flags > grid file > AKT's paper:adadfq+akt (200 x 200 x 200, lr x0.1 at 100) > preset (warm-up 4)
    assert (b.epochs, b.batch_size, b.eval_every, b.iters_per_epoch, b.lr_milestones, b.warmup_epochs) == \
        (9, 12, 3, 200, [100], 4)
    assert r.custom and r.sources[-2:] == ("grid file budget_overrides", "flags")
    untouched = resolve_budget(plugins, "paper", "adadfq", "akt", config=PartialBudget(), flags=PartialBudget())
    assert not untouched.custom and untouched.budget == resolve_budget(plugins, "paper", "adadfq", "akt").budget


def test_a_budget_the_users_layers_break_is_their_bad_override(plugins):
    with pytest.raises(UserError, match=r"^bad budget override: .*warmup_epochs \(4\) must not exceed epochs \(3\)"):
        resolve_budget(plugins, "paper", "gdfq", "kd", flags=PartialBudget(epochs=3))
    methods = re.escape("budget 'paper' for gdfq+kd (registry.toml [budgets.paper]; paper:gdfq+*) is invalid")
    with pytest.raises(UserError, match=f"^{methods}: .*warmup_epochs \\(500\\) must not exceed epochs"):
        resolve_budget(_plugins_with(BudgetOverride(preset="paper", generator="gdfq", warmup_epochs=500)),
                       "paper", "gdfq", "kd", flags=PartialBudget(warmup_epochs=1))


def test_every_budget_field_is_a_run_flag_and_reaches_the_trial(capsys, weights):
    given = {"epochs": "9", "iters_per_epoch": "3", "batch_size": "4", "warmup_epochs": "3", "lr_milestones": "5,8",
             "calibration_epochs": "2", "eval_every": "2", "eval_images": "100", "shared_calibration": "4"}
    assert set(given) == set(Budget.model_fields), "give every budget field a value here"
    flags = [a for name, value in given.items() for a in ("--" + name.replace("_", "-"), value)]
    assert main(["run", "--generators", "gdfq", "--loss", "kd", "--bits", "4", "--teacher-weights", str(weights),
                 "--dry-run", "--json", *flags]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert {name: row[name] for name in given} == {**{k: int(v) for k, v in given.items() if k != "lr_milestones"},
                                                  "lr_milestones": [5, 8]}
    assert row["budget"] == "cpu+custom+shared-cal4"  # the shared calibration is labelled apart


def test_flags_win_over_the_grid_files_budget_overrides(capsys, tmp_path, weights):
    grid = tmp_path / "grid.toml"
    grid.write_text("generators = ['adadfq']\nlosses = ['akt']\nbudget = 'paper'\n"
                    "[budget_overrides]\nepochs = 7\nbatch_size = 12\n")
    argv = ["run", "--config", str(grid), "--teacher-weights", str(weights), "--dry-run", "--json"]
    assert main([*argv, "--epochs", "9", "--lr-milestones", ""]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert (row["epochs"], row["batch_size"], row["iters_per_epoch"], row["lr_milestones"]) == (9, 12, 200, [])
    assert row["budget"] == "paper+custom"
    grid.write_text("generators = ['gdfq']\n[budget_overrides]\nepoch = 7\n")
    assert "budget_overrides.epoch: Extra inputs are not permitted" in one_line_error(capsys, argv)


def test_bad_budget_flags_are_one_line_errors(capsys, weights):
    argv = ["run", "--generators", "gdfq", "--loss", "kd", "--teacher-weights", str(weights), "--dry-run"]
    assert "bad budget override: epochs: Input should be greater than or equal to 1" in \
        one_line_error(capsys, [*argv, "--epochs", "0"])
    assert "lr_milestones must be sorted ascending" in one_line_error(capsys, [*argv, "--lr-milestones", "8,5"])
    with pytest.raises(SystemExit) as exit_:
        main([*argv, "--lr-milestones", "5,x"])
    assert exit_.value.code == 2 and "expected comma-separated epochs like '100,200', got '5,x'" in capsys.readouterr().err


def test_describe_is_the_one_rendering_of_a_schedule(capsys, weights, monkeypatch):
    assert Budget(epochs=8, iters_per_epoch=100, batch_size=64, warmup_epochs=2).describe() == "8x100x64 (warm-up 2)"
    short = Budget(epochs=40, iters_per_epoch=200, batch_size=16, warmup_epochs=5, calibration_epochs=4, eval_every=5,
                   eval_images=1000, lr_milestones=[10, 20, 30])
    assert short.describe() == ("40x200x16 (warm-up 5, calibration 4, eval every 5, eval on 1000 images, "
                                "lr x0.1 at 10,20,30)")
    from zsqbench.cli.console import out

    monkeypatch.setattr(out, "width", 300)  # one line per trial
    assert main(["run", "--generators", "adadfq", "--loss", "akt", "--bits", "3", "--budget", "paper",
                 "--teacher-weights", str(weights), "--dry-run"]) == 0
    assert "200x200x200 (warm-up 4, lr x0.1 at 100)" in capsys.readouterr().out
