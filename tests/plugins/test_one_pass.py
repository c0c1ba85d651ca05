"""The one-pass (compiled) activation fake quantizer gives the eager form's tensor bit for bit
(plugins/quantizers/_one_pass.py), takes only large CPU activations, and falls back to the eager form
when compilation is unavailable."""

from __future__ import annotations

import pytest
import torch

from zsqbench_plugins.quantizers import _one_pass
from zsqbench_plugins.quantizers._fake_quant import FakeQuantSTE, _codes_on_grid, frozen_grid


def _eager(x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, bits: int) -> torch.Tensor:
    scale, zero = frozen_grid(lo, hi, bits, x.dtype)
    return _codes_on_grid(x, scale, zero, bits).add_(zero).div_(scale)


@pytest.fixture
def kernel():
    """A fresh build decision for each test, and none left behind for the next."""
    _one_pass.reset()
    yield
    _one_pass.reset()


def _compiled_or_skip(x, lo, hi, bits):
    scale, zero = frozen_grid(lo, hi, bits, x.dtype)
    out = _one_pass.quantize_dequantize(x, scale, zero, bits)
    if out is None:
        pytest.skip("torch.compile cannot build a CPU kernel here (no C++ compiler?); the eager form is used")
    return out


@pytest.mark.parametrize("bits", [3, 4, 8])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_compiled_loop_equals_the_eager_form_bit_for_bit(kernel, bits, dtype):
    g = torch.Generator().manual_seed(bits)
    lo, hi = torch.tensor(-0.37, dtype=dtype), torch.tensor(2.9, dtype=dtype)
    # odd sizes (a vector loop's remainder), both clamp edges, channels-last as the student's maps
    x = (torch.randn(7, 13, 31, 29, generator=g, dtype=dtype) * 1.5 + 0.8).contiguous(memory_format=torch.channels_last)
    assert torch.equal(_compiled_or_skip(x, lo, hi, bits), _eager(x, lo, hi, bits))


def test_exact_half_ties_round_to_even_as_the_eager_form(kernel):
    lo, hi = torch.tensor(-1.0), torch.tensor(1.0)
    scale, zero = frozen_grid(lo, hi, 4, torch.float32)
    # x·S − Z lands on every k + 0.5 between the clamp edges (and beyond them)
    codes = torch.arange(-12, 12, dtype=torch.float32) + 0.5
    x = ((codes + zero) / scale).repeat(4096)
    assert torch.equal(_compiled_or_skip(x, lo, hi, 4), _eager(x, lo, hi, 4))


def test_only_large_cpu_activations_take_the_compiled_loop(kernel):
    assert _one_pass.applies(torch.empty(_one_pass.MIN_ELEMENTS))
    assert not _one_pass.applies(torch.empty(_one_pass.MIN_ELEMENTS - 1))  # a smoke batch never compiles
    assert not _one_pass.applies(torch.empty(_one_pass.MIN_ELEMENTS, device="meta"))
    _one_pass.disable()
    assert not _one_pass.applies(torch.empty(_one_pass.MIN_ELEMENTS))


def test_reference_kernels_keep_the_eager_form(kernel, monkeypatch):
    monkeypatch.setenv("ZSQBENCH_REFERENCE_KERNELS", "1")
    scale, zero = frozen_grid(torch.tensor(0.0), torch.tensor(1.0), 4, torch.float32)
    assert _one_pass.quantize_dequantize(torch.rand(_one_pass.MIN_ELEMENTS), scale, zero, 4) is None
    assert not _one_pass.applies(torch.empty(_one_pass.MIN_ELEMENTS))


def test_a_failed_compilation_warns_once_and_the_forward_keeps_its_values(kernel, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found\nmore detail")

    monkeypatch.setattr(_one_pass, "_build", lambda: broken)
    lo, hi = torch.tensor(0.0), torch.tensor(4.0)
    x = torch.rand(_one_pass.MIN_ELEMENTS) * 5
    with pytest.warns(RuntimeWarning, match="one-pass fake quantization unavailable .*No working C\\+\\+ compiler"):
        first = FakeQuantSTE.apply(x, lo, hi, 4, None)
    assert torch.equal(first, _eager(x, lo, hi, 4))
    assert not _one_pass.applies(x)  # decided once: no second attempt, no second warning


def test_the_straight_through_gradient_is_unchanged_on_the_compiled_path(kernel):
    x = (torch.randn(_one_pass.MIN_ELEMENTS) * 3).requires_grad_(True)
    lo, hi = torch.tensor(-1.0), torch.tensor(1.0)
    out = FakeQuantSTE.apply(x, lo, hi, 4, None)
    if not _one_pass.applies(x.detach()):
        pytest.skip("torch.compile cannot build a CPU kernel here; the eager form is used")
    assert torch.equal(out.detach(), _eager(x.detach(), lo, hi, 4))
    out.backward(torch.full_like(out, 0.25))
    assert torch.equal(x.grad, torch.full_like(x, 0.25))  # identity STE, no clipping mask
