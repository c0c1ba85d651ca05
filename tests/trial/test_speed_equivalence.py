"""The speed-ups change speed, not mathematics: each optimized path against the straightforward one.

* fused fake quantization (:class:`FakeQuantSTE`) vs ``ste(x, fake_quantize(x))``: forward
  bit-identical to :func:`fake_quantize`, identity gradient, same training to rounding;
* AdaDFQ's shared student forward after warm-up vs the reference's two forwards;
* no teacher/student gradients from the generator step;
* no host synchronization (``.item()``) per iteration in the range EMA and the trainer;
* the generator's folded upsampling convolution, the one-node BN moments and attention
  energies vs their plain formulas (float64 trajectories; see the section's docstrings for
  why the folded convolution is compared on the FP-only generator loss);
* channels-last and bf16 convolutions (opt-in, not equivalent: channels-last agrees to
  rounding in the FP networks only; bf16 is only checked for keeping everything but the
  convolutions in float32, its accuracy effect is to be measured).

Tolerances (losses and all weights after 3 steps): shared forward 1e-6 relative, fused STE
1e-5 relative (it differs from ``x + (q − x)`` by one rounding, at clipped elements only).
Measured on CPU: both bit-identical to their reference (difference 0).
"""

from __future__ import annotations

import math
import sys
import traceback
from types import SimpleNamespace

import pytest
import torch
from conftest import make_spec
from torch import nn

from zsqbench.perf.compute import ComputeSettings, apply_compute_settings, set_conv_precision
from zsqbench.progress import NullProgress
from zsqbench.runs.environment import Environment
from zsqbench.trial.monitor import GradientMonitor
from zsqbench.trial.step import epoch_context, iterate
from zsqbench.trial.trainer import run_trial
from zsqbench_plugins.quantizers._fake_quant import (
    FakeQuantSTE,
    fake_quantize,
    fake_quantize_ste,
    quantize_weight,
    reference_ste,
    ste,
)
from zsqbench_plugins.quantizers._modules import QuantAct


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny batches gain nothing from a second thread, and a busy machine stalls OpenMP barriers."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ------------------------------------------------------------------ fused fake quantization


def _cases():
    g = torch.Generator().manual_seed(0)
    for bits in (2, 3, 4, 5, 8):
        n, half = 2**bits - 1, 2 ** (bits - 1)
        # per tensor, ReLU-like and signed inputs, values beyond the range (clipping)
        yield torch.randn(4096, generator=g).relu() * 3, torch.tensor(0.0), torch.tensor(2.0), bits
        yield torch.randn(4096, generator=g) * 2, torch.tensor(-1.3), torch.tensor(0.7), bits
        # per channel, like conv weights
        w = torch.randn(8, 3, 3, 3, generator=g)
        lo, hi = torch.aminmax(w.flatten(1), dim=1)
        yield w, lo.view(-1, 1, 1, 1), hi.view(-1, 1, 1, 1), bits
        # exact .5 ties: S = 1, Z = half, so S·x − Z = x − half hits k + .5 for half-integer x
        yield torch.arange(-2 * n, 2 * n + 1, dtype=torch.float32) / 2, torch.tensor(0.0), torch.tensor(float(n)), bits
        # ties with a rounded zero point: [-1, 1] at S = n/2, x on the half-steps of the grid
        yield (torch.arange(-2 * n, 2 * n + 1, dtype=torch.float32) + 0.5) / n, torch.tensor(-1.0), torch.tensor(1.0), bits
        # degenerate range
        yield torch.full((16,), 0.5), torch.tensor(0.5), torch.tensor(0.5), bits
        assert half > 0


