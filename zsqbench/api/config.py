"""The project configuration in registry.toml: bundled plugins, budget presets, default run.

Read once per process. A user may point ZSQBENCH_REGISTRY at another file.
"""

from __future__ import annotations

import os
import tomllib
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from zsqbench.errors import UnknownNameError, UserError
from zsqbench.trial.spec import Budget, OptimSettings

REGISTRY_ENV = "ZSQBENCH_REGISTRY"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BudgetOverride(_Strict):
    """Per-generator changes to a preset (e.g. AdaDFQ's batch 16 under 'paper')."""

    epochs: int | None = None
    iters_per_epoch: int | None = None
    batch_size: int | None = None
    warmup_epochs: int | None = None
    lr_milestones: list[int] | None = None
    optim: dict[str, Any] = Field(default_factory=dict)
    # Options of this generator that scale with the budget (e.g. HAST's synthesis size); they
    # become part of the trial spec, and a user's own options for the generator win over them.
    generator_options: dict[str, Any] = Field(default_factory=dict)


class BudgetPreset(_Strict):
    description: str = ""
    epochs: int
    iters_per_epoch: int
    batch_size: int
    warmup_epochs: int
    lr_milestones: list[int] = Field(default_factory=list)
    optim: dict[str, Any] = Field(default_factory=dict)
    generators: dict[str, BudgetOverride] = Field(default_factory=dict)

    def resolve(self, generator: str) -> tuple[Budget, OptimSettings]:
        base = self.model_dump(exclude={"description", "generators", "optim"})
        optim = dict(self.optim)
        override = self.generators.get(generator)
        if override is not None:
            base.update(override.model_dump(exclude={"optim", "generator_options"}, exclude_none=True))
            optim.update(override.optim)
        return Budget(**base), OptimSettings(**optim)

    def generator_options(self, generator: str) -> dict[str, Any]:
        """The generator options this preset sets for ``generator`` (empty if none)."""
        override = self.generators.get(generator)
        return dict(override.generator_options) if override is not None else {}


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
