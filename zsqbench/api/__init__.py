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

from zsqbench.api.budgets import BudgetOverride, BudgetPreset
from zsqbench.api.cards import MethodCard, PublishedNumber
from zsqbench.api.executor import ExecuteJob, Executor, JobOutcome, TrialJob
from zsqbench.api.features import FeatureTaps
from zsqbench.api.generator import Batch, Generator, PassCounts, PhaseViolation, StudentUpdate, TrainContext
from zsqbench.api.hookspecs import PLUGIN_KINDS, hookimpl
from zsqbench.api.losses import KD_CE, DistillationLoss, LogitLoss, LossInputs, NativeLosses, StudentObjective
from zsqbench.api.models import Normalization, PretrainedWeights, RefusedFile, TeacherModel
from zsqbench.api.optimizers import EpochAwareOptimizer
from zsqbench.api.options import NoOptions, OmitAtDefault, PluginOptions, Retired, SpeedOnly
from zsqbench.api.quantizer import (
    IntegerActivation,
    IntegerGrid,
    IntegerLayer,
    IntegerWeight,
    QuantizedWeight,
    Quantizer,
    WeightCodeQuantizer,
)
from zsqbench.api.spec import Phase

__all__ = [
    "KD_CE", "PLUGIN_KINDS", "Batch", "BudgetOverride", "BudgetPreset", "DistillationLoss",
    "EpochAwareOptimizer", "ExecuteJob", "Executor", "FeatureTaps", "Generator", "IntegerActivation",
    "IntegerGrid", "IntegerLayer", "IntegerWeight", "JobOutcome", "LogitLoss", "LossInputs", "MethodCard",
    "NativeLosses", "NoOptions", "Normalization", "PassCounts", "Phase", "PluginOptions", "PretrainedWeights",
    "PublishedNumber", "QuantizedWeight", "Quantizer", "RefusedFile", "StudentObjective", "StudentUpdate",
    "TeacherModel", "TrainContext", "TrialJob", "WeightCodeQuantizer", "hookimpl",
    "PhaseViolation",
    "OmitAtDefault", "Retired", "SpeedOnly",
]
