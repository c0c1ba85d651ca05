"""A trial's budget: the preset of registry.toml, changed by the overrides its methods contribute.

Order: the preset; then the overrides for the trial's generator alone and for its loss alone
(which must not disagree: when both set one field differently, neither is more specific, and
the grid is refused naming both); then an override for exactly this (generator, loss) pair,
which wins. The user's own overrides (``--epochs`` ..., ``-o``) come after all of them
(:func:`zsqbench.grid.request.expand`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from zsqbench.api.budgets import BudgetOverride
from zsqbench.api.plugins import Plugins
from zsqbench.api.registry import Entry
from zsqbench.errors import UserError, first_validation_error
from zsqbench.trial.spec import Budget, OptimSettings


@dataclass(frozen=True)
class ResolvedBudget:
    budget: Budget
    optim: OptimSettings
    generator_options: dict[str, Any]
    sources: tuple[str, ...]  # the preset, then the name of each applied override

    @property
    def schedule(self) -> str:
        """"200x200x200, lr x0.1 at 100": epochs x iterations x batch and the milestones."""
        b = self.budget
        text = f"{b.epochs}x{b.iters_per_epoch}x{b.batch_size}, warm-up {b.warmup_epochs}"
        if b.calibration_epochs is not None:
            text += f" (calibration {b.calibration_epochs})"
        if b.eval_every is not None:
            text += f", eval every {b.eval_every}"
        if b.lr_milestones:
            text += f", lr x0.1 at {','.join(str(m) for m in b.lr_milestones)}"
        return text


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


def resolve_budget(plugins: Plugins, preset_name: str, generator: str, loss: str) -> ResolvedBudget:
    preset = plugins.config.budget(preset_name)
    fields: dict[str, Any] = preset.model_dump(exclude={"description", "optim", "input_size"})
    optim: dict[str, Any] = dict(preset.optim)
    generator_options: dict[str, Any] = {}
    matching = [e for e in plugins.budget_overrides if e.obj.preset == preset_name
                and e.obj.generator in (None, generator) and e.obj.loss in (None, loss)]
    singles = [e for e in matching if (e.obj.generator is None) != (e.obj.loss is None)]
    pairs = [e for e in matching if e.obj.generator is not None and e.obj.loss is not None]
    _refuse_conflicts(preset_name, generator, loss, singles)
    sources = [f"registry.toml [budgets.{preset_name}]"]
    for entry in (*singles, *pairs):
        fields.update(entry.obj.fields())
        optim.update(entry.obj.optim)
        generator_options.update(entry.obj.generator_options)
        sources.append(entry.name)
    try:
        return ResolvedBudget(Budget(**fields), OptimSettings(**optim), generator_options, tuple(sources))
    except ValidationError as exc:
        raise UserError(f"budget '{preset_name}' for {generator}+{loss} ({'; '.join(sources)}) is invalid: "
                        f"{first_validation_error(exc)}") from None
