"""Attention feature-distillation losses `spatial`, `channel` and `akt` (docs/methods/akt.md, spatial.md,
channel.md).

Golden values are worked out by hand below (math.exp / math.log on written-out numbers),
never by calling the implementation. The toy maps, (C = 2, H = W = 2):

sample 0  teacher ch0 = [[1, 1], [1, 1]]   ch1 = [[1, 3], [1, 1]]
          student ch0 = [[2, 0], [0, 0]]   ch1 = [[0, 0], [0, -2]]
sample 1  teacher ch0 = [[2, 0], [0, 0]]   ch1 = [[0, 0], [0, 0]]
          student ch0 = [[1, 1], [1, 1]]   ch1 = [[1, 1], [1, 1]]
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from conftest import make_spec
from torch import Tensor

from zsqbench.api import LossInputs, NativeLosses, StudentObjective, TeacherModel
from zsqbench.errors import UserError
from zsqbench.runs.environment import Environment
from zsqbench.trial.step import epoch_context
from zsqbench.trial.trainer import run_trial
from zsqbench_plugins.losses._feature import (
    AttentionDistillationLoss,
    attention_kl,
    channel_attention,
    spatial_attention,
    square_means,
)
from zsqbench_plugins.losses.akt import AKTLoss
from zsqbench_plugins.losses.channel import ChannelLoss
from zsqbench_plugins.losses.spatial import SpatialLoss

TAU = 8.0
E = math.e

TEACHER = torch.tensor(
    [
        [[[1.0, 1.0], [1.0, 1.0]], [[1.0, 3.0], [1.0, 1.0]]],
        [[[2.0, 0.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]]],
    ]
)
STUDENT = torch.tensor(
    [
        [[[2.0, 0.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, -2.0]]],
        [[[1.0, 1.0], [1.0, 1.0]], [[1.0, 1.0], [1.0, 1.0]]],
    ]
)

# ---- spatial attention by hand: mean over channels of F², then L2 normalization
# sample 0 teacher: squares ch0 = 1,1,1,1; ch1 = 1,9,1,1 -> mean [1, 5, 1, 1], norm √28
SP_T0 = [1 / math.sqrt(28), 5 / math.sqrt(28), 1 / math.sqrt(28), 1 / math.sqrt(28)]
# sample 0 student: squares ch0 = 4,0,0,0; ch1 = 0,0,0,4 -> mean [2, 0, 0, 2], norm √8
SP_Q0 = [2 / math.sqrt(8), 0.0, 0.0, 2 / math.sqrt(8)]
# sample 1 teacher: mean [2, 0, 0, 0] -> [1, 0, 0, 0]; student: mean [1, 1, 1, 1] -> each 1/2
SP_T1 = [1.0, 0.0, 0.0, 0.0]
SP_Q1 = [0.5, 0.5, 0.5, 0.5]

# ---- channel attention by hand: softmax over channels of the mean over H, W of F²
# sample 0 teacher: means [1, 3] -> [e/(e+e³), e³/(e+e³)]; student: means [1, 1] -> [1/2, 1/2]
CH_T0 = [E / (E + E**3), E**3 / (E + E**3)]
CH_Q0 = [0.5, 0.5]
# sample 1 teacher: means [1, 0] -> [e/(e+1), 1/(e+1)]; student: means [1, 1] -> [1/2, 1/2]
CH_T1 = [E / (E + 1), 1 / (E + 1)]
CH_Q1 = [0.5, 0.5]


def soft(values: list[float], tau: float = TAU) -> list[float]:
    """softmax(v/τ), written out."""
    exps = [math.exp(v / tau) for v in values]
    return [e / sum(exps) for e in exps]


def kl(p: list[float], q: list[float]) -> float:
    """KL(p ‖ q) = Σ p (log p − log q), written out."""
    return sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q))


# Spatial KL, sample 0, written out: softmax(a/8) of each side, then Σ p_T log(p_T/p_Q).
_Z_T0 = 3 * math.exp(1 / math.sqrt(28) / 8) + math.exp(5 / math.sqrt(28) / 8)
_P_T0 = [math.exp(1 / math.sqrt(28) / 8) / _Z_T0, math.exp(5 / math.sqrt(28) / 8) / _Z_T0] + [
    math.exp(1 / math.sqrt(28) / 8) / _Z_T0
] * 2
_Z_Q0 = 2 * math.exp(1 / math.sqrt(2) / 8) + 2 * math.exp(0.0)
_P_Q0 = [math.exp(1 / math.sqrt(2) / 8) / _Z_Q0, 1 / _Z_Q0, 1 / _Z_Q0, math.exp(1 / math.sqrt(2) / 8) / _Z_Q0]
KL_SP0 = sum(pt * math.log(pt / pq) for pt, pq in zip(_P_T0, _P_Q0))
# Sample 1: p_Q is uniform (1/4 each), p_T = [e^(1/8), 1, 1, 1] / (e^(1/8) + 3).
_Z_T1 = math.exp(1 / 8) + 3
KL_SP1 = (math.exp(1 / 8) / _Z_T1) * math.log(4 * math.exp(1 / 8) / _Z_T1) + 3 * (1 / _Z_T1) * math.log(4 / _Z_T1)
# Channel KL, double softmax: Ch already is a softmax; it is softmaxed again after /τ.
# Student side is uniform in both samples, so KL = Σ p_T log(2 p_T).
_C0 = [math.exp(CH_T0[0] / 8), math.exp(CH_T0[1] / 8)]
KL_CH0 = sum(c / sum(_C0) * math.log(2 * c / sum(_C0)) for c in _C0)
_C1 = [math.exp(CH_T1[0] / 8), math.exp(CH_T1[1] / 8)]
KL_CH1 = sum(c / sum(_C1) * math.log(2 * c / sum(_C1)) for c in _C1)
# What a single softmax (mean energies [1, 3] softmaxed once at τ) would give instead.
KL_CH0_SINGLE = kl(soft([1.0, 3.0]), [0.5, 0.5])


def approx(x: float, rel: float = 1e-9):
    return pytest.approx(x, rel=rel, abs=1e-15)


# --------------------------------------------------------------------- golden values


def test_hand_arithmetic_is_consistent():
    """The written-out KLs agree with the generic helpers (guards the arithmetic itself)."""
    assert KL_SP0 == approx(kl(soft(SP_T0), soft(SP_Q0)))
    assert KL_SP1 == approx(kl(soft(SP_T1), soft(SP_Q1)))
    assert KL_CH0 == approx(kl(soft(CH_T0), soft(CH_Q0)))
    assert KL_CH1 == approx(kl(soft(CH_T1), soft(CH_Q1)))
    assert KL_CH0 != approx(KL_CH0_SINGLE, rel=1e-3)


def test_spatial_attention_golden():
    sp_t, sp_q = spatial_attention(TEACHER.double()), spatial_attention(STUDENT.double())
    assert sp_t.shape == (2, 4)
    assert sp_t[0].tolist() == [approx(v) for v in SP_T0]
    assert sp_q[0].tolist() == [approx(v) for v in SP_Q0]
    assert sp_t[1].tolist() == [approx(v) for v in SP_T1]
    assert sp_q[1].tolist() == [approx(v) for v in SP_Q1]
    # eps keeps an all-zero map finite (F.normalize semantics)
    assert torch.equal(spatial_attention(torch.zeros(1, 2, 2, 2)), torch.zeros(1, 4))


def test_channel_attention_golden():
    ch_t, ch_q = channel_attention(TEACHER.double()), channel_attention(STUDENT.double())
    assert ch_t.shape == (2, 2)
    assert ch_t[0].tolist() == [approx(v) for v in CH_T0]
    assert ch_q[0].tolist() == [approx(v) for v in CH_Q0]
    assert ch_t[1].tolist() == [approx(v) for v in CH_T1]
    assert ch_q[1].tolist() == [approx(v) for v in CH_Q1]


def test_attention_kl_golden_direction_and_double_softmax():
    kl_sp = attention_kl(spatial_attention(TEACHER), spatial_attention(STUDENT), TAU)
    kl_ch = attention_kl(channel_attention(TEACHER), channel_attention(STUDENT), TAU)
    assert kl_sp.shape == (2,) and kl_sp.dtype == torch.float32
    assert kl_sp.tolist() == [approx(KL_SP0, 1e-5), approx(KL_SP1, 1e-5)]
    assert kl_ch.tolist() == [approx(KL_CH0, 1e-5), approx(KL_CH1, 1e-5)]
    assert kl_ch[0].item() != approx(KL_CH0_SINGLE, 1e-3)  # the inner softmax is really applied
    # direction teacher ‖ student: swapping the arguments changes the value
    swapped = attention_kl(spatial_attention(STUDENT), spatial_attention(TEACHER), TAU)
    assert swapped[0].item() != approx(KL_SP0, 1e-3)
    # identical maps -> exactly 0
    same = attention_kl(spatial_attention(TEACHER), spatial_attention(TEACHER), TAU)
    assert same.tolist() == [0.0, 0.0]


# ------------------------------------------------------------------ the loss plugins

TOY = TeacherModel(
    name="toy", description="", arch="toy", dataset="toy", num_classes=2, build=lambda: None, weights=(),
    feature_taps={"default": ("m1", "m2"), "last_per_stage": ("m2",)},
)
NATIVE_LOGIT = 7.0


def _native() -> NativeLosses:
    def logit(student_logits: Tensor, teacher_logits: Tensor, labels: Tensor) -> Tensor:
        return torch.tensor(NATIVE_LOGIT) + 0 * student_logits.sum()

    return NativeLosses(logit=logit, objective=None)  # type: ignore[arg-type]


def _build(cls, **options):
    return cls(cls.Options(**options), _native(), TOY)


def _inputs(batch: slice = slice(0, 2), reverse_student: bool = False) -> LossInputs:
    """Map m1 = the toy maps, m2 = the toy maps with teacher and student swapped."""
    t, s = TEACHER[batch], STUDENT[batch]
    student = {"m1": s, "m2": t}
    if reverse_student:  # insertion order must not matter: pairing is by path
        student = {"m2": t, "m1": s}
    logits = torch.zeros(t.shape[0], 2)
    return LossInputs(logits, logits, torch.zeros(t.shape[0], dtype=torch.long), student, {"m1": t, "m2": s})


# m2 swaps teacher and student, so its KLs are the reverse direction; computed by hand too.
KL_SP0_REV = kl(soft(SP_Q0), soft(SP_T0))
KL_SP1_REV = kl(soft(SP_Q1), soft(SP_T1))
KL_CH0_REV = kl(soft(CH_Q0), soft(CH_T0))
KL_CH1_REV = kl(soft(CH_Q1), soft(CH_T1))
M1_SP, M1_CH = KL_SP0 + KL_SP1, KL_CH0 + KL_CH1  # batch sum
M2_SP, M2_CH = KL_SP0_REV + KL_SP1_REV, KL_CH0_REV + KL_CH1_REV


def test_akt_code_defaults_golden():
    loss = _build(AKTLoss)
    assert loss.feature_taps == ("m1", "m2")
    terms = loss(_inputs())
    assert set(terms) == {"total", "logit", "feature", "spatial", "channel"}
    # λ = 1000, sum over maps, sum over batch, no τ², L = L_logit + L_RFD
    assert terms["spatial"].item() == approx(1000 * (M1_SP + M2_SP), 1e-5)
    assert terms["channel"].item() == approx(1000 * (M1_CH + M2_CH), 1e-5)
    assert terms["feature"].item() == approx(1000 * (M1_SP + M2_SP + M1_CH + M2_CH), 1e-5)
    assert terms["logit"].item() == NATIVE_LOGIT
    assert terms["total"].item() == approx(NATIVE_LOGIT + terms["feature"].item(), 1e-6)


def test_spatial_and_channel_are_the_akt_branches():
    inputs = _inputs()
    akt, sp, ch = _build(AKTLoss)(inputs), _build(SpatialLoss)(inputs), _build(ChannelLoss)(inputs)
    assert set(sp) == set(ch) == {"total", "logit", "feature"}
    assert sp["feature"].item() == approx(1000 * (M1_SP + M2_SP), 1e-5)
    assert ch["feature"].item() == approx(1000 * (M1_CH + M2_CH), 1e-5)
    assert sp["feature"].item() == approx(akt["spatial"].item(), 1e-6)
    assert ch["feature"].item() == approx(akt["channel"].item(), 1e-6)


def test_pairing_is_by_path_not_order_and_missing_maps_fail():
    loss = _build(AKTLoss)
    assert loss(_inputs(reverse_student=True))["feature"].item() == approx(loss(_inputs())["feature"].item(), 1e-7)
    broken = _inputs()
    del broken.teacher_features["m2"]
    with pytest.raises(RuntimeError, match="m2"):
        loss(broken)


def test_map_reduction_mean_is_sum_over_n():
    n = 2
    s = _build(AKTLoss)(_inputs())["feature"].item()
    m = _build(AKTLoss, map_reduction="mean")(_inputs())["feature"].item()
    assert m == approx(s / n, 1e-6)
    assert m == approx(1000 / n * (M1_SP + M2_SP + M1_CH + M2_CH), 1e-5)


def test_batch_reduction_mean_is_sum_over_b():
    b = 2
    s = _build(ChannelLoss)(_inputs())["feature"].item()
    m = _build(ChannelLoss, batch_reduction="mean")(_inputs())["feature"].item()
    assert m == approx(s / b, 1e-6)
    assert m == approx(1000 * (M1_CH + M2_CH) / b, 1e-5)
    one = _build(ChannelLoss)(_inputs(slice(0, 1)))["feature"].item()  # B = 1: sum == mean
    assert one == approx(1000 * (KL_CH0 + KL_CH0_REV), 1e-5)


def test_akt_alpha_half_halves_the_code_sum():
    code = _build(AKTLoss)(_inputs())
    paper = _build(AKTLoss, akt_alpha=0.5)(_inputs())
    assert paper["total"].item() == approx(0.5 * code["total"].item(), 1e-6)
    assert paper["feature"].item() == approx(code["feature"].item(), 1e-7)  # terms are reported unweighted
    weighted = _build(AKTLoss, akt_alpha=0.25)(_inputs())
    assert weighted["total"].item() == approx(0.25 * NATIVE_LOGIT + 0.75 * code["feature"].item(), 1e-6)


def test_lam_tau_and_taps_options():
    base = _build(SpatialLoss)(_inputs())["feature"].item()
    assert _build(SpatialLoss, lam=1.0)(_inputs())["feature"].item() == approx(base / 1000, 1e-6)
    assert _build(SpatialLoss, tau=1.0)(_inputs())["feature"].item() == approx(
        1000 * (kl(soft(SP_T0, 1), soft(SP_Q0, 1)) + kl(soft(SP_T1, 1), soft(SP_Q1, 1))
                + kl(soft(SP_Q0, 1), soft(SP_T0, 1)) + kl(soft(SP_Q1, 1), soft(SP_T1, 1))), 1e-5)
    last = _build(SpatialLoss, taps="last_per_stage")
    assert last.feature_taps == ("m2",)
    assert last(_inputs())["feature"].item() == approx(1000 * M2_SP, 1e-5)
    with pytest.raises(UserError, match="last_per_stage"):
        _build(SpatialLoss, taps="nope")


def test_per_map_terms_add_up_to_feature():
    terms = _build(AKTLoss, per_map=True, map_reduction="mean")(_inputs())
    assert terms["feature/m1"].item() == approx(1000 / 2 * (M1_SP + M1_CH), 1e-5)
    assert terms["feature/m2"].item() == approx(1000 / 2 * (M2_SP + M2_CH), 1e-5)
    assert (terms["feature/m1"] + terms["feature/m2"]).item() == approx(terms["feature"].item(), 1e-6)


def test_logit_kl_option_golden():
    # t/20 = [ln 3, 0] -> p_T = [3/4, 1/4]; s = 0 -> p_Q = [1/2, 1/2]; T² · KL, batchmean.
    loss = _build(SpatialLoss, logit="kl")
    inputs = _inputs(slice(0, 1))
    inputs.teacher_logits = torch.tensor([[20 * math.log(3), 0.0]])
    expected = 400 * (0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5))
    assert loss(inputs)["logit"].item() == approx(expected, 1e-5)


def test_paper_mode_preset_and_explicit_override():
    o = AKTLoss.Options(mode="paper")
    assert (o.logit, o.akt_alpha, o.map_reduction, o.taps, o.batch_reduction, o.lam, o.tau) == (
        "kl", 0.5, "mean", "last_per_stage", "sum", 1000.0, 8.0)
    o2 = AKTLoss.Options(mode="paper", taps="default", akt_alpha=None)
    assert (o2.taps, o2.akt_alpha, o2.map_reduction) == ("default", None, "mean")
    # a stored spec (all keys dumped) re-validates to the same options
    assert AKTLoss.Options(**o.model_dump(mode="json")) == o
    c = AKTLoss.Options()
    assert (c.mode, c.logit, c.akt_alpha, c.map_reduction, c.taps) == ("code", "native", None, "sum", "default")


def test_registered_and_taps_resolved_from_the_model(plugins):
    assert {"spatial", "channel", "akt"} <= set(plugins.losses.names())
    entry = plugins.models.get("resnet20_cifar10")
    akt = plugins.losses.get("akt")
    nine = akt(akt.Options(), _native(), entry)
    three = akt(akt.Options(taps="last_per_stage"), _native(), entry)
    assert len(nine.feature_taps) == 9 and nine.feature_taps == entry.feature_taps["all_units"]
    assert three.feature_taps == ("features.stage1.unit3.body", "features.stage2.unit3.body",
                                  "features.stage3.unit3.body")


# ------------------------------------------------------------- one training iteration

GENERATORS = ["gdfq", "adadfq"]


def _parts_or_skip(plugins, tiny_parts, generator: str, **loss_options):
    if generator not in plugins.generators.names():
        pytest.skip(f"generator plugin '{generator}' is not registered yet")
    return tiny_parts(make_spec(generator=generator, loss="akt", batch_size=4, loss_options=loss_options))


def _calibrate(parts) -> None:
    """One warm-up forward so the student's activation ranges are non-degenerate."""
    with parts.quantizer.calibrating(parts.ctx.student, True), torch.no_grad():
        parts.ctx.student(torch.randn(4, 3, 32, 32))


