"""Every hook zsqbench offers to plugins, declared once per plugin kind in :data:`PLUGIN_KINDS`.

Each hook is a *registration* hook, ``register_<kinds>(register)``: the plugin receives a
``register`` callback and calls it once per thing it provides. The hooks are

=============================  ==========================================================
``register_models``            :class:`~zsqbench.api.models.TeacherModel` instances
``register_quantizers``        :class:`~zsqbench.api.quantizer.Quantizer` subclasses
``register_generators``        :class:`~zsqbench.api.generator.Generator` subclasses
``register_losses``            :class:`~zsqbench.api.losses.DistillationLoss` subclasses
``register_executors``         :class:`~zsqbench.api.executor.Executor` subclasses
``register_budget_overrides``  :class:`~zsqbench.api.budgets.BudgetOverride` instances
=============================  ==========================================================

A kind of plugin is one :class:`PluginKind` in :data:`PLUGIN_KINDS` (its registry
``plugins.<kinds>`` and the registration check follow from it) and one hook function below.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

import pluggy

from zsqbench.api.budgets import BudgetOverride
from zsqbench.api.executor import Executor
from zsqbench.api.generator import Generator
from zsqbench.api.losses import DistillationLoss
from zsqbench.api.models import TeacherModel
from zsqbench.api.quantizer import Quantizer

hookspec = pluggy.HookspecMarker("zsqbench")
hookimpl = pluggy.HookimplMarker("zsqbench")


@dataclass(frozen=True)
class PluginKind:
    name: str  # singular, as shown to users ("generator")
    plural: str  # the hook is register_<plural>, the registry plugins.<plural>
    base: type
    registers: Literal["subclass", "instance"]  # what a plugin passes to register()
    what: str  # for the hook's docstring

    @property
    def hook_name(self) -> str:
        return f"register_{self.plural}"


PLUGIN_KINDS: tuple[PluginKind, ...] = (
    PluginKind("model", "models", TeacherModel, "instance", "pretrained FP teachers"),
    PluginKind("quantizer", "quantizers", Quantizer, "subclass", "quantizer classes"),
    PluginKind("generator", "generators", Generator, "subclass", "generator classes (data source and step)"),
    PluginKind("loss", "losses", DistillationLoss, "subclass", "student-loss classes"),
    PluginKind("executor", "executors", Executor, "subclass", "executor classes that run trial jobs"),
    PluginKind("budget override", "budget_overrides", BudgetOverride, "instance",
               "per-method changes to budget presets"),
)


# The hooks, one plain function per plugin kind (the shape llm and datasette use), so that a
# plugin author reads here exactly what to implement. Each receives a ``register`` callback and
# calls it once per thing the plugin provides. tests/api/test_plugins.py checks that this list and
# PLUGIN_KINDS name the same hooks.


@hookspec
def register_models(register: Callable[[TeacherModel], None]) -> None:
    """Register pretrained FP teachers: call ``register(model)`` once per :class:`TeacherModel` instance."""


@hookspec
def register_quantizers(register: Callable[[type[Quantizer]], None]) -> None:
    """Register quantizers: call ``register(cls)`` once per :class:`Quantizer` subclass."""


@hookspec
def register_generators(register: Callable[[type[Generator]], None]) -> None:
    """Register generators (a data source and the training step): ``register(cls)`` once per
    :class:`Generator` subclass."""


@hookspec
def register_losses(register: Callable[[type[DistillationLoss]], None]) -> None:
    """Register student losses: ``register(cls)`` once per :class:`DistillationLoss` subclass."""


@hookspec
def register_executors(register: Callable[[type[Executor]], None]) -> None:
    """Register executors that run trial jobs: ``register(cls)`` once per :class:`Executor` subclass."""


@hookspec
def register_budget_overrides(register: Callable[[BudgetOverride], None]) -> None:
    """Register per-method changes to budget presets: ``register(override)`` once per
    :class:`BudgetOverride` instance."""
