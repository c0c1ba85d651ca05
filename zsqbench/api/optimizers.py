"""Student optimizers with a schedule of their own: what the trainer tells them at each epoch.

The core builds the student optimizer (plain SGD,
docs/methods/common.md#optimizers-and-learning-rate-schedule) unless the trial's loss plugin
supplies one (:meth:`zsqbench.api.losses.DistillationLoss.build_optimizer`). The core sets every
param group's ``lr`` from the budget at the start of each epoch; an optimizer whose own state
also follows the epochs (AIT's gradient inundation: a threshold that decays at milestones, a
capped first training epoch) subclasses :class:`EpochAwareOptimizer`, and the core calls
:meth:`~EpochAwareOptimizer.start_epoch` right after setting the LRs and
:meth:`~EpochAwareOptimizer.epoch_summary` when the epoch's iterations are done.

Whatever such an optimizer derives from the epoch must be in its ``state_dict()`` (plain
tensors, numbers, strings, lists and dicts: checkpoints are read with ``weights_only=True``), so
a resumed trial continues exactly.
"""

from __future__ import annotations

from abc import ABCMeta, abstractmethod
from typing import Any

import torch

from zsqbench.api.spec import Phase


class EpochAwareOptimizer(torch.optim.Optimizer, metaclass=ABCMeta):
    """A student optimizer that hears the epoch's phase from the trainer."""

    @abstractmethod
    def start_epoch(self, phase: Phase) -> None:
        """Called at the start of every epoch (calibration epochs included), after the core set
        the LRs. Derive epoch-dependent settings from ``phase.epoch``, never from a count of calls:
        a resumed trial starts at a later epoch."""

    def epoch_summary(self) -> dict[str, Any]:
        """What this epoch's steps did, as JSON-able plain values, recorded in the epoch's record
        (``optimizer``); called once per epoch, after its iterations, and starts the next epoch's
        accumulation. Empty by default."""
        return {}