def test_fused_forward_is_bit_identical_to_the_reference_order_ties_included():
    ties = 0
    for x, lo, hi, bits in _cases():
        scale = (2**bits - 1) / torch.clamp(hi - lo, min=1e-8)
        zero = torch.round(scale * lo) + 2 ** (bits - 1)
        ties += int(((scale * x - zero) % 1 == 0.5).sum())
        assert torch.equal(FakeQuantSTE.apply(x, lo, hi, bits), fake_quantize(x, lo, hi, bits)), bits
    assert ties > 100  # the tie cases really contain exact .5 values


def test_fused_gradient_is_the_identity_even_where_clipped():
    x = torch.tensor([-5.0, 0.2, 0.7, 9.0], requires_grad=True)
    lo, hi = torch.tensor(0.0), torch.tensor(1.0)
    y = FakeQuantSTE.apply(x, lo, hi, 2)
    upstream = torch.tensor([1.0, 2.0, 3.0, 4.0])
    (y * upstream).sum().backward()
    assert torch.equal(x.grad, upstream)


def test_fused_value_differs_from_x_plus_q_minus_x_by_rounding_at_most():
    for x, lo, hi, bits in _cases():
        q = fake_quantize(x, lo, hi, bits)
        torch.testing.assert_close(FakeQuantSTE.apply(x, lo, hi, bits), ste(x, q), rtol=0, atol=4e-6)


def test_quantizers_use_the_fused_path_and_reference_switch_restores_the_old_one():
    w = torch.randn(4, 3, 3, 3, requires_grad=True)
    assert type(quantize_weight(w, 3).grad_fn).__name__ == "FakeQuantSTEBackward"
    with reference_ste():
        assert type(quantize_weight(w, 3).grad_fn).__name__ == "AddBackward0"
    x = torch.randn(10, requires_grad=True)
    assert type(fake_quantize_ste(x, torch.tensor(0.0), torch.tensor(1.0), 4).grad_fn).__name__ == "FakeQuantSTEBackward"


def test_fused_quantizer_computes_in_float32_for_bf16_inputs():
    x = torch.randn(64).to(torch.bfloat16).requires_grad_(True)
    lo, hi = torch.tensor(-1.0), torch.tensor(1.0)
    y = FakeQuantSTE.apply(x, lo, hi, 4)
    assert y.dtype == torch.float32
    assert torch.equal(y, fake_quantize(x.detach().float(), lo, hi, 4))
    y.sum().backward()
    assert x.grad.dtype == torch.bfloat16 and torch.equal(x.grad, torch.ones_like(x))


def test_fused_ste_gives_the_same_hessian_vector_products(plugins):
    """`zsqbench analyze` differentiates the student's gradient again (create_graph)."""
    import copy

    from zsqbench_plugins.quantizers.uniform import UniformOptions, UniformQuantizer

    torch.manual_seed(0)
    quantizer = UniformQuantizer(UniformOptions())
    student = quantizer.quantize(copy.deepcopy(plugins.models.get("resnet20_cifar10").build()), 4, 4).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        student(x)
    quantizer.set_calibrating(student, False)
    params = [p for p in student.parameters() if p.requires_grad]
    probe = [torch.randn_like(p) for p in params]

    def hvp() -> list[torch.Tensor]:
        loss = student(x).square().mean()
        grads = torch.autograd.grad(loss, params, create_graph=True)
        dot = sum((g * v).sum() for g, v in zip(grads, probe))
        return list(torch.autograd.grad(dot, params, allow_unused=True))

    fused = hvp()
    with reference_ste():
        reference = hvp()
    for a, b in zip(fused, reference):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


# -------------------------------------------------------------------- no host synchronization


@pytest.mark.parametrize("tracking", ["exact", "ema"])
def test_range_tracking_never_reads_a_tensor_on_the_host(monkeypatch, tracking):
    act = QuantAct(bits=4, tracking=tracking)

    def no_item(self):
        raise AssertionError("Tensor.item() called: a host-device synchronization")

    monkeypatch.setattr(torch.Tensor, "item", no_item)
    act(torch.tensor([0.0, 2.0]))
    act(torch.tensor([0.0, 4.0]))
    monkeypatch.undo()
    assert int(act.updates) == 2
    if tracking == "ema":  # the first batch initialized the range, the second moved it by 0.1
        assert act.x_max.item() == pytest.approx(0.9 * 2.0 + 0.1 * 4.0)


