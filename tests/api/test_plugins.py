"""The plugin manager: bundled plugins, entry points, the whitelist and registry errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from zsqbench.api import BudgetOverride, Generator, Quantizer, hookimpl
from zsqbench.api.hookspecs import PLUGIN_KINDS
from zsqbench.api.plugins import build_plugins
from zsqbench.api.registry import Registry
from zsqbench.errors import UnknownNameError, UserError

FIXTURE = Path(__file__).parents[2] / "examples" / "zsqbench-noise"  # CONTRIBUTING's walkthrough package


def test_bundled_plugins_are_listed_with_kinds(plugins):
    listed = {(e.name, e.kind) for e in plugins.all_entries()}
    for expected in [("gdfq", "generator"), ("kd", "loss"), ("uniform", "quantizer"),
                     ("resnet20_cifar10", "model"), ("resnet20_cifar100", "model")]:
        assert expected in listed
    assert all(e.source == "bundled" for e in plugins.all_entries() if e.name in {"gdfq", "kd"})
    assert all(e.description for e in plugins.all_entries())


def test_resnet20_parameter_counts(plugins):
    for name, count in (("resnet20_cifar10", 272_474), ("resnet20_cifar100", 278_324)):
        model = plugins.models.get(name).build()
        assert sum(p.numel() for p in model.parameters()) == count


def test_unknown_name_lists_known_names_with_suggestion(plugins):
    with pytest.raises(UnknownNameError) as err:
        plugins.generators.get("gdgq")
    msg = str(err.value)
    assert "Did you mean 'gdfq'?" in msg and "gdfq" in msg and "\n" not in msg


def test_every_kind_has_its_hook_and_registry(plugins):
    """A plugin kind is declared once (PLUGIN_KINDS): its hook and its registry follow."""
    for kind in PLUGIN_KINDS:
        assert hasattr(plugins.manager.hook, kind.hook_name)
        assert getattr(plugins, kind.plural) is plugins.registry(kind.name)
        assert getattr(plugins, kind.plural).base is kind.base


def test_the_hooks_are_plain_functions_one_per_kind():
    """A plugin author reads the hooks in hookspecs.py: each kind has one written-out hook function,
    and every hook there belongs to a kind (no hook generated at import time, none forgotten)."""
    import inspect

    import zsqbench.api.hookspecs as hookspecs

    declared = {name for name, fn in inspect.getmembers(hookspecs, inspect.isfunction)
                if getattr(fn, "zsqbench_spec", None) is not None}
    assert declared == {kind.hook_name for kind in PLUGIN_KINDS}
    for name in declared:
        fn = getattr(hookspecs, name)
        assert fn.__module__ == hookspecs.__name__ and fn.__doc__ and "register(" in fn.__doc__


def test_every_bundled_plugin_registers_through_module_level_hook_functions():
    """One registration style: each bundled plugin module defines ``@hookimpl def register_<kind>``
    at module level (no factories returning hooks, no assignments)."""
    import ast
    from pathlib import Path

    import zsqbench_plugins

    root = Path(zsqbench_plugins.__file__).parent
    hook_names = {kind.hook_name for kind in PLUGIN_KINDS}
    for path in root.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign):
                targets = [t for target in node.targets for t in ast.walk(target) if isinstance(t, ast.Name)]
                assert not {t.id for t in targets} & hook_names, f"{path.name} assigns a hook"
            if isinstance(node, ast.FunctionDef) and node.name in hook_names:
                assert node in tree.body, f"{path.name}: {node.name} is not at module level"


def _plugin(hook: str, obj):
    class One:
        pass

    def register(self, register):
        register(obj)

    register.__name__ = hook
    setattr(One, hook, hookimpl(register))
    return One()


def test_registration_checks_the_base_class_in_one_line(plugins):
    class NotAGenerator:
        name = "nope"
        description = "a class of the wrong kind"

    class Half(Generator):  # native_losses left abstract
        name = "half"
        description = "unfinished"

    class NoName(Quantizer):
        description = "no name"

        def quantize(self, model, w_bits, a_bits):
            return model

        def set_calibrating(self, student, enabled):
            pass

        def is_calibrating(self, student):
            return False

    cases = [
        ("register_generators", NotAGenerator, "not a subclass of zsqbench.api.generator.Generator"),
        ("register_generators", Half, "does not implement native_losses"),
        ("register_quantizers", NoName, "has no 'name' string"),
        ("register_models", "resnet20", "not a zsqbench.api.models.TeacherModel"),
        ("register_budget_overrides", {"preset": "cpu"}, "not a zsqbench.api.budgets.BudgetOverride"),
    ]
    for hook, obj, message in cases:
        with pytest.raises(UserError, match=message) as err:
            build_plugins(extra={"bad": _plugin(hook, obj)})
        assert "\n" not in str(err.value)


def test_budget_overrides_must_name_a_known_preset_and_a_method():
    with pytest.raises(UserError, match="changes preset 'nonexistent'"):
        build_plugins(extra={"bad": _plugin("register_budget_overrides",
                                            BudgetOverride(preset="nonexistent", generator="gdfq", epochs=3))})
    with pytest.raises(ValueError, match="must name a generator, a loss or both"):
        BudgetOverride(preset="cpu", epochs=3)
    with pytest.raises(UserError, match="duplicate budget override name 'paper:adadfq\\+\\*'"):
        build_plugins(extra={"clash": _plugin("register_budget_overrides",
                                              BudgetOverride(preset="paper", generator="adadfq", batch_size=8))})


def test_a_class_registers_the_budget_overrides_it_declares_and_only_its_own(plugins):
    gdfq = plugins.generators.get("gdfq")
    own = BudgetOverride(preset="smoke", generator="mine", batch_size=4, note="declared on the class")

    class Mine(gdfq):
        name = "mine"
        description = "GDFQ with its own smoke budget"
        budget_overrides = (own,)

    loaded = build_plugins(extra={"mine": _plugin("register_generators", Mine)})
    entry = loaded.budget_overrides.entry("smoke:mine+*")
    assert entry.obj is own and entry.source == "mine"
    # the bundled methods' budgets arrive the same way, from their classes
    hast = plugins.generators.get("hast")
    assert {o.name for o in hast.budget_overrides} <= set(plugins.budget_overrides.names())

    class Meddler(gdfq):
        name = "meddler"
        description = "declares a budget for another generator"
        budget_overrides = (BudgetOverride(preset="smoke", generator="gdfq", batch_size=4),)

    with pytest.raises(UserError, match="declares the budget override smoke:gdfq\\+\\*, which is not for generator "
                                        "'meddler'") as err:
        build_plugins(extra={"meddler": _plugin("register_generators", Meddler)})
    assert "\n" not in str(err.value)


def test_duplicate_name_names_both_sources():
    reg: Registry[int] = Registry("generator")
    reg.add("x", 1, "bundled", "")
    with pytest.raises(UserError, match="bundled.*other-package 1.0"):
        reg.add("x", 2, "other-package 1.0", "")


def test_duplicate_across_plugins_is_an_error(plugins):
    gdfq = plugins.generators.get("gdfq")

    class Clash:
        @hookimpl
        def register_generators(self, register):
            register(gdfq)

    with pytest.raises(UserError, match="duplicate generator name 'gdfq': registered by bundled and by clash"):
        build_plugins(extra={"clash": Clash()})


def test_environment_variable_restricts_plugins(monkeypatch):
    monkeypatch.setenv("ZSQBENCH_PLUGINS", "resnet20,uniform,kd")
    loaded = build_plugins()
    assert "gdfq" not in loaded.generators
    assert "kd" in loaded.losses and "resnet20_cifar10" in loaded.models


def test_malformed_registry_is_a_user_error(tmp_path, monkeypatch):
    from zsqbench.api.config import _load, load_registry_config

    bad = tmp_path / "registry.toml"
    bad.write_text("[bundled\nx = 1\n")
    monkeypatch.setenv("ZSQBENCH_REGISTRY", str(bad))
    _load.cache_clear()
    with pytest.raises(UserError, match="malformed registry file"):
        load_registry_config()
    bad.write_text("[bundled]\nx = 'y'\n")
    _load.cache_clear()
    with pytest.raises(UserError, match="default_run"):
        load_registry_config()


@pytest.mark.slow
def test_third_party_package_is_discovered_and_runs_a_grid(tmp_path):
    """Install the fixture package (offline, into a private folder), list its three plugins, and
    run a smoke grid that uses its generator, its loss and its budget override."""
    target = tmp_path / "site"
    source = tmp_path / "zsqbench-noise"
    shutil.copytree(FIXTURE, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    subprocess.run(  # from a copy: building writes build/ and egg-info next to the sources
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", "--no-build-isolation",
         "--target", str(target), str(source)],
        check=True, capture_output=True, text=True,
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(target), os.environ.get("PYTHONPATH", "")]),
           "ZSQBENCH_OFFLINE": "1"}
    out = subprocess.run(
        [sys.executable, "-m", "zsqbench.cli.main", "plugins", "--json"],
        check=True, capture_output=True, text=True, env=env,
    )
    rows = {r["name"]: r for r in json.loads(out.stdout)}
    assert rows["noise"]["kind"] == "generator" and rows["at"]["kind"] == "loss"
    assert rows["smoke:noise+*"]["kind"] == "budget override"
    assert {rows[n]["source"] for n in ("noise", "at", "smoke:noise+*")} == {"zsqbench-noise 0.1.0"}
    assert rows["gdfq"]["source"] == "bundled"
    # a test that passes the installed plugin (or a copy of it) to extra= gets one line saying so
    clash = ("import importlib.util, noise_zsq\nfrom zsqbench.api.plugins import build_plugins\n"
             "from zsqbench.errors import UserError\n"
             "spec = importlib.util.spec_from_file_location('copy', noise_zsq.__file__)\n"
             "copy = importlib.util.module_from_spec(spec)\nspec.loader.exec_module(copy)\n"
             "for module in (noise_zsq, copy):\n"
             "    try:\n        build_plugins(extra={'noise': module})\n"
             "    except UserError as exc:\n        print(exc)\n")
    out = subprocess.run([sys.executable, "-c", clash], check=True, capture_output=True, text=True, env=env)
    assert out.stdout.splitlines() == [
        "build_plugins(extra=...): 'noise' is already loaded as plugin 'noise' (installed: zsqbench-noise 0.1.0); "
        "leave it out of extra=, build_plugins() loads it",
        "build_plugins(extra=...): 'noise' is already loaded as plugin 'noise' (installed: zsqbench-noise 0.1.0); "
        "call build_plugins() without extra= to test the installed one, or pip uninstall zsqbench-noise to test "
        "another copy",
    ]

    from pytorchcv.models.resnet_cifar import get_resnet_cifar
    from support.data import write_random_weights, write_test_set

    write_test_set(tmp_path / "data", "cifar10", n=20)
    weights = write_random_weights(tmp_path / "teacher.pth", get_resnet_cifar(10, blocks=20, bottleneck=False,
                                                                              model_name=None))
    grid = [sys.executable, "-m", "zsqbench.cli.main", "run", "--generators", "noise,gdfq", "--loss", "kd,at",
            "--bits", "4", "--budget", "smoke", "--data-root", str(tmp_path / "data"), "--teacher-weights",
            str(weights), "--out", str(tmp_path / "results"), "--device", "cpu", "-q", "--json"]
    planned = json.loads(subprocess.run([*grid, "--dry-run"], check=True, capture_output=True, text=True,
                                        env=env).stdout)
    assert {(r["generator"], r["batch_size"]) for r in planned} == {("noise", 8), ("gdfq", 16)}
    done = subprocess.run(grid, capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads(done.stdout)["results"]
    assert sorted((r["spec"]["generator"]["name"], r["spec"]["loss"]["name"]) for r in results) == [
        ("gdfq", "at"), ("gdfq", "kd"), ("noise", "at"), ("noise", "kd")]

