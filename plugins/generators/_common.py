"""Parts shared by the generator plugins: the CIFAR generator network (METHODS §3.1),
the teacher BN-statistics loss (§4.2) and the online-generator training scaffold."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from zsqbench.api.interfaces import Batch, Generator, PluginOptions, TrainContext


def fold_upsample_into_kernel(weight: Tensor) -> Tensor:
    """The 4x4 stride-2 transposed-convolution kernel equal to nearest ×2 upsampling followed
    by a 3x3, padding-1 convolution with ``weight`` (C_out, C_in, 3, 3); shape (C_in, C_out, 4, 4).

    Every low-resolution pixel is copied to a 2x2 block, so along each axis an output pixel at
    offset k = 0..3 from the block's corner − 1 sees the 3-tap kernel summed over the copies it
    covers: [w2, w1 + w2, w0 + w1, w0] (the flipped kernel convolved with [1, 1]). Built with
    differentiable ops, so the 3x3 weight gets its exact gradient.
    """
    k = F.pad(weight.flip(2, 3), (1, 1, 1, 1))
    k = k[..., :-1, :] + k[..., 1:, :]
    k = k[..., :, :-1] + k[..., :, 1:]
    return k.transpose(0, 1)


class UpsampleConv2d(nn.Conv2d):
    """Nearest ×2 upsampling then a 3x3, stride-1, padding-1 convolution, as one transposed
    convolution (METHODS §3.1's ``Upsample`` + ``Conv2d``; same parameters and state_dict).

    The composite is one linear map, so computing it as a stride-2 transposed convolution with
    the folded 4x4 kernel gives the same outputs and gradients up to float rounding, with 16
    instead of 36 multiply-adds per output pixel and no 4x larger upsampled tensor to store:
    the generator's two upsampling blocks were more than half of an AdaDFQ iteration's
    network time on CPU (benchmarks/README.md). ``tests/test_gdfq.py`` checks it against the
    explicit upsample-then-convolve path.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(in_channels, out_channels, kernel_size=3, stride=1, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return F.conv_transpose2d(x, fold_upsample_into_kernel(self.weight), self.bias, stride=2, padding=1)

    def reference_forward(self, x: Tensor) -> Tensor:
        """The explicit path: upsample, then convolve (4x the memory, 2.25x the multiply-adds)."""
        return super().forward(F.interpolate(x, scale_factor=2, mode="nearest"))


class CifarGenerator(nn.Module):
    """Label-conditioned generator: E[y] ⊙ z -> 8x8x128 -> two upsampling conv blocks -> 3x32x32.

    The 0.8 eps of the two inner BNs and the final non-affine BN are deliberate (METHODS §3.1).
    Each block's upsampling and convolution are one :class:`UpsampleConv2d`.
    """

    def __init__(self, num_classes: int, latent_dim: int = 100, img_size: int = 32, channels: int = 3):
        super().__init__()
        self.latent_dim = latent_dim
        self.init_size = img_size // 4
        self.embed = nn.Embedding(num_classes, latent_dim)
        self.project = nn.Linear(latent_dim, 128 * self.init_size**2)
        self.bn0 = nn.BatchNorm2d(128)
        self.block1 = nn.Sequential(UpsampleConv2d(128, 128), nn.BatchNorm2d(128, eps=0.8), nn.LeakyReLU(0.2))
        self.block2 = nn.Sequential(UpsampleConv2d(128, 64), nn.BatchNorm2d(64, eps=0.8), nn.LeakyReLU(0.2))
        self.head = nn.Sequential(nn.Conv2d(64, channels, 3, 1, 1), nn.Tanh(), nn.BatchNorm2d(channels, affine=False))

    def forward(self, z: Tensor, y: Tensor) -> Tensor:
        h = self.project(self.embed(y) * z)
        h = self.bn0(h.view(h.shape[0], 128, self.init_size, self.init_size))
        # The projection's view is NCHW; in a channels-last generator every convolution would
        # then convert its input (and gradient) to NHWC, so convert once here.
        if self.block1[0].weight.is_contiguous(memory_format=torch.channels_last):
            h = h.contiguous(memory_format=torch.channels_last)
        return self.head(self.block2(self.block1(h)))


class _BatchMoments(torch.autograd.Function):
    """Per-channel batch mean and biased variance of an (N, C, H, W) tensor, in one node.

    ``torch.var_mean`` over (0, 2, 3) runs a Welford reduction that measured ~4x slower on
    CPU than the two-pass form used here (mean, then the mean of the centered squares, the
    same textbook estimator), and its backward takes several passes over the tensor; this
    backward is one fused multiply-add, x·a + b with per-channel a = 2·g_var/M and
    b = (g_mean − a·M·mean)/M. The teacher's 21 BN inputs go through it on every generator
    step (tests/test_gdfq.py checks values and gradients against ``torch.var_mean``).
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        mean = x.mean(dim=(0, 2, 3), keepdim=True)
        var = (x - mean).square_().mean(dim=(0, 2, 3))
        ctx.save_for_backward(x, mean)
        return var, mean.flatten()

    @staticmethod
    def backward(ctx: Any, g_var: Tensor, g_mean: Tensor) -> Tensor:  # type: ignore[override]
        x, mean = ctx.saved_tensors
        count = x.numel() // x.shape[1]
        a = (g_var * (2.0 / count)).view(1, -1, 1, 1)
        b = (g_mean / count).view(1, -1, 1, 1) - a * mean
        return torch.addcmul(b, x, a)


def batch_moments(x: Tensor) -> tuple[Tensor, Tensor]:
    """(biased variance, mean) of each channel over batch and positions, like
    ``torch.var_mean(x, dim=(0, 2, 3), unbiased=False)``, computed faster (see above)."""
    return _BatchMoments.apply(x)


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
        var, mean = batch_moments(x)
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


__all__ = ["Batch", "BNStatsLoss", "CifarGenerator", "UpsampleConv2d", "batch_moments", "fold_upsample_into_kernel", "OnlineGenerator", "kd_kl", "step_on"]
