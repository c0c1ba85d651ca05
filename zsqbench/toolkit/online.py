"""A generator network trained online, with Adam, alongside the student (docs/methods/gdfq.md).

:class:`TrainedGenerator` is the network with its optimizer and the teacher's BN-statistics
loss; :meth:`TrainedGenerator.gdfq_step` is GDFQ's generator update (CE + weighted BNS), which
HAST reuses for its range calibration. :class:`OnlineGenerator` is the base of generator plugins
built on one such network (GDFQ, AdaDFQ): it declares the network and optimizer to the core,
follows the LR schedule and samples fixed batches for analyses. :class:`SharedCalibration` is the
same update on a network and a noise stream of its own, the source of a budget's shared calibration.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from zsqbench.api.generator import Batch, CalibrationSource, Generator, PassCounts, TrainContext
from zsqbench.api.models import TeacherModel
from zsqbench.api.options import PluginOptions
from zsqbench.api.spec import Phase
from zsqbench.errors import UserError
from zsqbench.toolkit.bn_stats import BNStatsLoss
from zsqbench.toolkit.imagenet_generator import generator_macs, generator_network


def step_on(
    optimizer: torch.optim.Optimizer, loss: Tensor, module: nn.Module, retain_graph: bool = False
) -> None:
    """One optimizer step on ``module``'s parameters with the gradient of ``loss`` w.r.t. them alone.

    Other networks the loss passes through (teacher, student) get no weight gradients
    computed and none left behind; ``module``'s gradient equals a full backward's.
    With ``retain_graph`` the graph survives for another backward (e.g. the student loss
    reusing the same student forward); the optimizer step itself does not touch it.
    """
    params = [p for p in module.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, params, allow_unused=True, retain_graph=retain_graph)
    optimizer.zero_grad(set_to_none=True)
    for p, g in zip(params, grads):
        p.grad = g
    optimizer.step()



def network_macs(teacher: TeacherModel) -> int | None:
    """MACs per image of GDFQ's generator network for this teacher (None: no network at its size)."""
    try:
        return generator_macs(tuple(teacher.input_size))
    except UserError:
        return None


