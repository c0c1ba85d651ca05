"""AIT (docs/methods/ait.md): the KL-only loss, gradient inundation (GI-SGD), the integer weight
codes it counts, its schedule and its errors.

Expected values come from docs/methods/ait.md#gradient-inundation: the codes of its step 2, the search
of its step 3 (written again below as a plain loop, independent of the plugin's two implementations),
and a case whose flip fractions follow by hand from where each weight crosses a rounding boundary.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from conftest import make_parts, make_spec, one_line_error
from torch import nn

from zsqbench.api import Phase, Quantizer, hookimpl
from zsqbench.api.plugins import build_plugins
from zsqbench.errors import UserError
from zsqbench.grid.budgets import resolve_budget
from zsqbench.grid.request import GridRequest, expand
from zsqbench.runs import checkpoint
from zsqbench.runs.environment import Environment
from zsqbench.trial.step import epoch_context, iterate, optimizer_summary
from zsqbench_plugins.losses._gi_sgd import GISGD, GISettings
from zsqbench_plugins.quantizers._fake_quant import quantize_weight
from zsqbench_plugins.quantizers.uniform import UniformQuantizer

pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------ references, from the spec


def ref_codes(w: torch.Tensor, bits: int) -> torch.Tensor:
    """ait.md step 2's codes: per output channel o, S = (2^k − 1)/max(M − m, 1e-8),
    Z = round(S·m) + 2^(k−1), code = clamp(round(S·x − Z), −2^(k−1), 2^(k−1) − 1)."""
    rows = w.reshape(w.shape[0], -1)
    m, big_m = rows.min(dim=1, keepdim=True).values, rows.max(dim=1, keepdim=True).values
    s = (2**bits - 1) / torch.clamp(big_m - m, min=1e-8)
    z = torch.round(s * m) + 2 ** (bits - 1)
    return torch.clamp(torch.round(s * rows - z), -(2 ** (bits - 1)), 2 ** (bits - 1) - 1).reshape(w.shape)


def ref_flips(w: torch.Tensor, d: torch.Tensor, lr: float, a: float, bits: int) -> float:
    """f(a): share of codes that differ between W and W − D·(η·a), the step in W's dtype."""
    candidate = w - d * torch.tensor(lr * a, dtype=torch.float64).to(w.dtype)
    return (ref_codes(candidate, bits) != ref_codes(w, bits)).sum().item() / w.numel()


def ref_search(f, p: float, doublings: int, rounds: int = 5, tol: float = 0.01, final: str = "midpoint"):
    """ait.md step 3's search as a loop: (a, lo, hi, a_d)."""
    a = 1.0
    if f(a) >= p:
        return 1.0, 1.0, 1.0, 1.0
    while f(a) < p and a < 2.0**doublings:
        a *= 2
    lo, hi, mid = a / 2, a, a
    for _ in range(rounds):
        mid = (lo + hi) / 2
        fm = f(mid)
        if fm < p:
            lo = mid
        else:
            hi = mid
        if abs(fm - p) < tol * p:
            break
    return (hi if final == "upper" else mid), lo, hi, a


def nesterov_direction(g: torch.Tensor, buf: torch.Tensor | None, mu: float = 0.9) -> torch.Tensor:
    prospective = g.clone() if buf is None else mu * buf + g
    return g + mu * prospective


# ------------------------------------------------------------------------------- fixtures


