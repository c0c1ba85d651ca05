"""Per-sample RandomResizedCrop + horizontal flip on image tensors
(docs/methods/common.md#per-sample-crop-and-flip).

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

# Both forms run eagerly inside a compiled iteration (``--compile``): their crop boxes are Python numbers
# drawn per image, which a traced graph would bake in as constants, so every batch would recompile (HAST's
# and IntraQ's steps hit torch.compile's recompile limit after a few iterations). The draws and values are
# the same either way.


@torch.compiler.disable  # see above
def random_resized_crop_flip(x: Tensor, size: int = 32, scale: tuple[float, float] = (0.5, 1.0),
                             ratio: tuple[float, float] = (3 / 4, 4 / 3), flip_p: float = 0.5) -> Tensor:
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


def _axis(start: Tensor, length: Tensor, size: int, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
    """Source rows (or columns) and weights of a bilinear resize of [start, start + length) to ``size``,
    PyTorch's rule without align_corners: src = (i + 0.5)·length/size − 0.5, clamped at 0."""
    i = torch.arange(size, device=start.device, dtype=dtype)
    src = ((i[None] + 0.5) * (length.to(dtype)[:, None] / size) - 0.5).clamp(min=0)
    last = (length - 1)[:, None]
    lo = torch.minimum(src.floor().long(), last)
    hi = torch.minimum(lo + 1, last)
    frac = src - lo.to(dtype)
    return start[:, None] + lo, start[:, None] + hi, frac


@torch.compiler.disable  # the note above random_resized_crop_flip
def batched_random_resized_crop_flip(x: Tensor, size: int = 32, scale: tuple[float, float] = (0.5, 1.0),
                                     ratio: tuple[float, float] = (3 / 4, 4 / 3), flip_p: float = 0.5) -> Tensor:
    """:func:`random_resized_crop_flip` with the same random parameters (drawn per image in the same
    order from the global RNG) but one gather-based bilinear resize for the whole batch instead of
    a resize per image: a handful of kernels per batch, which matters on a GPU inside IntraQ's
    1000-step synthesis (docs/methods/common.md#per-sample-crop-and-flip). Equal to the loop up to float rounding
    (tests/plugins/test_synthesis.py), differentiable with respect to ``x``.
    """
    params = []
    for img in x:
        box = RandomResizedCrop.get_params(img, list(scale), list(ratio))
        params.append((*box, torch.rand(1).item() < flip_p))
    device = x.device
    # built on the CPU, copied through pinned memory: torch.tensor(..., device="cuda") makes the host wait
    table = torch.tensor(params)  # (B, 5): top, left, h, w, flip
    if device.type == "cuda":
        table = table.pin_memory().to(device, non_blocking=True)
    table = table.to(device)
    top, left, h, w = table[:, :4].unbind(1)
    flip = table[:, 4].bool()
    y0, y1, fy = _axis(top, h, size, x.dtype)
    x0, x1, fx = _axis(left, w, size, x.dtype)
    b = torch.arange(x.shape[0], device=device)[:, None, None]

    def pick(rows: Tensor, cols: Tensor) -> Tensor:  # (B, size, size, C)
        return x[b, :, rows[:, :, None], cols[:, None, :]]

    fy, fx = fy[:, :, None, None], fx[:, None, :, None]
    top_row = pick(y0, x0) * (1 - fx) + pick(y0, x1) * fx
    bottom_row = pick(y1, x0) * (1 - fx) + pick(y1, x1) * fx
    out = (top_row * (1 - fy) + bottom_row * fy).permute(0, 3, 1, 2)
    return torch.where(flip[:, None, None, None], out.flip(-1), out)


def crop_flip(x: Tensor, size: int = 32, scale: tuple[float, float] = (0.5, 1.0),
              ratio: tuple[float, float] = (3 / 4, 4 / 3), flip_p: float = 0.5) -> Tensor:
    """The batched form on an accelerator (one resize for the batch instead of kernels per image),
    the per-image loop on the CPU (where the loop measured faster); the same random parameters."""
    fn = batched_random_resized_crop_flip if x.device.type != "cpu" else random_resized_crop_flip
    return fn(x, size=size, scale=scale, ratio=ratio, flip_p=flip_p)