@pytest.mark.parametrize("generator", GENERATORS)
def test_training_iteration_feature_gradient_reaches_student_convs(plugins, tiny_parts, generator):
    parts = _parts_or_skip(plugins, tiny_parts, generator)
    ctx, objective = parts.ctx, parts.objective
    assert ctx.teacher_taps.paths == ctx.student_taps.paths == objective.feature_taps
    _calibrate(parts)
    convs = {n: p for n, p in ctx.student.named_parameters() if n.endswith("conv.weight") and "body" in n}
    assert len(convs) == 18  # 9 units × conv1, conv2
    phase = ctx.spec.budget.first_training_phase
    with epoch_context(parts, phase):
        if generator == "gdfq":  # a batch with the teacher outputs of the generator step
            batch = parts.generator.next_batch(phase)
        else:  # AdaDFQ's step makes its batch internally: the images it trains on
            batch = parts.generator.sample(4)
            batch.x = batch.x.detach()
        # The feature term alone, on the trainer's inputs, must carry gradient into the student.
        if batch.teacher_logits is None:
            with torch.no_grad():
                t, t_feats = ctx.teacher_forward(batch.x)
        else:
            t, t_feats = batch.teacher_logits, batch.teacher_features or {}
        assert set(t_feats) == set(objective.feature_taps)
        assert all(not f.requires_grad for f in t_feats.values())
        s, s_feats = ctx.student_forward(batch.x)
        terms = objective(LossInputs(s, t, batch.y, s_feats, t_feats))
        assert torch.isfinite(terms["feature"]) and terms["feature"].item() > 0
        assert terms["spatial"].item() > 0 and terms["channel"].item() > 0
        grads = torch.autograd.grad(terms["feature"], list(convs.values()), allow_unused=True)
        for (name, _), g in zip(convs.items(), grads):
            if name.startswith("features.stage3.unit3"):  # last unit: its body output is a tap
                assert g is not None and g.abs().sum() > 0, name
        assert sum(int(g is not None and g.abs().sum() > 0) for g in grads) == len(convs)
        # and the real student step runs and changes the conv weights
        before = {n: p.detach().clone() for n, p in convs.items()}
        stepped = parts.generator.step(phase, parts.student_update)
    assert torch.isfinite(stepped["total"]) and stepped["feature"].item() > 0
    assert any(not torch.equal(before[n], p) for n, p in convs.items())