class Tiny(nn.Module):
    """A conv (4 x 1 x 3 x 3) and an FC (3 x 4): two quantized weights, two biases."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x).mean(dim=(2, 3)))


def gi(student: nn.Module, quantizer=None, *, lr=1e-3, wd=0.0, **settings) -> GISGD:
    quantizer = quantizer or UniformQuantizer(UniformQuantizer.Options())
    return GISGD(student.parameters(), quantizer.quantized_weights(student), quantizer, GISettings(**settings),
                 lr=lr, momentum=0.9, nesterov=True, weight_decay=wd)


def quantized(model: nn.Module, dtype=torch.float32) -> nn.Module:
    return UniformQuantizer(UniformQuantizer.Options()).quantize(model.to(dtype), 4, 4)


def one_row(values, grad, buf) -> tuple[nn.Module, nn.Parameter]:
    student = quantized(nn.Sequential(nn.Linear(len(values), 1)))
    w = student[0].weight
    with torch.no_grad():
        w.copy_(torch.tensor([values]))
    w.grad = torch.tensor([grad])
    student[0].bias.grad = torch.zeros(1)
    return student, w


# --------------------------------------------------------------------------------- the search


@pytest.mark.parametrize("batched", [False, True])
def test_search_on_a_case_computed_by_hand(batched):
    """W = k/15 (k = 0..15) is exactly the 4-bit grid (codes k − 8). The direction moves weight 5
    by a·1e-3 and weight 9 by a·0.5e-3, so weight 5's code changes once a > 33.3 and weight 9's
    once a > 66.7: f = 0, 1/16, 2/16. With p = 1.5/16 the doubling ends at a_d = 128 (f(64) = 1/16),
    the bisection visits 96, 80, 72, 68 (f = 2/16 each) and 66 (f = 1/16): a = 66 (the last
    midpoint, which undershoots p: defect T3 reproduced), bracket [66, 68] = a_d/64 wide."""
    g, b = [0.0] * 16, [0.0] * 16
    g[5], b[5] = -0.1, -1.0  # D = 1.9 g + 0.81 b = -1.0
    g[9], b[9] = -0.05, -0.5  # D = -0.5
    p = 1.5 / 16
    for final, expected, changed in (("midpoint", 66.0, [5]), ("upper", 68.0, [5, 9])):
        student, w = one_row([k / 15 for k in range(16)], g, b)
        opt = gi(student, threshold=p, final=final, batched=batched, first_uncapped_epoch=0)
        opt.state[w]["momentum_buffer"] = torch.tensor([b])
        opt.start_epoch(Phase(1, False))
        before = w.detach().clone()
        opt.step()
        r = opt.last
        assert (r.scale.item(), r.lo.item(), r.hi.item(), r.doubled.item()) == (expected, 66.0, 68.0, 128.0)
        assert r.hi.item() - r.lo.item() == r.doubled.item() / 64
        assert r.natural.item() == 0.0 and not r.limited.item()
        assert torch.nonzero(ref_codes(w.detach(), 4) != ref_codes(before, 4))[:, 1].tolist() == changed
        assert w[0, 5].item() == pytest.approx(5 / 15 + expected * 1e-3, abs=1e-6)


@pytest.mark.parametrize("final", ["midpoint", "upper"])
@pytest.mark.parametrize("p", [0.05, 0.2, 0.6])
def test_search_matches_the_reference_loop_and_brackets_p(p, final):
    results = []
    for batched in (False, True):
        torch.manual_seed(int(p * 100))
        student = quantized(Tiny())
        for prm in student.parameters():
            prm.grad = torch.randn_like(prm) * 1e-2
        opt = gi(student, threshold=p, final=final, batched=batched, first_uncapped_epoch=0)
        conv = student.conv.weight
        opt.state[conv]["momentum_buffer"] = torch.randn_like(conv) * 1e-2
        opt.start_epoch(Phase(0, False))
        w0, g0, b0 = conv.detach().clone(), conv.grad.clone(), opt.state[conv]["momentum_buffer"].clone()
        fc0 = student.fc.weight.detach().clone()
        opt.step()
        results.append(opt.last)
    seq, bat = results
    for key in ("scale", "lo", "hi", "doubled", "natural", "limited", "skipped"):
        assert torch.equal(getattr(seq, key), getattr(bat, key)), key  # the two implementations agree exactly
    d_conv = nesterov_direction(g0, b0)
    d_fc = nesterov_direction(student.fc.weight.grad, None)
    for i, (w, d) in enumerate(((w0, d_conv), (fc0, d_fc))):
        f = lambda a, w=w, d=d: ref_flips(w, d, 1e-3, a, 4)  # noqa: E731
        a, lo, hi, doubled = ref_search(f, p, doublings=24, final=final)
        assert (seq.scale[i].item(), seq.lo[i].item(), seq.hi[i].item(), seq.doubled[i].item()) == (a, lo, hi, doubled)
        if doubled > 1:
            assert f(lo) < p <= f(hi)
            assert lo <= a <= hi
        else:
            assert f(1.0) >= p and a == 1.0


def test_capped_mode_stops_doubling_at_128_and_ends_at_126():
    """Only weight 5 can move (a·1e-4 per step: its code changes once a > 333), so in capped mode
    the doubling stops at 128 short of p and the bisection climbs to 126; uncapped, a_d = 512."""
    g = [0.0] * 16
    g[5] = -1 / 1.9  # first step: D = 1.9 g
    for epoch, expected in ((4, (126.0, 128.0, True)), (5, (None, 512.0, False))):
        student, w = one_row([k / 15 for k in range(16)], g, [0.0] * 16)
        opt = gi(student, lr=1e-4, threshold=0.05, first_uncapped_epoch=5)
        opt.start_epoch(Phase(epoch, False))
        assert opt.capped is (epoch == 4)
        opt.step()
        r = opt.last
        assert (r.doubled.item(), r.limited.item()) == expected[1:]
        if expected[0] is not None:
            assert r.scale.item() == expected[0]
        else:
            assert 333 < r.hi.item() <= 512 and r.lo.item() >= 256


# ---------------------------------------------------------------------- the update vs torch SGD


@pytest.mark.parametrize("dtype,wd", [(torch.float64, 0.0), (torch.float32, 0.0), (torch.float32, 1e-4)])
def test_gi_is_torch_sgd_with_lr_times_a(dtype, wd):
    """Over one shared gradient sequence: momentum buffers identical to torch SGD's (weight decay 0),
    each GI tensor's change is a_l times SGD's, non-GI parameters bit-identical (any weight decay)."""
    torch.manual_seed(0)
    student = quantized(Tiny(), dtype)
    twin = copy.deepcopy(student)
    opt = gi(student, wd=wd, threshold=0.1, first_uncapped_epoch=0)
    ref = torch.optim.SGD(twin.parameters(), lr=1e-3, momentum=0.9, nesterov=True, weight_decay=wd)
    opt.start_epoch(Phase(3, False))
    gi_names = {"conv.weight", "fc.weight"}
    scaled = []
    for _ in range(4):
        grads = {n: torch.randn_like(p) * 1e-2 for n, p in student.named_parameters()}
        before = {n: p.detach().clone() for n, p in student.named_parameters()}
        before_ref = {n: p.detach().clone() for n, p in twin.named_parameters()}
        for model in (student, twin):
            for n, p in model.named_parameters():
                p.grad = grads[n].clone()
        opt.step()
        ref.step()
        params, ref_params = dict(student.named_parameters()), dict(twin.named_parameters())
        for i, n in enumerate(["conv.weight", "fc.weight"]):
            a = opt.last.scale[i].item()
            scaled.append(a)
            if wd == 0:
                assert torch.equal(opt.state[params[n]]["momentum_buffer"], ref.state[ref_params[n]]["momentum_buffer"])
            if dtype == torch.float64 and wd == 0:
                change, ref_change = params[n] - before[n], ref_params[n] - before_ref[n]
                torch.testing.assert_close(change, a * ref_change, rtol=1e-8, atol=1e-15)
        for n in set(params) - gi_names:
            assert torch.equal(params[n], ref_params[n]), n
            assert torch.equal(opt.state[params[n]]["momentum_buffer"], ref.state[ref_params[n]]["momentum_buffer"])
    assert max(scaled) > 1  # GI did enlarge steps, so the comparison could fail


@pytest.mark.parametrize("final", ["midpoint", "upper"])
def test_realized_code_changes_on_resnet20_hit_the_target(plugins, final):
    """p = 1e-3 on all 22 tensors of ResNet-20 (432 to 36,864 weights): the share of codes the step
    changed is exactly f(a) of the search (the candidate is the update), within [f(lo), f(hi)],
    and ≥ p with final='upper'. Both search paths agree."""
    teacher = plugins.models.get("resnet20_cifar10").build()
    results = {}
    for batched in (False, True):
        student = quantized(copy.deepcopy(teacher))
        torch.manual_seed(3)
        for prm in student.parameters():
            prm.grad = torch.randn_like(prm) * 1e-3
        opt = gi(student, lr=1e-4, threshold=1e-3, final=final, batched=batched, first_uncapped_epoch=0)
        quantized_weights = opt.quantizer.quantized_weights(student)
        assert len(quantized_weights) == 22 and sum(q.weight.numel() for q in quantized_weights) == 270_896
        before = [q.weight.detach().clone() for q in quantized_weights]
        opt.start_epoch(Phase(4, False))
        opt.step()
        results[batched] = (opt.last, before, [q.weight.detach().clone() for q in quantized_weights], student)
    (r, before, after, student), (rb, *_) = results[False], results[True]
    assert torch.equal(r.scale, rb.scale) and torch.equal(r.natural, rb.natural)
    grads = [q.weight.grad for q in UniformQuantizer(UniformQuantizer.Options()).quantized_weights(student)]
    near = 0
    for i, (w0, w1) in enumerate(zip(before, after)):
        realized = (ref_codes(w1, 4) != ref_codes(w0, 4)).sum().item() / w0.numel()
        d = nesterov_direction(grads[i], None)
        assert realized == ref_flips(w0, d, 1e-4, r.scale[i].item(), 4)
        assert ref_flips(w0, d, 1e-4, r.lo[i].item(), 4) <= realized <= ref_flips(w0, d, 1e-4, r.hi[i].item(), 4)
        if final == "upper":
            assert realized >= 1e-3
        near += abs(realized - 1e-3) * w0.numel() <= 3
    # Most tensors change within 3 codes of p·n. Not all: f jumps where a step moves a channel's
    # min or max, since the candidate is quantized on its own range (ait.md step 2), and that
    # channel's codes all shift at once (e.g. 577 of 36,864 where p·n = 37).
    assert near >= 11
    assert (r.natural < 1e-3).sum().item() >= 20 and (r.scale > 1).sum().item() >= 20  # GI enlarged most steps


@pytest.mark.parametrize("batched", [False, True])
def test_a_zero_direction_neither_hangs_nor_moves(batched):
    student, w = one_row([k / 15 for k in range(16)], [0.0] * 16, [0.0] * 16)
    opt = gi(student, threshold=0.5, batched=batched, max_doublings=40, capped_doublings=40)
    opt.start_epoch(Phase(9, False))
    before = w.detach().clone()
    opt.step()
    assert opt.last.scale.item() == 1.0 and opt.last.skipped.item() and not opt.last.limited.item()
    assert torch.equal(w.detach(), before)
    summary = opt.epoch_summary()
    assert summary["zero_direction"] == 1 and summary["steps"] == 1 and summary["scale_mean"] == 1.0


# --------------------------------------------------------------------------- schedule, resume


def test_threshold_and_cap_follow_the_epoch_and_survive_a_checkpoint(tmp_path):
    settings = dict(threshold=1e-3, threshold_decay=0.1, threshold_milestones=(3, 6), first_uncapped_epoch=2)
    student = quantized(Tiny())
    opt = gi(student, **settings)
    assert (opt.threshold, opt.capped) == (1e-3, True)  # the code's state at creation
    expected = {0: (1e-3, True), 1: (1e-3, True), 2: (1e-3, False), 3: (1e-4, False), 6: (1e-5, False)}
    for epoch, (p, capped) in expected.items():
        opt.start_epoch(Phase(epoch, False))
        assert opt.threshold == pytest.approx(p, rel=1e-12) and opt.capped is capped
    for prm in student.parameters():
        prm.grad = torch.ones_like(prm)
    opt.step()
    (tmp_path / "ckpt.pt").write_bytes(checkpoint.encode({"epoch": 6, "optimizer": opt.state_dict()}))
    saved = checkpoint.decode(tmp_path / "ckpt.pt")["optimizer"]  # torch.load(weights_only=True)
    resumed = gi(copy.deepcopy(student), **settings)
    assert resumed.threshold == 1e-3  # what a resume that forgot the state would continue with (T4)
    resumed.load_state_dict(saved)
    assert (resumed.epoch, resumed.threshold, resumed.capped) == (6, opt.threshold, False)
    buffers = [resumed.state[p]["momentum_buffer"] for g in resumed.param_groups for p in g["params"]]
    assert len(buffers) == 4 and all(torch.equal(b, torch.full_like(b, 1.0)) for b in buffers)


def test_trainer_tells_the_optimizer_the_epoch_and_records_it(plugins, tmp_path):
    spec = make_spec("gdfq", "ait", batch_size=2, epochs=3, warmup_epochs=1, lr_milestones=[2])
    parts = make_parts(plugins, spec, tmp_path / "cache")
    assert isinstance(parts.optimizer, GISGD)
    seen = []
    for epoch in range(3):
        phase = spec.budget.phase(epoch)
        with epoch_context(parts, phase):
            iterate(parts, phase)
        seen.append(optimizer_summary(parts))
    assert [(s["threshold"], s["capped"], s["steps"]) for s in seen] == [
        (1e-3, True, 0), (1e-3, True, 1), (pytest.approx(1e-4), False, 1)]
    assert seen[1]["scale_mean"] >= 1 and len(seen[1]["natural_flip_by_tensor"]) == 22


# ------------------------------------------------------------------------- the codes, the loss


def test_weight_codes_are_the_forward_quantizers_integer_stage():
    torch.manual_seed(0)
    quantizer = UniformQuantizer(UniformQuantizer.Options())
    w = torch.randn(8, 3, 3, 3)
    w[2] = 0.25  # a constant channel: range clamped to 1e-8
    for bits in (3, 4, 5):
        codes = quantizer.weight_codes(w, bits)
        assert torch.equal(codes, ref_codes(w, bits))
        rows = w.flatten(1)
        m, big_m = rows.min(1, keepdim=True).values, rows.max(1, keepdim=True).values
        s = (2**bits - 1) / torch.clamp(big_m - m, min=1e-8)
        z = torch.round(s * m) + 2 ** (bits - 1)
        dequantized = ((codes.flatten(1) + z) / s).view_as(w)
        assert torch.equal(quantize_weight(w, bits), dequantized)  # what the conv actually uses
        stack = torch.stack([w, w * 2 - 0.1, -w])
        stacked = quantizer.weight_codes(stack, bits, stacked=True)
        assert all(torch.equal(stacked[i], quantizer.weight_codes(stack[i], bits)) for i in range(3))
    assert codes.min().item() == -16 and codes.max().item() == 15


def test_ait_loss_is_kl_mean_for_gdfq_and_the_native_objective_otherwise(plugins, tmp_path):
    s = torch.tensor([[1.0, -2.0, 0.5], [0.0, 3.0, -1.0]], dtype=torch.float64)  # float64: the KL of near-uniform
    t = torch.tensor([[2.0, 0.0, -1.0], [1.0, 1.0, 1.0]], dtype=torch.float64)  # distributions is a small difference
    y = torch.tensor([0, 2])
    temperature = 20.0
    ps, pt = torch.softmax(s / temperature, 1), torch.softmax(t / temperature, 1)
    kl_mean = (pt * (pt.log() - ps.log())).sum().item() / 6  # ÷ B·C
    ce = -(torch.log_softmax(s, 1)[[0, 1], [0, 2]]).mean().item()
    from zsqbench.api import LossInputs
    for options, expected in (({}, 400 * kl_mean), ({"kd_weight": 2.0, "ce_weight": 0.5}, 800 * kl_mean + 0.5 * ce)):
        parts = make_parts(plugins, make_spec("gdfq", "ait", batch_size=2, loss_options=options), tmp_path / "c")
        assert parts.objective(LossInputs(s, t, y))["total"].item() == pytest.approx(expected, rel=1e-9)
    ada = make_parts(plugins, make_spec("adadfq", "ait", batch_size=2), tmp_path / "c")
    native = ada.generator.native_losses().objective(LossInputs(s, t, y))["total"]
    assert ada.objective(LossInputs(s, t, y))["total"].item() == native.item()
    assert not math.isclose(native.item(), 400 * kl_mean)


def test_ait_trains_without_weight_decay_under_every_bundled_preset(plugins):
    for preset in ("smoke", "cpu", "paper"):
        for generator in ("gdfq", "adadfq", "hast"):
            r = resolve_budget(plugins, preset, generator, "ait")
            assert r.optim.weight_decay == 0.0, (preset, generator)
            assert r.optim.student_lr == resolve_budget(plugins, preset, generator, "kd").optim.student_lr
    paper = resolve_budget(plugins, "paper", "gdfq", "ait").budget
    assert (paper.epochs, paper.iters_per_epoch, paper.batch_size, paper.warmup_epochs, paper.lr_milestones) == (
        400, 200, 200, 4, [100, 200, 300])


# ------------------------------------------------------------------------------------ errors


class NoCodes(Quantizer):
    """The uniform quantizer's student, without declaring integer codes."""

    name = "nocodes"
    description = "a quantizer that does not expose weight codes"

    def quantize(self, model, w_bits, a_bits):
        return UniformQuantizer(UniformQuantizer.Options()).quantize(model, w_bits, a_bits)

    def set_calibrating(self, student, enabled):
        UniformQuantizer(UniformQuantizer.Options()).set_calibrating(student, enabled)

    def is_calibrating(self, student):
        return UniformQuantizer(UniformQuantizer.Options()).is_calibrating(student)


