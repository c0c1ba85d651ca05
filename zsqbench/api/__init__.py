"""The plugin API: what a plugin implements, and the plugin manager that loads it.

A plugin author imports everything from here::

    from zsqbench.api import Generator, Batch, Phase, StudentUpdate, NativeLosses, PluginOptions, hookimpl

The modules: :mod:`~zsqbench.api.hookspecs` (the hooks, one per plugin kind),
:mod:`~zsqbench.api.models` (teachers), :mod:`~zsqbench.api.quantizer`,
:mod:`~zsqbench.api.generator` (generators and the training step), :mod:`~zsqbench.api.losses`,
:mod:`~zsqbench.api.optimizers` (student optimizers with an epoch schedule of their own),
:mod:`~zsqbench.api.executor`, :mod:`~zsqbench.api.budgets`, :mod:`~zsqbench.api.features`
(taps by module path) and :mod:`~zsqbench.api.plugins` (the manager). Building blocks shared by
several methods (logit KD, the online generator, BN statistics, a content-addressed cache) are in
:mod:`zsqbench.toolkit`.
"""

from __future__ import annotations

import importlib
from typing import Any

#: Where each name of the API lives. Imported when first used (PEP 562), so that a light module such as
#: :mod:`~zsqbench.api.budgets` can be imported (by the torch-free result reader) without the
#: generator and quantizer contracts pulling in torch.
_HOMES: dict[str, str] = {
    "BudgetOverride": "zsqbench.api.budgets",
    "BudgetPreset": "zsqbench.api.budgets",
    "MethodCard": "zsqbench.api.cards",
    "PublishedNumber": "zsqbench.api.cards",
    "ExecuteJob": "zsqbench.api.executor",
    "Executor": "zsqbench.api.executor",
    "JobOutcome": "zsqbench.api.executor",
    "TrialJob": "zsqbench.api.executor",
    "FeatureTaps": "zsqbench.api.features",
    "Batch": "zsqbench.api.generator",
    "Generator": "zsqbench.api.generator",
    "PassCounts": "zsqbench.api.generator",
    "PhaseViolation": "zsqbench.api.generator",
    "StudentUpdate": "zsqbench.api.generator",
    "TrainContext": "zsqbench.api.generator",
    "PLUGIN_KINDS": "zsqbench.api.hookspecs",
    "hookimpl": "zsqbench.api.hookspecs",
    "DistillationLoss": "zsqbench.api.losses",
    "KD_CE": "zsqbench.api.losses",
    "LogitLoss": "zsqbench.api.losses",
    "LossInputs": "zsqbench.api.losses",
    "NativeLosses": "zsqbench.api.losses",
    "StudentObjective": "zsqbench.api.losses",
    "Normalization": "zsqbench.api.models",
    "PretrainedWeights": "zsqbench.api.models",
    "RefusedFile": "zsqbench.api.models",
    "TeacherModel": "zsqbench.api.models",
    "EpochAwareOptimizer": "zsqbench.api.optimizers",
    "NoOptions": "zsqbench.api.options",
    "OmitAtDefault": "zsqbench.api.options",
    "PluginOptions": "zsqbench.api.options",
    "Retired": "zsqbench.api.options",
    "SpeedOnly": "zsqbench.api.options",
    "IntegerActivation": "zsqbench.api.quantizer",
    "IntegerGrid": "zsqbench.api.quantizer",
    "IntegerLayer": "zsqbench.api.quantizer",
    "IntegerWeight": "zsqbench.api.quantizer",
    "QuantizedWeight": "zsqbench.api.quantizer",
    "Quantizer": "zsqbench.api.quantizer",
    "WeightCodeQuantizer": "zsqbench.api.quantizer",
    "Phase": "zsqbench.api.spec",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'zsqbench.api' has no attribute '{name}'")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOMES))


#: The names are _HOMES's keys, listed once there.
__all__ = sorted(_HOMES)