def _tiny_run_trial(plugins, tmp_path, monkeypatch, iters: int, progress, **env_fields):
    """run_trial on a random ResNet-20 with a fake test set; returns the outcome and the
    number of .item() calls."""
    import zsqbench.trial.trainer as train_mod

    entry = plugins.models.get("resnet20_cifar10")
    test = SimpleNamespace(labels=torch.zeros(2, dtype=torch.long))
    resources = SimpleNamespace(test_set=lambda name, env, progress=None: test,
                                inputs=lambda t, teacher: torch.zeros(2, 3, 32, 32), fp_top1=lambda *a: 10.0)
    torch.manual_seed(0)
    monkeypatch.setattr(train_mod, "select_checkpoint", lambda *a, **k: None)
    monkeypatch.setattr(train_mod, "load_teacher",
                        lambda *a, **k: SimpleNamespace(module=entry.build(), expected_top1=None))
    monkeypatch.setattr(train_mod, "top1", lambda *a, **k: 10.0)
    calls = {"n": 0}
    original = torch.Tensor.item

    def counting_item(self):
        # Adam keeps its step counters on the CPU even for GPU parameters and reads them
        # with .item(): no device synchronization, so not counted.
        caller = traceback.extract_stack(limit=2)[0].filename.replace("\\", "/")
        if "torch/optim/" not in caller:
            calls["n"] += 1
        return original(self)

    monkeypatch.setattr(torch.Tensor, "item", counting_item)
    spec = make_spec("adadfq", "kd", batch_size=2, epochs=2, iters_per_epoch=iters, warmup_epochs=1)
    env = Environment(data_root=tmp_path, device=torch.device("cpu"), cache_dir=tmp_path / "cache", **env_fields)
    outcome = run_trial(spec, plugins, env, progress, resources)  # type: ignore[arg-type]
    monkeypatch.undo()
    return outcome, calls["n"]


def test_trainer_reads_no_tensor_per_iteration_without_a_display(plugins, tmp_path, monkeypatch):
    few = _tiny_run_trial(plugins, tmp_path / "a", monkeypatch, 2, NullProgress())[1]
    more = _tiny_run_trial(plugins, tmp_path / "b", monkeypatch, 5, NullProgress())[1]
    assert few == more  # only per-epoch reads (losses, gradient summary)


class _Display(NullProgress):
    shows_info = True


def test_trainer_reads_the_running_loss_rarely_for_a_display(plugins, tmp_path, monkeypatch):
    silent = _tiny_run_trial(plugins, tmp_path / "a", monkeypatch, 12, NullProgress())[1]
    shown = _tiny_run_trial(plugins, tmp_path / "b", monkeypatch, 12, _Display())[1]
    assert shown == silent + 1  # the end-of-epoch value of the one training epoch (< 50 iterations)


def test_trial_with_opt_in_compute_settings_runs_and_records_them(plugins, tmp_path, monkeypatch):
    outcome, _ = _tiny_run_trial(plugins, tmp_path / "a", monkeypatch, 2, NullProgress(),
                                 precision="bf16", channels_last=True, tf32=False)
    assert outcome.compute == {"precision": "bf16", "channels_last": True, "compile": False, "tf32": False}
    assert all(math.isfinite(v) for e in outcome.epochs for v in e.losses.values())
    plain, _ = _tiny_run_trial(plugins, tmp_path / "b", monkeypatch, 2, NullProgress())
    # every result records what it ran with; the memory format resolved for the device (CPU)
    assert plain.compute == {"precision": "fp32", "channels_last": True, "compile": False, "tf32": None}
    nchw, _ = _tiny_run_trial(plugins, tmp_path / "c", monkeypatch, 2, NullProgress(), channels_last=False)
    assert nchw.compute["channels_last"] is False
    for channels_last in (None, False, True):
        env = Environment(data_root=tmp_path, device=torch.device("cpu"), cache_dir=tmp_path, precision="bf16",
                          channels_last=channels_last, compile=True, tf32=True)
        assert Environment.from_dict(env.to_dict("cpu")).compute == env.compute