class _NoCodesPlugin:
    @hookimpl
    def register_quantizers(self, register):
        register(NoCodes)


def test_a_quantizer_without_codes_is_refused_in_one_line(tmp_path):
    plugins = build_plugins(extra={"nocodes": _NoCodesPlugin()})
    request = GridRequest(generators=["gdfq"], losses=["kd", "ait"], bits="4", budget="smoke", quantizer="nocodes")
    env = Environment(data_root=tmp_path, device=torch.device("cpu"), cache_dir=tmp_path / "cache")
    for attempt in (lambda: expand(request, plugins, env),
                    lambda: make_parts(plugins, make_spec("gdfq", "ait").model_copy(
                        update={"quantizer": make_spec().quantizer.model_copy(update={"name": "nocodes"})}),
                        tmp_path / "cache")):
        with pytest.raises(UserError) as err:
            attempt()
        message = str(err.value)
        assert "\n" not in message and "nocodes" in message and "--quantizer uniform" in message
    make_parts(plugins, make_spec("gdfq", "kd").model_copy(  # other losses do not care
        update={"quantizer": make_spec().quantizer.model_copy(update={"name": "nocodes"})}), tmp_path / "cache")


@pytest.mark.parametrize("option,needle", [("ait.threshold=2", "threshold"), ("ait.final=best", "final"),
                                           ("ait.bisection_rounds=20", "bisection_rounds"),
                                           ("ait.capped_doublings=30", "capped_doublings")])
