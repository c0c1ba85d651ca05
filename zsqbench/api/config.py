"""The project configuration in registry.toml: bundled plugins, generic budget presets, default run.

Read once per process. A user may point ZSQBENCH_REGISTRY at another file. Method-specific
budget settings are not here: each method contributes them through its plugin
(:mod:`zsqbench.api.budgets`).
"""

from __future__ import annotations

import os
import tomllib
from functools import lru_cache
from importlib import resources
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from zsqbench.api.budgets import BudgetPreset
from zsqbench.errors import UnknownNameError, UserError

REGISTRY_ENV = "ZSQBENCH_REGISTRY"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DefaultRun(_Strict):
    model: str
    dataset: str
    generators: list[str]
    losses: list[str]
    bits: str
    seeds: list[int]
    budget: str


class RegistryConfig(_Strict):
    bundled: dict[str, str] = Field(description="plugin name -> importable module")
    default_run: DefaultRun
    budgets: dict[str, BudgetPreset]

    def budget(self, name: str) -> BudgetPreset:
        try:
            return self.budgets[name]
        except KeyError:
            raise UnknownNameError(
                f"unknown budget preset '{name}'. Known presets: {', '.join(sorted(self.budgets))} "
                "(defined in registry.toml)"
            ) from None


def registry_path() -> Path:
    override = os.environ.get(REGISTRY_ENV)
    if override:
        return Path(override)
    return Path(str(resources.files("zsqbench_plugins").joinpath("registry.toml")))


@lru_cache(maxsize=4)
def _load(path: Path) -> RegistryConfig:
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"registry file not found: {path}; reinstall zsqbench or unset {REGISTRY_ENV}") from None
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"malformed registry file {path}: {exc}; fix the TOML syntax") from None
    try:
        return RegistryConfig.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise UserError(f"malformed registry file {path}: {where}: {first['msg']}; fix that entry") from None


def load_registry_config() -> RegistryConfig:
    return _load(registry_path())