def test_memory_format_default_is_resolved_per_device():
    auto = ComputeSettings()
    assert auto.channels_last is None
    assert auto.resolved("cpu").channels_last is True  # measured faster (benchmarks/README.md)
    assert auto.resolved(torch.device("cuda")).channels_last is False  # not measured: PyTorch's default
    assert ComputeSettings(channels_last=False).resolved("cpu").channels_last is False
    with pytest.raises(ValueError, match="resolve the memory format"):
        apply_compute_settings([nn.Conv2d(1, 1, 1)], auto)


# ------------------------------------------------------------------- training equivalence


class _WatchedUpdates:
    """Wraps a trial's StudentUpdate.minimize: records whether each student update reused the
    generator step's forward (``shared_graph``) and checks that the generator step before it
    left no gradient in teacher or student."""

    def __init__(self, parts) -> None:
        self.parts, self.shared = parts, []
        self.inner = parts.student_update.minimize
        parts.student_update.minimize = self

    def __call__(self, inputs, *, shared_graph=False):
        ctx = self.parts.ctx
        assert all(p.grad is None for p in ctx.teacher.parameters())
        assert all(p.grad is None for p in ctx.student.parameters())
        self.shared.append(shared_graph)
        return self.inner(inputs, shared_graph=shared_graph)


def _train(parts, warmup_iters: int = 2, steps: int = 3):
    """A warm-up (ranges calibrated, no student step) then ``steps`` trainer iterations."""
    ctx, gen, budget = parts.ctx, parts.generator, parts.ctx.spec.budget
    watched = _WatchedUpdates(parts)
    losses = []
    with epoch_context(parts, budget.phase(0)):
        for _ in range(warmup_iters):
            assert iterate(parts, budget.phase(0)) == {}
    assert watched.shared == []  # no student update during warm-up, shared or not
    with epoch_context(parts, budget.first_training_phase):
        for _ in range(steps):
            parts.optimizer.zero_grad(set_to_none=True)  # as the student step does anyway
            terms = iterate(parts, budget.first_training_phase)
            losses.append({k: v.item() for k, v in terms.items()})
    state = {f"student.{k}": v.detach().clone() for k, v in ctx.student.state_dict().items()}
    state.update({f"generator.{k}": v.detach().clone() for k, v in gen.networks()["generator"].state_dict().items()})
    return losses, state, watched.shared


def _assert_same_training(a, b, rtol: float, atol: float) -> None:
    (losses_a, state_a, _), (losses_b, state_b, _) = a, b
    assert len(losses_a) == len(losses_b)
    for la, lb in zip(losses_a, losses_b):
        assert la.keys() == lb.keys()
        for k in la:
            assert la[k] == pytest.approx(lb[k], rel=rtol, abs=atol), k
    assert state_a.keys() == state_b.keys()
    for k in state_a:
        torch.testing.assert_close(state_a[k], state_b[k], rtol=rtol, atol=atol, msg=k)


@pytest.mark.parametrize("loss", ["kd", "akt"])
def test_shared_student_forward_trains_exactly_like_two_forwards(tiny_parts, loss):
    shared = _train(tiny_parts(make_spec("adadfq", loss, batch_size=4)))
    reference = _train(tiny_parts(make_spec("adadfq", loss, batch_size=4,
                                            generator_options={"share_student_forward": False})))
    assert shared[2] == [True] * 3 and reference[2] == [False] * 3
    _assert_same_training(shared, reference, rtol=1e-6, atol=1e-9)


