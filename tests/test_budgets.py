"""Budgets: presets from registry.toml, the overrides methods contribute, and how they combine."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from zsqbench.api import BudgetOverride, hookimpl
from zsqbench.api.plugins import build_plugins
from zsqbench.cli.main import main
from zsqbench.errors import UserError
from zsqbench.grid.budgets import resolve_budget

from conftest import one_line_error


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
    # GDFQ and HAST keep their own schedules with AKT's loss (METHODS §7.7)
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
    from fixtures_data import write_random_weights

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


def test_registry_toml_holds_no_method_settings(tmp_path, monkeypatch, capsys):
    from zsqbench.api.config import _load
    from zsqbench.api.plugins import get_plugins

    source = (Path(__file__).parent.parent / "registry.toml").read_text()
    bad = tmp_path / "registry.toml"
    bad.write_text(source + "\n[budgets.paper.generators.hast]\nepochs = 151\n")
    monkeypatch.setenv("ZSQBENCH_REGISTRY", str(bad))
    _load.cache_clear()
    get_plugins.cache_clear()
    try:
        assert "budgets.paper.generators" in one_line_error(capsys, ["run", "--dry-run"])
    finally:
        _load.cache_clear()
        get_plugins.cache_clear()


def test_docs_say_which_schedule_each_paper_cell_uses(plugins):
    page = (Path(__file__).parent.parent / "docs" / "budgets.md").read_text()
    rows = re.findall(r"^\| (gdfq|adadfq|hast|qimera|zeroq|intraq) \| (\w+) \| (\d+) x (\d+) x (\d+) \| (\d+) \| "
                      r"([\d, ]+|–) \| ([\de.-]+) \|", page, re.M)
    assert len(rows) == 30, "docs/budgets.md needs one row per (generator, loss) cell of the paper preset"
    for g, loss, epochs, iters, batch, warmup, milestones, lr in rows:
        r = resolve_budget(plugins, "paper", g, loss)
        b = r.budget
        assert (b.epochs, b.iters_per_epoch, b.batch_size, b.warmup_epochs) == tuple(map(int, (epochs, iters, batch, warmup)))
        assert b.lr_milestones == ([] if milestones == "–" else [int(m) for m in milestones.split(",")])
        assert r.optim.student_lr == float(lr), (g, loss)
