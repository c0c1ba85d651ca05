"""Parts shared by the generator plugins: the CIFAR generator network (METHODS §3.1),
the teacher BN-statistics loss (§4.2) and the online-generator training scaffold."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from zsqbench.interfaces import Batch, Generator, PluginOptions, TrainContext


class CifarGenerator(nn.Module):
    """Label-conditioned generator: E[y] ⊙ z -> 8x8x128 -> two upsampling conv blocks -> 3x32x32.

    The 0.8 eps of the two inner BNs and the final non-affine BN are deliberate (METHODS §3.1).
    """

    def __init__(self, num_classes: int, latent_dim: int = 100, img_size: int = 32, channels: int = 3):
        super().__init__()
        self.latent_dim = latent_dim
        self.init_size = img_size // 4
        self.embed = nn.Embedding(num_classes, latent_dim)
        self.project = nn.Linear(latent_dim, 128 * self.init_size**2)
        self.bn0 = nn.BatchNorm2d(128)
        self.block1 = nn.Sequential(nn.Conv2d(128, 128, 3, 1, 1), nn.BatchNorm2d(128, eps=0.8), nn.LeakyReLU(0.2))
        self.block2 = nn.Sequential(nn.Conv2d(128, 64, 3, 1, 1), nn.BatchNorm2d(64, eps=0.8), nn.LeakyReLU(0.2))
        self.head = nn.Sequential(nn.Conv2d(64, channels, 3, 1, 1), nn.Tanh(), nn.BatchNorm2d(channels, affine=False))

    def forward(self, z: Tensor, y: Tensor) -> Tensor:
        h = self.project(self.embed(y) * z)
        h = self.bn0(h.view(h.shape[0], 128, self.init_size, self.init_size))
        h = self.block1(F.interpolate(h, scale_factor=2, mode="nearest"))
        h = self.block2(F.interpolate(h, scale_factor=2, mode="nearest"))
        return self.head(h)


class BNStatsLoss:
    """Matches the batch statistics of every teacher BN input to that BN's running stats.

    L = (1/L) Σ_l [mean_c (μ_l − μ̂_l)² + mean_c (σ²_l − σ̂²_l)²], biased batch variance.
    Hooks are attached only while :meth:`recording` is active, so no other forward pays.
    """

    def __init__(self, teacher: nn.Module) -> None:
        self.bns = [m for m in teacher.modules() if isinstance(m, nn.BatchNorm2d)]
        self._terms: list[Tensor] = []

    def _hook(self, module: nn.BatchNorm2d, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        x = inputs[0]
        var, mean = torch.var_mean(x, dim=(0, 2, 3), unbiased=False)
        self._terms.append(
            (mean - module.running_mean).pow(2).mean() + (var - module.running_var).pow(2).mean()
        )

    @contextmanager
    def recording(self) -> Iterator[None]:
        self._terms = []
        handles = [bn.register_forward_hook(self._hook) for bn in self.bns]
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    def loss(self) -> Tensor:
        if not self._terms:
            raise RuntimeError("BN-statistics loss read before any recorded teacher forward")
        total = torch.stack(self._terms).sum() / len(self.bns)
        self._terms = []
        return total


class OnlineGenerator(Generator):
    """A generator network trained with Adam alongside the student (GDFQ and its descendants)."""

    def __init__(self, options: PluginOptions, ctx: TrainContext) -> None:
        super().__init__(options, ctx)
        self.net = CifarGenerator(ctx.num_classes).to(ctx.device)
        self.net.train()
        optim = ctx.spec.optim
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=optim.generator_lr, betas=optim.generator_betas)
        self.bns = BNStatsLoss(ctx.teacher)

    def start_epoch(self, epoch: int) -> None:
        lr = self.ctx.spec.optim.generator_lr * self.ctx.spec.budget.lr_factor(epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def sample(self) -> tuple[Tensor, Tensor, Tensor]:
        b = self.ctx.spec.budget.batch_size
        dev = self.ctx.device
        z = torch.randn(b, self.net.latent_dim, device=dev)
        y = torch.randint(0, self.ctx.num_classes, (b,), device=dev)
        return z, y, self.net(z, y)

    def step_generator(self, loss: Tensor, retain_graph: bool = False) -> None:
        """One Adam step on the generator alone.

        The gradient is taken with respect to the generator's parameters only, so a loss
        that also passes through the student (AdaDFQ's zero-sum terms) computes no student
        weight gradients and leaves none behind (METHODS §9 S2); the generator's gradient
        is the same as a full backward would give. ``retain_graph`` keeps the forward's
        graph for a later backward (AdaDFQ's shared student forward).
        """
        step_on(self.optimizer, loss, self.net, retain_graph=retain_graph)

    def state_dict(self) -> dict:
        return {"net": self.net.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.net.load_state_dict(state["net"])
        self.optimizer.load_state_dict(state["optimizer"])


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


def kd_kl(student_logits: Tensor, teacher_logits: Tensor, temperature: float, reduction: str) -> Tensor:
    """T² · KL(softmax(t/T) ‖ softmax(s/T)).

    ``reduction="mean"`` divides the summed KL by B·C (PyTorch's legacy element mean, which
    GDFQ's code uses); ``"batchmean"`` divides by B (textbook KD).
    """
    t = temperature
    total = F.kl_div(F.log_softmax(student_logits / t, dim=1), F.log_softmax(teacher_logits / t, dim=1),
                     reduction="sum", log_target=True)
    denom = student_logits.numel() if reduction == "mean" else student_logits.shape[0]
    return total / denom * (t * t)


__all__ = ["Batch", "BNStatsLoss", "CifarGenerator", "OnlineGenerator", "kd_kl", "step_on"]
