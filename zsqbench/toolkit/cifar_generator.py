"""GDFQ's label-conditioned CIFAR generator network (docs/methods/gdfq.md#generator-network), with folded
upsampling convolutions."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F


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
    convolution (the ``Upsample`` + ``Conv2d`` of docs/methods/gdfq.md#generator-network; same parameters and
    state_dict).

    The composite is one linear map, so computing it as a stride-2 transposed convolution with
    the folded 4x4 kernel gives the same outputs and gradients up to float rounding, with 16
    instead of 36 multiply-adds per output pixel and no 4x larger upsampled tensor to store:
    the generator's two upsampling blocks were more than half of an AdaDFQ iteration's
    network time on CPU (benchmarks/README.md). ``tests/plugins/test_gdfq.py`` checks it against the
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

    The 0.8 eps of the two inner BNs and the final non-affine BN are deliberate
    (docs/methods/gdfq.md#generator-network).
    Each block's upsampling and convolution are one :class:`UpsampleConv2d`.

    ``num_classes=None`` builds the trunk alone (no embedding): :meth:`decode` maps a latent
    h of ``latent_dim`` entries to images, for generators that condition differently (Qimera's
    E[y] + σ·z, standardized and superposed). GDFQ's network, parameters and state_dict keys
    are the same either way.
    """

    def __init__(self, num_classes: int | None, latent_dim: int = 100, img_size: int = 32, channels: int = 3):
        super().__init__()
        self.latent_dim = latent_dim
        self.init_size = img_size // 4
        self.embed = nn.Embedding(num_classes, latent_dim) if num_classes is not None else None
        self.project = nn.Linear(latent_dim, 128 * self.init_size**2)
        self.bn0 = nn.BatchNorm2d(128)
        self.block1 = nn.Sequential(UpsampleConv2d(128, 128), nn.BatchNorm2d(128, eps=0.8), nn.LeakyReLU(0.2))
        self.block2 = nn.Sequential(UpsampleConv2d(128, 64), nn.BatchNorm2d(64, eps=0.8), nn.LeakyReLU(0.2))
        self.head = nn.Sequential(nn.Conv2d(64, channels, 3, 1, 1), nn.Tanh(), nn.BatchNorm2d(channels, affine=False))

    def forward(self, z: Tensor, y: Tensor) -> Tensor:
        if self.embed is None:
            raise RuntimeError("this CifarGenerator was built without a label embedding; call decode(h)")
        return self.decode(self.embed(y) * z)

    def decode(self, h: Tensor) -> Tensor:
        """Images from latents h (B, latent_dim): GDFQ's network from its projection ``l1`` on."""
        h = self.project(h)
        h = self.bn0(h.view(h.shape[0], 128, self.init_size, self.init_size))
        # The projection's view is NCHW; in a channels-last generator every convolution would
        # then convert its input (and gradient) to NHWC, so convert once here.
        if self.block1[0].weight.is_contiguous(memory_format=torch.channels_last):
            h = h.contiguous(memory_format=torch.channels_last)
        return self.head(self.block2(self.block1(h)))