def test_bad_ait_options_exit_2_in_one_line(capsys, option, needle):
    err = one_line_error(capsys, ["run", "--generators", "gdfq", "--loss", "ait", "-o", option, "--dry-run"])
    assert needle in err


@pytest.mark.parametrize("generator", ["adadfq", "hast"])
def test_gi_alone_trains_generators_with_their_own_step(plugins, tmp_path, generator):
    """AdaDFQ (its own step, shared forward) and HAST (its own student step) reach the GI optimizer
    through StudentUpdate; AIT keeps their native objective and its feature taps."""
    small = {"num_images": 4, "synthesis_batch": 4, "synthesis_iters": 1, "calibration_batch": 2}
    spec = make_spec(generator, "ait", batch_size=2, generator_options=small if generator == "hast" else None)
    parts = make_parts(plugins, spec, tmp_path / "cache")
    assert parts.objective.feature_taps == parts.generator.native_losses().objective.feature_taps
    parts.generator.prepare()
    for epoch in range(2):
        phase = spec.budget.phase(epoch)
        with epoch_context(parts, phase):
            iterate(parts, phase)
    assert optimizer_summary(parts)["steps"] >= 1 and parts.optimizer.last.scale.min().item() >= 1


def test_a_resumed_ait_trial_continues_bit_for_bit(plugins, tmp_path):
    """Epochs 0-3 at once vs epochs 0-1, a checkpoint through the file format (weights_only), fresh
    parts, epochs 2-3: the same student, with the threshold decayed at epoch 2 and the cap lifted."""
    spec = make_spec("gdfq", "ait", batch_size=2, epochs=4, warmup_epochs=1, iters_per_epoch=1, lr_milestones=[2])

    def train(parts, epochs):
        for epoch in epochs:
            phase = spec.budget.phase(epoch)
            with epoch_context(parts, phase):
                iterate(parts, phase)

    whole = make_parts(plugins, spec, tmp_path / "cache")
    train(whole, range(4))
    first = make_parts(plugins, spec, tmp_path / "cache")
    train(first, range(2))
    (tmp_path / "ckpt.pt").write_bytes(checkpoint.encode({
        "epoch": 1, "student": first.ctx.student.state_dict(), "optimizer": first.optimizer.state_dict(),
        "generator": first.generator.state_dict(), "rng": checkpoint.rng_state()}))
    saved = checkpoint.decode(tmp_path / "ckpt.pt")
    resumed = make_parts(plugins, spec, tmp_path / "cache")  # the same random teacher; the rest comes from the file
    resumed.ctx.student.load_state_dict(saved["student"])
    resumed.optimizer.load_state_dict(saved["optimizer"])
    resumed.generator.load_state_dict(saved["generator"])
    checkpoint.set_rng_state(saved["rng"])
    assert (resumed.optimizer.threshold, resumed.optimizer.capped) == (1e-3, True)
    train(resumed, range(2, 4))
    assert (resumed.optimizer.threshold, resumed.optimizer.capped) == (pytest.approx(1e-4), False)
    a, b = whole.ctx.student.state_dict(), resumed.ctx.student.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_epoch_summary_averages_each_tensors_own_searches():
    torch.manual_seed(0)
    student = quantized(Tiny())
    opt = gi(student, threshold=0.2, first_uncapped_epoch=0)
    opt.start_epoch(Phase(1, False))
    scales = []
    for step in range(3):
        for prm in student.parameters():
            prm.grad = torch.randn_like(prm) * 1e-2
        if step == 2:
            student.fc.weight.grad = None  # not searched (nor stepped) in this step
        opt.step()
        scales.append(opt.last.scale.tolist())
    conv, fc = [s[0] for s in scales], [s[1] for s in scales[:2]]
    summary = opt.epoch_summary()
    assert summary["scale_mean_by_tensor"] == {"conv.weight": pytest.approx(sum(conv) / 3),
                                               "fc.weight": pytest.approx(sum(fc) / 2)}
    assert summary["scale_mean"] == pytest.approx(sum(conv + fc) / 5) and summary["scale_max"] == max(conv + fc)
    assert len(set(conv + fc)) > 1 and opt.epoch_summary()["steps"] == 0  # the next epoch starts afresh
