"""The 224-pixel class-conditional-BN generator of GDFQ's ImageNet code (IMAGENET.md §3.1), and the
choice of a generator network by the teacher's input size.

GDFQ, AdaDFQ and the calibration generators of HAST and IntraQ train this network on ImageNet
teachers. Unlike the CIFAR network (:class:`~zsqbench.toolkit.cifar_generator.CifarGenerator`) the
noise enters without a label embedding; the class enters only through the per-class scale and
shift of its three conditional BNs. Start at 56×56 (``224 // 4``), two nearest ×2 upsamplings.
Each upsampling and its 3×3 convolution are one :class:`UpsampleConv2d` (same parameters and
outputs as upsample-then-convolve, fewer multiply-adds), as in the CIFAR network.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn

from zsqbench.errors import UserError
from zsqbench.toolkit.cifar_generator import CifarGenerator, UpsampleConv2d

#: Output size of the generator; its trunk starts at a quarter of it.
IMAGE_SIZE = 224
#: The spatial size of the projected noise (GDFQ: ``init_size = img_size // 4``).
INIT_SIZE = IMAGE_SIZE // 4


class ConditionalBatchNorm2d(nn.Module):
    """BN without affine parameters, then a per-sample scale and shift looked up by class.

    γ starts at 1 and β at 0 for every class, so at initialisation it is a plain BN; each class
    then learns its own statistics to aim for. Batch statistics are used in training mode (the
    generator always trains), running statistics otherwise, as any BN.
    """

    def __init__(self, num_features: int, num_classes: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(num_features, eps=eps, affine=False)
        self.gamma = nn.Embedding(num_classes, num_features)
        self.beta = nn.Embedding(num_classes, num_features)
        nn.init.ones_(self.gamma.weight)
        nn.init.zeros_(self.beta.weight)

    @property
    def eps(self) -> float:
        return self.bn.eps

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        out = self.bn(x)
        return self.gamma(y)[:, :, None, None] * out + self.beta(y)[:, :, None, None]


def _norm(channels: int, num_classes: int | None, eps: float) -> nn.Module:
    """A conditional BN, or a plain affine BN when the network is built without classes (Qimera's
    trunk, whose class information is already in its latent)."""
    if num_classes is None:
        return nn.BatchNorm2d(channels, eps=eps)
    return ConditionalBatchNorm2d(channels, num_classes, eps)


class ImageNetGenerator(nn.Module):
    """z (B, latent_dim) and y (B,) -> images (B, 3, 224, 224); IMAGENET.md §3.1's table:

    Linear(latent_dim → 128·56·56) → CCBN(128, eps 1e-5) → [up ×2, conv 128→128, CCBN(eps 0.8),
    LeakyReLU 0.2] → [up ×2, conv 128→64, CCBN(eps 0.8), LeakyReLU 0.2] → conv 64→3 → tanh →
    BatchNorm2d(3, affine=False). The 0.8 eps are GDFQ's (deliberate, as on CIFAR). With 1000
    classes and latent 100 it has 41,405,315 parameters (the Linear alone 40,542,208).

    ``num_classes=None`` builds the trunk with plain affine BNs and no class input: :meth:`decode`
    maps a latent h to images (Qimera's §3.2 variant: l1 = Linear(d → 401,408) on its normalised
    E[y] + z).
    """

    #: Multiply-accumulates per image of the class-conditional network (Conv2d and Linear, as
    #: upsample-then-convolve, the papers' form; IMAGENET.md §7.1), for latent 100: the compute
    #: estimate's G. tests/plugins/test_imagenet_generator.py measures it with forward hooks.
    MACS: ClassVar[int] = 5_675_909_120

    def __init__(self, num_classes: int | None, latent_dim: int = 100, channels: int = 3) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.num_classes = num_classes
        self.init_size = INIT_SIZE
        self.project = nn.Linear(latent_dim, 128 * INIT_SIZE**2)
        self.bn0 = _norm(128, num_classes, 1e-5)
        self.conv1 = UpsampleConv2d(128, 128)
        self.bn1 = _norm(128, num_classes, 0.8)
        self.conv2 = UpsampleConv2d(128, 64)
        self.bn2 = _norm(64, num_classes, 0.8)
        self.act = nn.LeakyReLU(0.2)
        self.head = nn.Sequential(nn.Conv2d(64, channels, 3, 1, 1), nn.Tanh(), nn.BatchNorm2d(channels, affine=False))

    def forward(self, z: Tensor, y: Tensor) -> Tensor:
        if self.num_classes is None:
            raise RuntimeError("this ImageNetGenerator was built without classes; call decode(h)")
        return self._trunk(z, y)

    def decode(self, h: Tensor) -> Tensor:
        """Images from latents h (B, latent_dim) through the class-free trunk."""
        if self.num_classes is not None:
            raise RuntimeError("this ImageNetGenerator is class-conditional; call forward(z, y)")
        return self._trunk(h, None)

    def _bn(self, norm: nn.Module, x: Tensor, y: Tensor | None) -> Tensor:
        return norm(x) if y is None else norm(x, y)

    def _trunk(self, h: Tensor, y: Tensor | None) -> Tensor:
        x = self.project(h).view(h.shape[0], 128, self.init_size, self.init_size)
        x = self._bn(self.bn0, x, y)
        # the projection's view is NCHW; a channels-last network converts once here (as on CIFAR)
        if self.conv1.weight.is_contiguous(memory_format=torch.channels_last):
            x = x.contiguous(memory_format=torch.channels_last)
        x = self.act(self._bn(self.bn1, self.conv1(x), y))
        x = self.act(self._bn(self.bn2, self.conv2(x), y))
        return self.head(x)


#: Multiply-accumulates per image of the CIFAR network (IMAGENET.md §7.1: 115.8 MMAC), latent 100.
CIFAR_GENERATOR_MACS = 115_834_880

#: Input sizes (height = width) that have a generator network, for the error message.
SUPPORTED_SIZES = (32, IMAGE_SIZE)


def _image_size(input_size: tuple[int, ...]) -> int:
    c, h, w = input_size
    if c != 3 or h != w or h not in SUPPORTED_SIZES:
        raise UserError(f"no generator network for input size {tuple(input_size)}; supported: "
                        + ", ".join(f"(3, {s}, {s})" for s in SUPPORTED_SIZES))
    return h


def generator_network(input_size: tuple[int, ...], num_classes: int | None, latent_dim: int = 100) -> nn.Module:
    """GDFQ's generator for a teacher of this input size: 32 px → the CIFAR network (label
    embedding times noise), 224 px → the conditional-BN network. Any other size is a user error:
    the two official architectures are the only ones the methods were published with.
    ``num_classes=None`` gives the class-free trunk (``decode(h)``)."""
    if _image_size(input_size) == 32:
        return CifarGenerator(num_classes, latent_dim=latent_dim)
    return ImageNetGenerator(num_classes, latent_dim=latent_dim)


def generator_macs(input_size: tuple[int, ...]) -> int:
    """Multiply-accumulates per image of :func:`generator_network` at latent 100 (the estimate's G)."""
    return CIFAR_GENERATOR_MACS if _image_size(input_size) == 32 else ImageNetGenerator.MACS


__all__ = ["ConditionalBatchNorm2d", "ImageNetGenerator", "generator_macs", "generator_network"]
