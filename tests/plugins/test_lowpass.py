"""The Gaussian low-pass filter (docs/methods/synq.md#low-pass-filter) against golden values computed
in float64 from the formula by the specification's authors: constant images, deltas, checkerboards,
odd sizes, normalization, float32 precision."""

from __future__ import annotations

import math

import pytest
import torch

from zsqbench.toolkit.lowpass import gaussian_lowpass, lowpass_gain


def delta(n: int) -> torch.Tensor:
    x = torch.zeros(n, n, dtype=torch.float64)
    x[0, 0] = 1.0
    return x


def checkerboard(n: int) -> torch.Tensor:
    i = torch.arange(n)
    return ((-1.0) ** (i[:, None] + i[None, :])).to(torch.float64)


@pytest.mark.parametrize("n,d0", [(32, 80.0), (32, 8.0), (224, 80.0), (7, 2.0), (30, 5.0)])
def test_a_constant_image_passes_unchanged(n, d0):
    x = torch.full((2, 3, n, n), -1.7, dtype=torch.float64)
    assert torch.equal(gaussian_lowpass(x, d0), x) or (gaussian_lowpass(x, d0) - x).abs().max() < 1e-14


#: N, D0 -> y[0,0], y[0,1], y[1,1], y[0,2], y[0,N/2] of a delta at (0, 0)
DELTA = {
    (32, 80.0): (0.9867648, 0.0040072, 0.0000163, -0.0010023, -0.0000380),
    (32, 20.0): (0.8148456, 0.0519059, 0.0033064, -0.0111980, -0.0004099),
    (32, 8.0): (0.3575655, 0.1219731, 0.0416076, -0.0040130, -0.0003157),
    (224, 80.0): (0.5634436, 0.1039917, 0.0191932, -0.0145611, -0.0000110),
}


@pytest.mark.parametrize("n,d0", list(DELTA))
def test_delta_response(n, d0):
    y = gaussian_lowpass(delta(n), d0)
    got = (y[0, 0], y[0, 1], y[1, 1], y[0, 2], y[0, n // 2])
    for value, expected in zip(got, DELTA[(n, d0)]):
        assert value.item() == pytest.approx(expected, abs=5e-8)
    assert y.sum().item() == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("n,d0,gain", [(32, 80.0, 0.9607894), (32, 20.0, 0.5272924), (32, 8.0, 0.0183156),
                                       (224, 80.0, 0.1408584)])
def test_a_checkerboard_is_scaled_by_the_corner_gain(n, d0, gain):
    x = checkerboard(n)
    assert torch.allclose(gaussian_lowpass(x, d0), gain * x, atol=5e-8)
    assert lowpass_gain(n, n, d0)[n // 2, n // 2].item() == pytest.approx(gain, abs=5e-8)


def test_single_axis_alternation_and_separability():
    j = torch.arange(32)
    x = ((-1.0) ** j).to(torch.float64).expand(32, 32).clone()
    assert torch.allclose(gaussian_lowpass(x, 80.0), math.exp(-16**2 / (2 * 80**2)) * x, atol=1e-12)
    assert math.exp(-16**2 / (2 * 80**2)) == pytest.approx(0.9801987, abs=5e-8)
    for n, kernel in ((32, (0.9933604, 0.0040340, -0.0010090)), (224, (0.7506288, 0.1385394, -0.0193985))):
        y = gaussian_lowpass(delta(n), 80.0)
        k = torch.tensor(kernel, dtype=torch.float64)
        assert torch.allclose(y[:3, :3], k[:, None] * k[None, :], atol=5e-8)


@pytest.mark.parametrize("n,center", [(5, 0.6329969), (7, 0.4369890)])
def test_odd_sizes(n, center):
    y = gaussian_lowpass(delta(n), 2.0)
    assert y[0, 0].item() == pytest.approx(center, abs=5e-8)
    assert y.sum().item() == pytest.approx(1.0, abs=1e-12)


def test_it_commutes_with_a_per_channel_normalization():
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    mean = torch.tensor([0.49, 0.48, 0.45], dtype=torch.float64)[:, None, None]
    std = torch.tensor([0.25, 0.24, 0.26], dtype=torch.float64)[:, None, None]
    both = gaussian_lowpass((x - mean) / std, 40.0) - (gaussian_lowpass(x, 40.0) - mean) / std
    assert both.abs().max() < 1e-14  # rounding of values of order 4 (the specification: 2e-15 at D0 = 80)


def test_float32_is_within_1e_6_of_float64_and_keeps_shape_and_dtype():
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    y = gaussian_lowpass(x, 80.0)
    assert y.shape == x.shape and y.dtype == torch.float32
    assert (y.double() - gaussian_lowpass(x.double(), 80.0)).abs().max() < 1e-6


def test_non_square_planes_filter_each_axis_with_its_own_frequencies():
    def kernel(n: int) -> torch.Tensor:  # a 1 x n plane is filtered along its one long axis only
        row = torch.zeros(1, n, dtype=torch.float64)
        row[0, 0] = 1.0
        return gaussian_lowpass(row, 3.0)[0]

    x = torch.zeros(8, 16, dtype=torch.float64)
    x[0, 0] = 1.0
    assert torch.allclose(gaussian_lowpass(x, 3.0), kernel(8)[:, None] * kernel(16)[None, :], atol=1e-12)


def test_a_non_positive_width_is_refused():
    with pytest.raises(ValueError, match="D0"):
        gaussian_lowpass(torch.zeros(1, 4, 4), 0.0)
