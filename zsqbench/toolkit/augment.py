"""Per-sample RandomResizedCrop + horizontal flip on image tensors (METHODS §6.3,
METHODS-ZEROQ-DSG-INTRAQ §1.4, §4.2).

One function for both uses: the offline fine-tuning scaffold augments every batch drawn from a
synthetic set with it (HAST, IntraQ, ZeroQ + FT), and IntraQ's local object reinforcement applies
it inside the pixel optimization, where it must stay differentiable (cropping is slicing, the
resize is a bilinear interpolation, both with gradients). Parameters follow torchvision's
sampling rule (ten attempts, then the centre-crop fallback) and come from torch's global RNG, so
the trial seed fixes them; the synthesis engine forks and seeds that RNG per batch.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.transforms import InterpolationMode, RandomResizedCrop
from torchvision.transforms.v2 import functional as TF


def random_resized_crop_flip(
    x: Tensor,
    size: int = 32,
    scale: tuple[float, float] = (0.5, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    flip_p: float = 0.5,
) -> Tensor:
    """Per-sample RandomResizedCrop (bilinear) then horizontal flip, on tensors of any device.

    Parameters are drawn from torch's global RNG, so the trial seed fixes them. Crops are
    never larger than the image, so the resize only upsamples and antialiasing is moot.
    """
    out = []
    for img in x:
        top, left, h, w = RandomResizedCrop.get_params(img, list(scale), list(ratio))
        img = TF.resized_crop(img, top, left, h, w, [size, size], InterpolationMode.BILINEAR, antialias=False)
        if torch.rand(1).item() < flip_p:
            img = TF.horizontal_flip(img)
        out.append(img)
    return torch.stack(out)
