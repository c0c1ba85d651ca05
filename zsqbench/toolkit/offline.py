"""The offline fine-tuning scaffold (docs/methods/common.md#offline-fine-tuning-scaffold): a generator
plugin that serves a synthetic set made once in :meth:`~zsqbench.api.generator.Generator.prepare`.

Shared by HAST, IntraQ and ZeroQ + FT, whose stage 2 is the same skeleton:

* calibration epochs: the activation ranges are calibrated on GDFQ's generator trained at its own
  small batch (CE + w·BNS; :meth:`zsqbench.toolkit.online.TrainedGenerator.gdfq_step`), *not* on
  the synthetic set; the generator is dropped once training starts;
* training epochs: batches drawn from the set, reshuffled at every pass (IntraQ's loader with
  drop-last, HAST's ``_next_indices``: the same whenever the batch divides the set), each image
  randomly resized-cropped and flipped; the default student step.

A method implements :meth:`OfflineSetGenerator.load_set` (its synthesis, cached) and, where it
differs, the student step (HAST's FGSM pass) or the calibration source (ZeroQ's PTQ variant
feeds its own set instead: pass ``calibration_batch=None``). Under a budget's shared calibration
the shared source replaces the calibration generator, and the calibration epochs do nothing else.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import TYPE_CHECKING, Any, Callable, ClassVar

import torch
from pydantic import Field
from torch import Tensor, nn

from zsqbench.api.budgets import BudgetOverride
from zsqbench.api.generator import Batch, Generator, PassCounts, TrainContext
from zsqbench.api.models import TeacherModel
from zsqbench.api.options import PluginOptions
from zsqbench.api.spec import Phase
from zsqbench.toolkit.augment import random_resized_crop_flip
from zsqbench.toolkit.online import TrainedGenerator, network_macs, shared_calibration

if TYPE_CHECKING:  # pragma: no cover
    from zsqbench.api.spec import TrialSpec


class OfflineSetOptions(PluginOptions):
    """The options every offline-set method has (HAST, ZeroQ, IntraQ): the synthesis seed and the
    GDFQ-style generator that calibrates the activation ranges (the official codes hard-code its
    batch to 16). A method's options subclass this and add their own."""

    synthesis_seed: int | None = Field(
        None, ge=0, description="seed of the synthesis (None: the trial seed); set it to share one set across seeds"
    )
    calibration_batch: int = Field(16, ge=1, description="batch of the GDFQ calibration generator (the codes: 16)")
    calibration_bns_weight: float = Field(0.1, ge=0, description="BNS weight of the calibration generator's loss")

    def seed_for(self, trial_seed: int) -> int:
        """The seed the set is synthesized with: the option where given, else the trial's."""
        return trial_seed if self.synthesis_seed is None else self.synthesis_seed