def test_shared_student_forward_backward_reaches_student_parameters_only(tiny_parts):
    parts = tiny_parts(make_spec("adadfq", "akt", batch_size=4))
    ctx, gen = parts.ctx, parts.generator
    inner, seen = parts.student_update.minimize, []

    def minimize(inputs, *, shared_graph=False):
        seen.append((inputs.student_logits.requires_grad, set(inputs.student_features), shared_graph))
        gen.online.optimizer.zero_grad(set_to_none=True)  # forget the generator step's own gradient
        return inner(inputs, shared_graph=shared_graph)

    parts.student_update.minimize = minimize
    phase = ctx.spec.budget.first_training_phase
    with epoch_context(parts, phase):
        iterate(parts, phase)
    assert seen == [(True, set(parts.objective.feature_taps), True)]  # the generator step's own forward
    assert all(p.grad is None for p in gen.online.net.parameters())
    assert all(p.grad is None for p in ctx.teacher.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in ctx.student.parameters())


def _student_forwards(parts, phase) -> int:
    count = []
    handle = parts.ctx.student.register_forward_pre_hook(lambda m, args: count.append(1))
    try:
        with epoch_context(parts, phase):
            iterate(parts, phase)
    finally:
        handle.remove()
    return len(count)


def test_no_sharing_while_ranges_track(tiny_parts):
    """While calibrating, both of the reference's student forwards run (each moves the ranges);
    once training, sharing saves one."""
    parts = tiny_parts(make_spec("adadfq", "kd", batch_size=2))
    watched = _WatchedUpdates(parts)
    budget = parts.ctx.spec.budget
    assert _student_forwards(parts, budget.phase(0)) == 2 and watched.shared == []
    parts.optimizer.zero_grad(set_to_none=True)
    assert _student_forwards(parts, budget.first_training_phase) == 1 and watched.shared == [True]
    reference = tiny_parts(make_spec("adadfq", "kd", batch_size=2, generator_options={"share_student_forward": False}))
    assert _student_forwards(reference, budget.first_training_phase) == 2


@pytest.mark.parametrize("generator, loss", [("adadfq", "akt"), ("gdfq", "kd")])
def test_fused_ste_trains_like_the_reference_ste(tiny_parts, generator, loss):
    fused = _train(tiny_parts(make_spec(generator, loss, batch_size=4)))
    with reference_ste():
        reference = _train(tiny_parts(make_spec(generator, loss, batch_size=4)))
    _assert_same_training(fused, reference, rtol=1e-5, atol=1e-7)


def test_channels_last_changes_the_fp_networks_by_rounding_only(tiny_parts):
    """What the CPU default (channels-last) changes: NHWC convolutions round differently. The
    FP networks agree to rounding, but in the 4-bit student a rounding difference that crosses
    a grid boundary (an exact tie) moves an activation by a whole step, so its logits differ visibly (measured on
    a random teacher: max 1.0, mean 0.09 for logits up to 45), and Adam turns rounding noise
    in near-zero generator gradients into full-size updates. Statistically equivalent, not
    bit-equivalent."""
    parts = tiny_parts(make_spec("adadfq", "akt", batch_size=4))
    ctx, gen = parts.ctx, parts.generator.networks()["generator"].eval()
    torch.manual_seed(1)
    x, z, y = torch.randn(8, 3, 32, 32), torch.randn(8, 100), torch.randint(0, 10, (8,))
    with torch.no_grad():
        ctx.student(x)
        parts.quantizer.set_calibrating(ctx.student, False)
        before = [ctx.teacher(x), gen(z, y), ctx.student(x)]
        apply_compute_settings(parts.networks(), ComputeSettings(channels_last=True))
        assert ctx.student.features.init_block.conv.weight.is_contiguous(memory_format=torch.channels_last)
        after = [ctx.teacher(x), gen(z, y), ctx.student(x)]
    for a, b in zip(before[:2], after[:2]):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-5 * a.abs().max().item())
    scale = before[2].abs().max().item()
    assert (after[2] - before[2]).abs().mean().item() < 0.02 * scale