def test_hooks_leave_nothing_alive_after_evaluation(plugins, tiny_parts):
    parts = _parts_or_skip(plugins, tiny_parts, "gdfq")
    ctx = parts.ctx
    _calibrate(parts)
    phase = ctx.spec.budget.first_training_phase
    with epoch_context(parts, phase):
        assert ctx.teacher_taps.is_active and ctx.student_taps.is_active
        parts.generator.step(phase, parts.student_update)
    # evaluation forward outside active(): nothing fires, nothing is kept
    ctx.student.eval()
    with torch.no_grad():
        ctx.student(torch.randn(2, 3, 32, 32))
        ctx.teacher(torch.randn(2, 3, 32, 32))
    for taps in (ctx.teacher_taps, ctx.student_taps):
        assert not taps.is_active
        assert taps._captured == {}
        assert taps.take(detach=True) == {}
    for net in (ctx.teacher, ctx.student):
        assert all(len(m._forward_hooks) == 0 for m in net.modules())


# ------------------------------------------------------------- trainer diagnostics


class _Progress:
    def __init__(self) -> None:
        self.messages: list[str] = []

    def start(self, description: str, total: int) -> None:
        pass

    def advance(self, completed: int, info: str = "") -> None:
        pass

    def message(self, text: str) -> None:
        self.messages.append(text)