class OfflineSetGenerator(Generator):
    """A synthetic set served as the scaffold says. ``calibration_batch`` None: no calibration generator (the
    subclass serves the calibration epochs itself)."""

    #: The per-sample crop + flip of training batches. HAST keeps the per-image loop everywhere
    #: (its recorded numbers); IntraQ and ZeroQ take :func:`~zsqbench.toolkit.augment.crop_flip`,
    #: batched on an accelerator (the same parameters, equal up to float rounding).
    augment: ClassVar[Callable[..., Tensor]] = staticmethod(random_resized_crop_flip)
    accepts_shared_calibration = True

    @classmethod
    def budget_problem(cls, options: PluginOptions, spec: "TrialSpec") -> str:
        """Besides the default rules: no frozen warm-up after calibration. The calibration generator
        is dropped when calibration ends, and the set's batches would only be drawn and discarded;
        the methods' own schedules calibrate for the whole warm-up (4 + 147 epochs on ImageNet)."""
        problem = super().budget_problem(options, spec)
        b = spec.budget
        if not problem and b.frozen_epochs:
            problem = (f"generator '{cls.name}' calibrates for its whole warm-up, but budget '{spec.budget_name}' "
                       f"keeps the student frozen {b.frozen_epochs} epoch(s) after {b.calibration_length} calibration "
                       f"epoch(s); set --warmup-epochs {b.calibration_length}")
        return problem

    @classmethod
    def pass_counts(cls, options: PluginOptions, teacher: TeacherModel) -> PassCounts:
        """Fine-tuning on the set: 4T per sample (teacher forward, student forward and backward),
        no generator; warm-up on the calibration generator at its own batch. A method adds its
        synthesis (``synthesis_teacher``) and a costlier student step."""
        o: OfflineSetOptions = options  # type: ignore[assignment]
        return PassCounts(train_teacher=4.0, train_generator=0.0, warmup_batch=o.calibration_batch,
                          generator_macs=network_macs(teacher), teacher_input_backward=False)

    def __init__(self, options: PluginOptions, ctx: TrainContext, *, calibration_batch: int | None,
                 calibration_bns_weight: float = 0.1) -> None:
        super().__init__(options, ctx)
        self.image_shape = tuple(ctx.teacher_entry.input_size)
        self.calibration_bns_weight = calibration_bns_weight
        # a budget's shared calibration replaces the method's calibration source
        self.shared_calibration = shared_calibration(ctx)
        if self.shared_calibration is not None:
            calibration_batch = None
        # GDFQ's generator at its own batch, for the calibration epochs only.
        self.calibration: TrainedGenerator | None = (
            TrainedGenerator(ctx, calibration_batch) if calibration_batch is not None else None)
        self.images: Tensor | None = None
        self.labels: Tensor | None = None
        self._perm: Tensor | None = None
        self._pos = 0

    @abstractmethod
    def load_set(self) -> tuple[Tensor, Tensor]:
        """The synthetic set (images, labels) on the CPU: from the cache, else synthesized."""

    # -- stage 1
    def prepare(self) -> None:
        x, y = self.load_set()
        self.images, self.labels = x.to(self.ctx.device), y.to(self.ctx.device)
        self._perm, self._pos = None, 0

    # -- stage 2
    def start_epoch(self, phase: Phase) -> None:
        if phase.calibrating:
            if self.calibration is not None:
                self.calibration.set_epoch(phase)
        else:
            self.calibration = None  # never used again (the reference moves it to the CPU)

    def next_batch(self, phase: Phase) -> Batch:
        if phase.calibrating:
            if self.calibration is None:
                raise RuntimeError(f"{self.name}: calibration generator requested after the calibration epochs")
            return self.calibration.gdfq_step(self.calibration_bns_weight)
        images, labels = self._set()
        idx = self._next_indices(self.ctx.spec.budget.batch_size)  # the CPU's RNG stream, as on every device
        if images.is_cuda:  # through pinned memory: a plain copy to the GPU would make the host wait
            idx = idx.pin_memory().to(images.device, non_blocking=True)
        return Batch(x=type(self).augment(images[idx], size=self.image_shape[-1]), y=labels[idx])

    def while_shared_calibration(self, phase: Phase) -> None:
        """Nothing: the calibration batches only serve the ranges, which the shared source now calibrates."""

    def _set(self) -> tuple[Tensor, Tensor]:
        if self.images is None or self.labels is None:
            raise RuntimeError(f"{self.name}: batches requested before prepare()")
        return self.images, self.labels

    def _next_indices(self, count: int) -> Tensor:
        """The next ``count`` indices of the shuffled set, reshuffling (global RNG) at each new pass."""
        assert self.labels is not None
        n = self.labels.shape[0]
        chunks = []
        while count > 0:
            if self._perm is None or self._pos >= n:
                self._perm, self._pos = torch.randperm(n), 0
            take = min(count, n - self._pos)
            chunks.append(self._perm[self._pos:self._pos + take])
            self._pos += take
            count -= take
        return torch.cat(chunks)

    # -- what the core needs to know
    def networks(self) -> dict[str, nn.Module]:
        return {"calibration": self.calibration.net} if self.calibration is not None else {}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"calibration": self.calibration.optimizer} if self.calibration is not None else {}

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"perm": self._perm, "pos": self._pos}
        if self.calibration is not None:
            state["calibration"] = self.calibration.state_dict()
        return {**state, **self.shared_calibration_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._perm, self._pos = state.get("perm"), int(state.get("pos", 0))
        self.load_shared_calibration_state(state)
        if "calibration" in state and self.calibration is not None:
            self.calibration.load_state_dict(state["calibration"])
        elif "calibration" not in state:
            self.calibration = None


def short_synthesis_overrides(generator: str, images: str, why: str) -> tuple[BudgetOverride, BudgetOverride]:
    """The ``smoke`` and ``cpu`` presets of an offline-set method (HAST, ZeroQ + FT, IntraQ): a few
    images in a few steps (seconds per trial), and 512 images in 4 batches of 100 steps (a few CPU
    minutes), both at student lr 1e-6: their KD weight α·T² = 8000 on such short syntheses made
    HAST's official 1e-5 diverge (measured), and ``why`` says so per method."""
    return (
        BudgetOverride(preset="smoke", generator=generator, optim={"student_lr": 1e-6},
                       generator_options={"num_images": 16, "synthesis_batch": 8, "synthesis_iters": 3},
                       note=f"a few images, a few synthesis steps: seconds per trial; lr 1e-6 ({why})"),
        BudgetOverride(preset="cpu", generator=generator, optim={"student_lr": 1e-6},
                       generator_options={"num_images": 512, "synthesis_batch": 128, "synthesis_iters": 100},
                       note=f"512 {images}, 4 batches x 100 steps, a few CPU minutes; lr 1e-6 ({why})"),
    )


def paper_fine_tuning_override(generator: str, batch_size: int, student_lr: float, note: str) -> BudgetOverride:
    """The ``paper`` schedule the offline-set codes share: 151 epochs (the preset's 4 calibrate the
    ranges), learning rates x0.1 at epochs 20, 40 and 60; the batch and the student lr are each
    method's (HAST 64 and 1e-5, IntraQ and ZeroQ + FT 256 and 1e-4)."""
    return BudgetOverride(preset="paper", generator=generator, epochs=151, batch_size=batch_size,
                          lr_milestones=(20, 40, 60), optim={"student_lr": student_lr}, note=note)


def imagenet_overrides(generator: str, options: dict[str, Any] | None = None) -> tuple[BudgetOverride, ...]:
    """The ImageNet presets of HAST and IntraQ (IMAGENET.md §4, §4.2, §8.3): 4 calibration epochs then
    QAT at batch 16 (HAST's hocon: 4 per DDP rank, 16 in effect; ``--batch-size 4`` for the hocon's),
    student lr 1e-6 x0.1 at 100/200/350; the syntheses 5,120 images x 1,000 steps (paper), 1,280 x 500
    (short: 4 + 26 epochs) and 4 x 2 (smoke, with the calibration generator at the smoke batch).
    ``options`` are the method's ImageNet settings, added to every preset's."""
    extra = options or {}
    return (
        BudgetOverride(preset="in1k-paper", generator=generator, epochs=151, warmup_epochs=4,
                       lr_milestones=(100, 200, 350), generator_options={**extra},
                       note=f"{generator}'s ImageNet schedule: 4 calibration + 147 epochs at batch 16, lr 1e-6 "
                            "x0.1 at 100/200/350; 5,120 images x 1,000 synthesis steps (IMAGENET.md §4)"),
        BudgetOverride(preset="in1k-short", generator=generator, epochs=30, warmup_epochs=4, lr_milestones=(20,),
                       generator_options={"num_images": 1280, "synthesis_iters": 500, **extra},
                       note="4 calibration + 26 epochs; 1,280 images x 500 synthesis steps (IMAGENET.md §8.3)"),
        BudgetOverride(preset="in1k-smoke", generator=generator,
                       generator_options={"num_images": 4, "synthesis_batch": 4, "synthesis_iters": 2,
                                          "calibration_batch": 2, **extra},
                       note="4 images x 2 synthesis steps, calibration generator at batch 2: seconds on a CPU"),
    )


__all__ = ["OfflineSetGenerator", "OfflineSetOptions", "imagenet_overrides", "short_synthesis_overrides"]
