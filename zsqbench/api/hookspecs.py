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

Adding a kind of plugin is adding one :class:`PluginKind` to the table: the hook, its registry
(``plugins.<kinds>``) and the registration check follow from it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Literal

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


def _registration_hook(kind: PluginKind) -> Callable[..., None]:
    def hook(register: Callable[[Any], None]) -> None:
        pass

    hook.__name__ = hook.__qualname__ = kind.hook_name
    hook.__doc__ = (f"Register {kind.what}: call ``register(obj)`` once for each, obj being a "
                    f"{kind.registers} of :class:`{kind.base.__module__}.{kind.base.__qualname__}`.")
    return hookspec(hook)


for _kind in PLUGIN_KINDS:
    globals()[_kind.hook_name] = _registration_hook(_kind)
del _kind


def generator_hooks(generator: type, overrides: tuple[BudgetOverride, ...] = ()) -> tuple[Callable[..., None],
                                                                                          Callable[..., None]]:
    """The two hooks of a module that provides one generator and its budget overrides; the module
    assigns them: ``register_generators, register_budget_overrides = generator_hooks(MyGen, OVERRIDES)``."""

    @hookimpl
    def register_generators(register: Callable[[Any], None]) -> None:
        register(generator)

    @hookimpl
    def register_budget_overrides(register: Callable[[Any], None]) -> None:
        for override in overrides:
            register(override)

    return register_generators, register_budget_overrides