def _run_tiny_trial(plugins, tmp_path, monkeypatch):
    """run_trial on a random ResNet-20 with a fake test set (no data or weights needed)."""
    import zsqbench.trial.trainer as train_mod

    entry = plugins.models.get("resnet20_cifar10")
    labels = torch.zeros(2, dtype=torch.long)
    test = SimpleNamespace(labels=labels)

    class Resources:
        def test_set(self, name, env, progress=None):
            return test

        def inputs(self, test, teacher):
            return torch.zeros(2, 3, 32, 32)

        def fp_top1(self, test, teacher, model, env):
            return 10.0

    torch.manual_seed(0)
    monkeypatch.setattr(train_mod, "select_checkpoint", lambda *a, **k: None)
    monkeypatch.setattr(train_mod, "load_teacher",
                        lambda *a, **k: SimpleNamespace(module=entry.build(), expected_top1=None))
    monkeypatch.setattr(train_mod, "top1", lambda *a, **k: 10.0)
    spec = make_spec(generator="gdfq", loss="akt", batch_size=2, epochs=2, iters_per_epoch=1, warmup_epochs=1)
    progress = _Progress()
    env = Environment(data_root=tmp_path, device=torch.device("cpu"), cache_dir=tmp_path / "cache")
    outcome = run_trial(spec, plugins, env, progress, Resources())  # type: ignore[arg-type]
    return outcome, progress


