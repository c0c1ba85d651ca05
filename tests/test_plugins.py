"""The plugin manager: bundled plugins, entry points, the whitelist and registry errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from zsqbench.errors import UnknownNameError, UserError
from zsqbench.api.hookspecs import hookimpl
from zsqbench.api.plugins import build_plugins
from zsqbench.api.registry import Registry

FIXTURE = Path(__file__).parent / "fixtures" / "zsqbench-noise"


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
def test_third_party_package_is_discovered(tmp_path):
    """Install the fixture package (offline, into a private folder) and list it."""
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", "--no-build-isolation",
         "--target", str(target), str(FIXTURE)],
        check=True, capture_output=True, text=True,
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(target), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run(
        [sys.executable, "-m", "zsqbench.cli.main", "plugins", "--json"],
        check=True, capture_output=True, text=True, env=env,
    )
    rows = {r["name"]: r for r in json.loads(out.stdout)}
    assert rows["noise"]["kind"] == "generator"
    assert rows["noise"]["source"] == "zsqbench-noise 0.1.0"
    assert rows["gdfq"]["source"] == "bundled"