# ------------------------------------------------------------------------- compute settings


def test_a_trial_declares_teacher_student_and_generator_networks_once(tiny_parts):
    parts = tiny_parts(make_spec("adadfq", "kd", batch_size=2))
    nets = parts.networks()
    assert [id(n) for n in nets] == [id(parts.ctx.teacher), id(parts.ctx.student), id(parts.generator.online.net)]
    hast = tiny_parts(make_spec("hast", "kd", batch_size=2, generator_options={"num_images": 2}))
    assert hast.networks()[2] is hast.generator.calibration.net


def test_a_third_party_generator_gets_channels_last_on_cpu(plugins, tmp_path):
    """The compute settings reach the networks a generator declares, whatever its module is
    called: the fixture package's module is ``noise_zsq``, not zsqbench_*."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parents[2] / "examples" / "zsqbench-noise" / "src" / "noise_zsq.py"
    spec = importlib.util.spec_from_file_location("noise_zsq", path)
    noise_zsq = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(noise_zsq)

    from conftest import make_parts

    from zsqbench.api.plugins import build_plugins

    assert not noise_zsq.__name__.startswith("zsqbench")
    custom = build_plugins(extra={"noise": noise_zsq})
    parts = make_parts(custom, make_spec("noise", "at", batch_size=2), tmp_path / "cache")
    shaper = parts.generator.networks()["shaper"]
    apply_compute_settings(parts.networks(), ComputeSettings().resolved("cpu"))
    assert shaper.mix.weight.is_contiguous(memory_format=torch.channels_last)
    assert not shaper.mix.weight.is_contiguous()
    phase = parts.ctx.spec.budget.first_training_phase
    with epoch_context(parts, phase):  # and the step still trains in that memory format
        terms = iterate(parts, phase)
    assert set(terms) == {"total", "logit", "feature"} and terms["feature"].item() > 0


def test_bf16_convolutions_keep_everything_else_float32(tiny_parts):
    parts = tiny_parts(make_spec("adadfq", "kd", batch_size=2))
    student = parts.ctx.student
    keys = set(student.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        student(x)
        parts.quantizer.set_calibrating(student, False)
        ref = student(x)
    set_conv_precision(student, "bf16")
    seen: list[torch.dtype] = []
    hooks = [m.register_forward_hook(lambda m, i, o: seen.append(i[0].dtype))
             for m in student.modules() if isinstance(m, (QuantAct, nn.BatchNorm2d, nn.Linear))]
    with torch.no_grad():
        low = student(x)
    for h in hooks:
        h.remove()
    assert set(seen) == {torch.float32} and low.dtype == torch.float32
    assert set(student.state_dict()) == keys
    assert torch.isfinite(low).all() and not torch.equal(low, ref)
    set_conv_precision(student, "fp32")
    assert all(type(m) in (nn.Conv2d,) or type(m).__name__ == "QuantConv2d"
               for m in student.modules() if isinstance(m, nn.Conv2d))
    with torch.no_grad():
        assert torch.equal(student(x), ref)


def test_gradient_monitor_is_untouched_by_shared_steps(tiny_parts):
    """The trainer's per-step diagnostics see student gradients only (none from the generator)."""
    parts = tiny_parts(make_spec("adadfq", "kd", batch_size=2))
    ctx = parts.ctx
    monitor = GradientMonitor(ctx.student)
    phase = ctx.spec.budget.first_training_phase
    with epoch_context(parts, phase):
        terms = iterate(parts, phase)
    monitor.observe(terms["total"])
    summary = monitor.summary()
    assert summary["nonfinite_steps"] == 0 and summary["grad_norm_mean"] > 0


# ------------------------------------------------- network-level rewrites (folded upsampling, moments, energies)