def test_trainer_records_no_warning_for_a_working_feature_loss(plugins, tmp_path, monkeypatch):
    outcome, progress = _run_tiny_trial(plugins, tmp_path, monkeypatch)
    train = outcome.epochs[1]
    assert train.phase == "train" and train.losses["feature"] > 0
    assert all(e.warnings == [] for e in outcome.epochs)
    assert not any(m.startswith("warning") for m in progress.messages)


def test_trainer_warns_when_feature_term_is_exactly_zero(plugins, tmp_path, monkeypatch):
    def zero_terms(self, inputs):  # simulates broken pairing (the released code's D3)
        zero = 0 * inputs.student_logits.sum()
        return {b: {p: zero for p in self.feature_taps} for b in self.branches}

    monkeypatch.setattr(AttentionDistillationLoss, "map_terms", zero_terms)
    outcome, progress = _run_tiny_trial(plugins, tmp_path, monkeypatch)
    warmup, train = outcome.epochs
    assert warmup.warnings == []  # no student loss during warm-up, nothing to check
    assert train.losses["feature"] == 0.0
    assert len(train.warnings) == 1 and "exactly 0" in train.warnings[0]
    assert any(m.startswith("warning:") and "exactly 0" in m for m in progress.messages)


def test_feature_weight_reflects_alpha():
    assert _build(AKTLoss).feature_weight == 1000
    assert _build(AKTLoss, akt_alpha=0.5).feature_weight == 500
    assert _build(AKTLoss, lam=0).feature_weight == 0
    assert isinstance(_build(AKTLoss), StudentObjective)


