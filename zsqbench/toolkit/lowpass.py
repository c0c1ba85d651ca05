"""A Gaussian low-pass filter in the Fourier domain (docs/methods/synq.md#low-pass-filter): SynQ's
filter of its fine-tuning batches, usable by any method that wants smoother images.

Each channel of each image is filtered on its own: its 2-D spectrum is multiplied by
exp(−(f_y² + f_x²) / (2·D0²)), where f are the signed integer frequencies (cycles per image, in
[−N/2, N/2 − 1] for even N), and transformed back. That is the usual "shift the spectrum,
multiply by a Gaussian centred at (⌊H/2⌋, ⌊W/2⌋), unshift" written without the shifts. The
filter is therefore real and zero-phase, separable, circular (the image wraps around at its
borders) and of gain 1 at frequency 0: the mean of every channel is kept and a constant image is
returned unchanged. Being linear with unit DC gain, it commutes with any per-channel affine
normalization, so it may be applied to normalized images.

D0 counts frequency bins, so one D0 filters a 32-pixel image far less than a 224-pixel one
(D0 = 80 keeps 96 % of the checkerboard at 32 px and 14 % at 224 px).
"""

from __future__ import annotations

from functools import lru_cache

import torch
from torch import Tensor


@lru_cache(maxsize=32)
def lowpass_gain(height: int, width: int, d0: float, half: bool = False) -> Tensor:
    """The filter's gain at every frequency of the unshifted spectrum, (H, W) float64 on the CPU;
    ``half``: only the columns ``rfft2`` keeps, (H, W//2 + 1)."""
    fy = torch.fft.fftfreq(height, d=1.0 / height, dtype=torch.float64)
    fx = (torch.fft.rfftfreq if half else torch.fft.fftfreq)(width, d=1.0 / width, dtype=torch.float64)
    return torch.exp(-(fy[:, None] ** 2 + fx[None, :] ** 2) / (2.0 * d0 * d0))


@lru_cache(maxsize=32)
def _gain_on(height: int, width: int, d0: float, device: torch.device, dtype: torch.dtype) -> Tensor:
    """The half-spectrum gain where the images are: copied to the device once, not at every batch (a copy
    from host memory would make the host wait)."""
    return lowpass_gain(height, width, d0, half=True).to(device=device, dtype=dtype)


def gaussian_lowpass(x: Tensor, d0: float) -> Tensor:
    """``x`` (..., H, W) with every plane low-pass filtered at width ``d0`` (frequency bins); same
    shape and dtype. The real-input transform is used (half the work); the gain is symmetric in
    frequency, so the result equals the real part of the full complex computation."""
    if d0 <= 0:
        raise ValueError(f"the low-pass width D0 must be positive, got {d0}")
    height, width = x.shape[-2:]
    gain = _gain_on(int(height), int(width), float(d0), x.device, x.dtype)
    spectrum = torch.fft.rfft2(x, dim=(-2, -1))
    return torch.fft.irfft2(spectrum * gain, s=(height, width), dim=(-2, -1))


__all__ = ["gaussian_lowpass", "lowpass_gain"]