@pytest.fixture
def float64_default():
    """Trajectory comparisons in float64, where a rewrite's rounding difference (~1e-16)
    stays far below the tolerances (float32 rounding is what the component tests bound)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def _reference_reductions(monkeypatch):
    """The straightforward autograd forms the one-node moments and attention energies replace."""
    from zsqbench.toolkit import bn_stats
    from zsqbench_plugins.losses import _feature

    monkeypatch.setattr(bn_stats, "batch_moments", lambda x: torch.var_mean(x, dim=(0, 2, 3), unbiased=False))
    monkeypatch.setattr(_feature, "square_means",
                        lambda f, spatial=True, channel=True: (f.pow(2).mean(dim=1), f.pow(2).mean(dim=(2, 3))))


@pytest.mark.parametrize("generator, loss", [("adadfq", "akt"), ("gdfq", "spatial")])
def test_one_node_moments_and_energies_train_like_autograd_of_the_plain_formulas(
    tiny_parts, monkeypatch, float64_default, generator, loss
):
    """Whole trainer iterations (warm-up, generator and student steps), float64: losses
    agree to 1e-9 relative and every weight to 1e-9 of its tensor's scale, except the
    generator conv biases that feed a train-mode BN. Their gradient is 0 in exact
    arithmetic (the BN removes any bias), so each path's rounding noise (~1e-17) goes
    into Adam, which moves them by up to ~1e-5 of their scale here."""
    fast = _train(tiny_parts(make_spec(generator, loss, batch_size=4)))
    _reference_reductions(monkeypatch)
    reference = _train(tiny_parts(make_spec(generator, loss, batch_size=4)))
    (losses_f, state_f, _), (losses_r, state_r, _) = fast, reference
    for lf, lr in zip(losses_f, losses_r):
        for k in lf:
            assert lf[k] == pytest.approx(lr[k], rel=1e-9, abs=1e-12), k
    _assert_states_close(state_f, state_r, generator_prefix="generator.")


def test_folded_upsampling_trains_the_generator_like_upsample_then_conv(tiny_parts, monkeypatch, float64_default):
    """The folded generator against the explicit one over 5 Adam steps on the loss that
    involves only FP networks (the teacher's BN statistics and CE, GDFQ's generator loss
    without the student), float64: same losses and weights to 1e-9 relative.

    Why not whole trainer iterations: the quantized student is discontinuous at exact
    rounding ties, and those are common because grid values times grid weights give
    exact multiples (measured, float64: a 1e-14 change of the generated images flips two
    activations of a calibrating student onto the neighbouring grid point and moves its
    logits by 1.5). Any rounding-level change (this one, channels-last, another thread
    count, BLAS or device) therefore makes a student's trajectory different, not worse;
    the component test in tests/plugins/test_gdfq.py bounds the generator's difference in every
    output and gradient."""
    from zsqbench.toolkit.cifar_generator import UpsampleConv2d

    fast = _generator_training(tiny_parts(make_spec("gdfq", "kd", batch_size=8)))
    monkeypatch.setattr(UpsampleConv2d, "forward", UpsampleConv2d.reference_forward)
    reference = _generator_training(tiny_parts(make_spec("gdfq", "kd", batch_size=8)))
    _assert_same_generator_training(fast, reference)


def test_channels_last_trains_the_generator_like_nchw(tiny_parts, float64_default):
    """The default memory format on CPU against NCHW, as the folded upsampling above:
    5 Adam steps of a channels-last generator through a channels-last teacher."""
    parts = tiny_parts(make_spec("gdfq", "kd", batch_size=8))
    apply_compute_settings([parts.ctx.teacher, *parts.generator.networks().values()],
                           ComputeSettings(channels_last=True))
    assert parts.generator.online.net.block2[0].weight.is_contiguous(memory_format=torch.channels_last)
    channels_last = _generator_training(parts)
    nchw = _generator_training(tiny_parts(make_spec("gdfq", "kd", batch_size=8)))
    _assert_same_generator_training(channels_last, nchw)


def _generator_training(parts, steps: int = 5):
    """``steps`` Adam steps of the generator on the part of GDFQ's loss that involves only FP
    networks (teacher BN statistics + CE); losses and the generator's state."""
    online, teacher = parts.generator.online, parts.ctx.teacher
    torch.manual_seed(7)
    losses = []
    for _ in range(steps):
        z, y, x = online.draw()
        with online.bns.recording():
            logits = teacher(x)
        loss = online.bns.loss() + torch.nn.functional.cross_entropy(logits, y)
        online.step(loss)
        losses.append(loss.item())
    return losses, {k: v.clone() for k, v in online.net.state_dict().items()}