@pytest.mark.parametrize("channels_last", [False, True])
def test_square_means_match_autograd_of_pow_mean_including_double_backward(channels_last):
    """The one-node attention energies give the values and (second) derivatives of
    ``F.pow(2).mean(dim=1)`` / ``.mean(dim=(2, 3))`` computed separately."""
    torch.manual_seed(0)
    f = torch.randn(3, 5, 4, 6, dtype=torch.float64)
    if channels_last:
        f = f.contiguous(memory_format=torch.channels_last)
    g_sp, g_ch = torch.randn(3, 4, 6, dtype=torch.float64), torch.randn(3, 5, dtype=torch.float64)

    def grads(fn):
        x = f.clone().requires_grad_(True)
        sp, ch = fn(x)
        (gx,) = torch.autograd.grad((sp * g_sp).sum() + (ch * g_ch).sum(), x, create_graph=True)
        (ggx,) = torch.autograd.grad((gx * gx).sum(), x)  # a Hessian-vector product through it
        return sp.detach(), ch.detach(), gx.detach(), ggx

    fused = grads(lambda x: square_means(x))
    reference = grads(lambda x: (x.pow(2).mean(dim=1), x.pow(2).mean(dim=(2, 3))))
    for a, b in zip(fused, reference):
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-12)
    # one branch alone: the other is empty and costs nothing
    sp_only, ch_none = square_means(f, channel=False)
    assert ch_none.numel() == 0 and torch.allclose(sp_only, reference[0])