class TrainedGenerator:
    """GDFQ's conditional generator with its Adam optimizer and the teacher's BNS loss.

    The network is chosen by the teacher's declared input size
    (:func:`~zsqbench.toolkit.imagenet_generator.generator_network`): the CIFAR network at 32 px,
    the conditional-BN network at 224 px; any other size is refused in one line.

    ``net`` replaces GDFQ's network by another one trained the same way (Qimera's); then
    :meth:`draw` and :meth:`gdfq_step`, which feed GDFQ's (z, y) inputs, are not for it.
    """

    def __init__(self, ctx: TrainContext, batch_size: int, net: nn.Module | None = None) -> None:
        self.ctx = ctx
        self.batch_size = batch_size
        if net is None:
            net = generator_network(tuple(ctx.teacher_entry.input_size), ctx.num_classes)
        self.net = net.to(ctx.device)
        self.net.train()
        optim = ctx.spec.optim
        # foreach: one multi-tensor update instead of a loop over the parameters; bit-identical
        # to the loop (tests/trial/test_fused_ops.py) and ~4x faster on CPU for this network
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=optim.generator_lr, betas=optim.generator_betas,
                                          foreach=True)
        self.bns = BNStatsLoss(ctx.teacher)

    def set_epoch(self, phase: Phase) -> None:
        """The generator LR follows the trial's multi-step schedule
        (docs/methods/common.md#optimizers-and-learning-rate-schedule)."""
        lr = self.ctx.spec.optim.generator_lr * self.ctx.spec.budget.lr_factor(phase.epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def draw(self, batch_size: int | None = None, rng: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """(z, y, images) with the images' graph. The noise and labels come from the global RNG
        on the device, or from ``rng`` on the CPU (the same images on any device)."""
        b = batch_size or self.batch_size
        dev = self.ctx.device
        if rng is None:
            z = torch.randn(b, self.net.latent_dim, device=dev)
            y = torch.randint(0, self.ctx.num_classes, (b,), device=dev)
        else:
            z = torch.randn(b, self.net.latent_dim, generator=rng).to(dev)
            y = torch.randint(0, self.ctx.num_classes, (b,), generator=rng).to(dev)
        return z, y, self.net(z, y)

    def step(self, loss: Tensor, retain_graph: bool = False) -> None:
        """One Adam step on the generator alone.

        The gradient is taken with respect to the generator's parameters only, so a loss that
        also passes through the student (AdaDFQ's zero-sum terms) computes no student weight
        gradients and leaves none behind (S2 of
        docs/methods/common.md#defects-shared-by-the-official-codes). ``retain_graph`` keeps the
        forward's graph for a later backward (AdaDFQ's shared student forward).
        """
        step_on(self.optimizer, loss, self.net, retain_graph=retain_graph)

    def gdfq_step(self, bns_weight: float) -> Batch:
        """GDFQ's generator update (docs/methods/gdfq.md#losses): CE(T(x), y) + w·L_BNS, one Adam step;
        the batch carries the detached images and the teacher's outputs on them."""
        _, y, x = self.draw()
        with self.bns.recording():
            t, feats = self.ctx.teacher_forward(x)
        loss = F.cross_entropy(t, y) + bns_weight * self.bns.loss()
        self.step(loss)
        return Batch(x=x.detach(), y=y, teacher_logits=t.detach(), teacher_features=feats)

    def state_dict(self) -> dict[str, Any]:
        return {"net": self.net.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.net.load_state_dict(state["net"])
        self.optimizer.load_state_dict(state["optimizer"])


class SharedCalibration(CalibrationSource):
    """The source of a budget's ``shared_calibration`` (docs/budgets.md#shared-calibration): GDFQ's
    generator and update (CE + 0.1·BNS, Adam at GDFQ's 1e-3 and betas (0.5, 0.999), no schedule) at the
    budget's batch, its initial weights and every draw from the trial seed alone, on a CPU stream of its
    own. Its batches depend on the teacher, the seed and the batch, never on the method: two methods of
    one seed calibrate on the same images, and the method's own random streams are left as they were."""

    BNS_WEIGHT, LR, BETAS = 0.1, 1e-3, (0.5, 0.999)

    def __init__(self, ctx: TrainContext, batch_size: int) -> None:
        with torch.random.fork_rng(devices=[]):  # the initial weights, without touching the trial's stream
            torch.manual_seed(ctx.spec.seed)
            net = generator_network(tuple(ctx.teacher_entry.input_size), ctx.num_classes)
        self.generator = TrainedGenerator(ctx, batch_size, net)
        self.generator.optimizer = torch.optim.Adam(self.generator.net.parameters(), lr=self.LR, betas=self.BETAS,
                                                    foreach=True)
        self.rng = torch.Generator().manual_seed(ctx.spec.seed)

    def next_images(self) -> Tensor:
        gen = self.generator
        _, y, x = gen.draw(rng=self.rng)
        with gen.bns.recording():
            t, _ = gen.ctx.teacher_forward(x)
        gen.step(F.cross_entropy(t, y) + self.BNS_WEIGHT * gen.bns.loss())
        return x.detach()

    def state_dict(self) -> dict[str, Any]:
        return {**self.generator.state_dict(), "rng": self.rng.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.load_state_dict(state)
        self.rng.set_state(state["rng"])


def shared_calibration(ctx: TrainContext) -> SharedCalibration | None:
    """The trial's shared calibration source, or None when its budget has none."""
    batch = ctx.spec.budget.shared_calibration
    return None if batch is None else SharedCalibration(ctx, batch)


class OnlineGenerator(Generator):
    """A generator plugin built on one :class:`TrainedGenerator` at the trial's batch size. Under a
    shared calibration its network still trains in the calibration epochs (the core's step runs
    :meth:`next_batch` with the ranges held) while the ranges follow the shared source."""

    accepts_shared_calibration = True

    def __init__(self, options: PluginOptions, ctx: TrainContext) -> None:
        super().__init__(options, ctx)
        self.online = TrainedGenerator(ctx, ctx.spec.budget.batch_size, self.build_network())
        self.shared_calibration = shared_calibration(ctx)

    @classmethod
    def pass_counts(cls, options: PluginOptions, teacher: TeacherModel) -> PassCounts:
        """GDFQ's counts with the MACs of the generator network for the teacher's input size."""
        return PassCounts(generator_macs=network_macs(teacher))

    def build_network(self) -> nn.Module | None:
        """The network to train online; None (the default) is GDFQ's network for the teacher's input size."""
        return None

    def start_epoch(self, phase: Phase) -> None:
        self.online.set_epoch(phase)

    def networks(self) -> dict[str, nn.Module]:
        return {"generator": self.online.net}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"generator": self.online.optimizer}

    def sample(self, batch_size: int, rng: torch.Generator | None = None) -> Batch:
        _, y, x = self.online.draw(batch_size, rng)
        return Batch(x=x, y=y)