def _assert_same_generator_training(a, b) -> None:
    assert a[0] == pytest.approx(b[0], rel=1e-9)
    assert len(set(a[0])) == len(a[0])  # the generator did move
    _assert_states_close(a[1], b[1])


#: Generator entries whose float64 trajectories may differ by more than 1e-9 of their scale: the
#: conv biases that feed a train-mode BN (gradient 0 in exact arithmetic, so rounding noise
#: reaches Adam) and the running means of those BNs, which include the biases.
_NOISE_DRIVEN = {"block1.0.bias": 1e-3, "block2.0.bias": 1e-3, "block1.1.running_mean": 1e-4, "block2.1.running_mean": 1e-4}


def _assert_states_close(a: dict, b: dict, generator_prefix: str = "") -> None:
    """Every entry of state ``a`` within 1e-9 of its scale in ``b`` (integer entries equal),
    the noise-driven generator entries within their own bounds."""
    loose = {generator_prefix + k: tol for k, tol in _NOISE_DRIVEN.items()}
    for k, ref in b.items():
        if not ref.is_floating_point():
            assert torch.equal(a[k], ref), k
            continue
        scale = ref.abs().max().item() or 1.0
        assert (a[k] - ref).abs().max().item() <= loose.get(k, 1e-9) * scale, k


# ------------------------------------------------------------------------------ allocator

_FAULTS_SCRIPT = """
import resource, torch
from zsqbench.perf.compute import tune_cpu_allocator
tuned = tune_cpu_allocator()
def iteration():
    # the large activations of an AdaDFQ iteration at batch 200, alive at once, then freed
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    xs = [torch.empty(200, c, s, s) for c, s in [(128, 16), (64, 32)] + [(16, 32)] * 6 + [(32, 16)] * 4]
    for x in xs:
        x.fill_(1.0)
    del xs, x
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
iteration()  # the first iteration grows the heap either way
print(int(tuned), sum(iteration() for _ in range(5)))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt is glibc's")
def test_tuned_allocator_reuses_freed_activations_instead_of_faulting_them_in_again():
    """The default glibc allocator maps large tensors afresh (or trims the heap they were in)
    so that each iteration page-faults its activations in again (2.5 M minor faults in a
    20-iteration benchmark); after tune_cpu_allocator the freed memory is mostly reused.
    ``ZSQBENCH_MALLOC_TUNING=0`` keeps the C library's behaviour. Measured here over five
    iterations: 70,000–120,000 faults by default, 8,000–19,000 tuned."""
    import os
    import subprocess

    def second_allocation(tuning: str) -> tuple[int, int]:
        env = {**os.environ, "ZSQBENCH_MALLOC_TUNING": tuning}
        out = subprocess.run([sys.executable, "-c", _FAULTS_SCRIPT], env=env, capture_output=True, text=True,
                             check=True).stdout.split()
        return int(out[0]), int(out[1])

    tuned, tuned_faults = second_allocation("1")
    if not tuned:
        pytest.skip("the C library is not glibc")
    untuned, default_faults = second_allocation("0")
    assert untuned == 0
    assert default_faults > 50_000  # of 5 x 44,800 pages in use per iteration
    assert tuned_faults < default_faults / 2
