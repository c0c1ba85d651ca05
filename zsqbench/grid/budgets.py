"""A trial's budget: the partial budgets that set it, stacked in one order (the only place that knows it).

Order, the later winning field by field: the preset of registry.toml; the overrides for the trial's
generator alone and for its loss alone (which must not disagree: when both set one field
differently, neither is more specific, and the grid is refused naming both); an override for
exactly this (generator, loss) pair; the user's grid file (its ``budget_overrides`` table); the
user's flags (``--epochs`` ...). Generator options and optimizer settings a method's override
sets are gathered in the same order (the user's ``-o`` and ``optim`` come after, in
:func:`zsqbench.grid.request.expand`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from zsqbench.api.budgets import SHARED_CALIBRATION_LABEL, BudgetOverride, PartialBudget
from zsqbench.api.plugins import Plugins
from zsqbench.api.registry import Entry
from zsqbench.api.spec import Budget, OptimSettings
from zsqbench.errors import UserError, first_validation_error


@dataclass(frozen=True)
class ResolvedBudget:
    budget: Budget
    optim: OptimSettings
    generator_options: dict[str, Any]
    sources: tuple[str, ...]  # the preset, the name of each applied override, then the user's layers
    custom: bool = False  # the user's layers changed a field besides shared_calibration (the name says "+custom")


def _settings(override: BudgetOverride) -> dict[str, Any]:
    return {**override.fields(), **{f"optim.{k}": v for k, v in override.optim.items()},
            **{f"generator_options.{k}": v for k, v in override.generator_options.items()}}


def _refuse_conflicts(preset: str, generator: str, loss: str, singles: list[Entry[BudgetOverride]]) -> None:
    for i, a in enumerate(singles):
        for b in singles[i + 1:]:
            sa, sb = _settings(a.obj), _settings(b.obj)
            clash = sorted(k for k in set(sa) & set(sb) if sa[k] != sb[k])
            if clash:
                raise UserError(
                    f"budget overrides {a.name} ({a.source}) and {b.name} ({b.source}) disagree on {', '.join(clash)} "
                    f"for {generator}+{loss} under '{preset}'; a plugin must register an override for "
                    f"{preset}:{generator}+{loss} that decides, or set the values with --epochs/--batch-size/-o"
                )


def _applied_overrides(plugins: Plugins, preset_name: str, generator: str,
                       loss: str | None) -> list[Entry[BudgetOverride]]:
    """The methods' overrides of a preset for a (generator, loss) trial, in the order they stack:
    the generator's and the loss's alone (refused where they disagree), then the pair's. Without a
    loss, the generator's alone."""
    matching = [e for e in plugins.budget_overrides if e.obj.preset == preset_name
                and e.obj.generator in (None, generator) and e.obj.loss in (None, loss)]
    singles = [e for e in matching if (e.obj.generator is None) != (e.obj.loss is None)]
    pairs = [e for e in matching if e.obj.generator is not None and e.obj.loss is not None]
    _refuse_conflicts(preset_name, generator, loss or "*", singles)
    return [*singles, *pairs]


def resolve_budget(plugins: Plugins, preset_name: str, generator: str, loss: str,
                   config: PartialBudget | None = None, flags: PartialBudget | None = None) -> ResolvedBudget:
    """The budget of a (generator, loss) trial under a preset, with the user's grid file
    (``config``) and flags on top. A budget the methods make invalid names its layers; one the
    user's layers make invalid is a bad override of the user's."""
    preset = plugins.config.budget(preset_name)
    fields: dict[str, Any] = preset.fields()
    optim: dict[str, Any] = dict(preset.optim)
    generator_options: dict[str, Any] = {}
    sources = [f"registry.toml [budgets.{preset_name}]"]
    for entry in _applied_overrides(plugins, preset_name, generator, loss):
        fields.update(entry.obj.fields())
        optim.update(entry.obj.optim)
        generator_options.update(entry.obj.generator_options)
        sources.append(entry.name)
    try:
        budget, optim_settings = Budget(**fields), OptimSettings(**optim)
    except ValidationError as exc:
        raise UserError(f"budget '{preset_name}' for {generator}+{loss} ({'; '.join(sources)}) is invalid: "
                        f"{first_validation_error(exc)}") from None
    user = [(name, layer.fields()) for name, layer in (("grid file budget_overrides", config), ("flags", flags))
            if layer is not None and layer.fields()]
    for name, values in user:
        fields.update(values)
        sources.append(name)
    if user:
        try:
            budget = Budget(**fields)
        except ValidationError as exc:
            raise UserError(f"bad budget override: {first_validation_error(exc)}") from None
    # the shared calibration is labelled on its own (budget_label), not as "+custom"
    custom = any(set(values) - {"shared_calibration"} for _, values in user)
    return ResolvedBudget(budget, optim_settings, generator_options, tuple(sources), custom=custom)


def budget_label(preset: str, resolved: ResolvedBudget) -> str:
    """A trial's budget name: the preset, "+custom" when the user's layers changed a field, and the shared
    calibration's batch when set (docs/budgets.md#shared-calibration), so that a leaderboard row says both."""
    shared = resolved.budget.shared_calibration
    return (preset + ("+custom" if resolved.custom else "")
            + ("" if shared is None else f"{SHARED_CALIBRATION_LABEL}{shared}"))


def smoke_generator_options(plugins: Plugins, generator: str, loss: str | None = None) -> dict[str, Any]:
    """The generator options ``generator`` gets under the ``smoke`` preset, from its methods' smoke
    overrides stacked as :func:`resolve_budget` stacks them (with ``loss``: a trial with that loss,
    a pair override on top); {} for a generator without one.

    Whatever must set a generator up small and fast, and does not care what it learns, takes its
    options from here: the contract suite and ``zsqbench bench``'s setup (an offline method's
    synthesis). A method says once, in its smoke override, how it runs small, and a generator
    installed from another package gets the same treatment as the bundled ones, named in no table
    of the core's or the tests'."""
    options: dict[str, Any] = {}
    for entry in _applied_overrides(plugins, "smoke", generator, loss):
        options.update(entry.obj.generator_options)
    return options
