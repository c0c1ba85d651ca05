"""The deployable profiles ort-int8 and ort-int4w (docs/deployment.md#deployable-profiles): where the
integer path's rules go in ResNet-20, that the student computes what an integer convolution computes
(BN folded into the weights, int32 bias at s_x·s_w, 8-bit inputs and outputs), that γ, β and the weights
train through the fold, that what the integer path cannot execute is refused in one line while planning,
and that every generator and loss runs under them."""

from __future__ import annotations

import copy
import re

import pytest
import torch
from conftest import make_parts, make_spec, one_line_error, run_argv
from torch import nn

from zsqbench.api.options import fill_options
from zsqbench.api.plugins import build_plugins
from zsqbench.api.spec import PluginChoice
from zsqbench.errors import UserError
from zsqbench.grid.budgets import smoke_generator_options
from zsqbench.trial.step import epoch_context, iterate
from zsqbench_plugins.quantizers._deploy import DeployConv2d, DeployLinear, FoldedBatchNorm
from zsqbench_plugins.quantizers._fake_quant import symmetric_weight_grid
from zsqbench_plugins.quantizers._modules import QuantAct, QuantizedActivation
from zsqbench_plugins.quantizers.uniform import UniformOptions, UniformQuantizer

PLUGINS = build_plugins()
DEPLOYABLE = ("ort-int8", "ort-int4w")


def _student(plugins, profile: str = "ort-int8", bits: int = 4) -> tuple[UniformQuantizer, nn.Module, nn.Module]:
    torch.manual_seed(0)
    teacher = plugins.models.get("resnet20_cifar10").build().eval()
    for m in teacher.modules():  # BN statistics of a trained network's order, not the fixture's 0/1
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    quantizer = UniformQuantizer(UniformOptions(profile=profile, range_tracking="minmax"))
    student = quantizer.quantize(copy.deepcopy(teacher), bits, bits).eval()
    with quantizer.calibrating(student, True), torch.no_grad():
        student(torch.randn(8, 3, 32, 32))
    quantizer.set_calibrating(student, False)
    return quantizer, student, teacher


def test_deployable_profiles_are_named_options_and_the_default_stays_out_of_the_id():
    for name in DEPLOYABLE:
        assert fill_options(UniformQuantizer, {"profile": name}, "quantizer", "uniform")["profile"] == name
        described = UniformQuantizer.describe_protocol({"profile": name})
        assert described["backend"] == "onnxruntime" and "folded" in described["batch_norm"]
        assert "8 bits" in described["input"] and described["weight_symmetric"] is True
    assert "profile" not in fill_options(UniformQuantizer, {}, "quantizer", "uniform")


def test_the_default_profile_is_the_quantizer_as_it_was(plugins):
    """No fold, no added quantizer, and activation grids on the tracked range itself (the same tensors, so
    the same operations: tests/trial/test_regression.py and tests/api/test_trial_ids.py hold the numbers)."""
    quantizer = UniformQuantizer(UniformOptions())
    student = quantizer.quantize(copy.deepcopy(plugins.models.get("resnet20_cifar10").build()), 4, 4)
    assert not any(isinstance(m, (DeployConv2d, DeployLinear, FoldedBatchNorm)) for m in student.modules())
    acts = [m for m in student.modules() if isinstance(m, QuantAct)]
    assert len(acts) == 19 and not any(m.include_zero for m in acts)
    assert all(m.grid_range()[0] is m.x_min and m.grid_range()[1] is m.x_max for m in acts)


def test_resnet20_under_ort_int8_gets_the_integer_paths_quantizers_where_an_integer_conv_needs_them(plugins):
    _, student, teacher = _student(plugins)
    convs = {n: m for n, m in student.named_modules() if isinstance(m, DeployConv2d)}
    assert len(convs) == 21 and isinstance(student.output, DeployLinear)
    assert sum(isinstance(m, FoldedBatchNorm) for m in student.modules()) == 21  # every BN folded
    # the FP module names (and state_dict keys) are the teacher's, plus the new quantizers' buffers
    assert {n for n, _ in teacher.named_parameters()} == {n for n, _ in student.named_parameters()}
    own_out = sorted(n for n, m in convs.items() if m.output_quant is not None)
    assert len(own_out) == 11 and all(n.endswith(("body.conv2.conv", "identity_conv.conv")) for n in own_out)
    own_in = sorted(n for n, m in student.named_modules() if isinstance(m, (DeployConv2d, DeployLinear))
                    and m.input_quant is not None)
    assert own_in == ["features.init_block.conv", "output"]  # the network input and the pooled features
    added = [m for m in student.modules() if isinstance(m, QuantAct) and m.a_bits == 8]
    assert len(added) == 13 and all(m.include_zero for m in student.modules() if isinstance(m, QuantAct))
    assert sum(isinstance(m, QuantizedActivation) for m in student.modules()) == 19
    conv2 = student.get_submodule("features.stage1.unit2.body.conv2.conv")
    assert conv2.source_path == "features.stage1.unit2.body.conv1.activ.quant"
    assert conv2.source is student.get_submodule(conv2.source_path)


def test_a_folded_conv_computes_the_integer_convolution_in_float(plugins):
    """conv(x̂, q_w/S_w) + q_b/(S_x·S_w), with q_w the symmetric codes of w·γ/σ and q_b = round((β − μγ/σ)·S_x·S_w):
    the student's layer is that, to float rounding."""
    _, student, teacher = _student(plugins)
    path = "features.stage1.unit1.body.conv1"
    conv, bn = student.get_submodule(f"{path}.conv"), teacher.get_submodule(f"{path}.bn")
    a = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
    folded_w = teacher.get_submodule(f"{path}.conv").weight * a.view(-1, 1, 1, 1)
    folded_b = bn.bias - bn.running_mean * a
    q, S_w, _ = symmetric_weight_grid(folded_w, 4)
    assert q.abs().max() <= 7 and torch.equal(q.abs().amax(dim=(1, 2, 3)), torch.full((16,), 7))
    source = conv.source
    lo, hi = source.grid_range()
    S_x = 15 / (hi - lo)
    q_b = torch.round(folded_b * S_x * S_w)
    x = torch.randn(2, 16, 32, 32).clamp(min=0)
    with torch.no_grad():
        x_hat = source(x)
        expected = nn.functional.conv2d(x_hat, q.float() / S_w.view(-1, 1, 1, 1), q_b / (S_x * S_w), padding=1)
        torch.testing.assert_close(conv(x_hat), expected, rtol=1e-5, atol=1e-5)
        assert torch.equal(student.get_submodule(f"{path}.bn")(expected), expected)  # the BN passes it on


def test_gamma_beta_and_weights_train_through_the_fold_and_the_statistics_stay_frozen(plugins):
    _, student, _ = _student(plugins)
    bn = student.get_submodule("features.stage2.unit1.body.conv1.bn")
    conv = student.get_submodule("features.stage2.unit1.body.conv1.conv")
    stats = (bn.running_mean.clone(), bn.running_var.clone())
    for p in student.parameters():
        p.requires_grad_(True)
    student(torch.randn(2, 3, 32, 32)).square().sum().backward()
    assert bn.weight.grad.abs().sum() > 0 and bn.bias.grad.abs().sum() > 0 and conv.weight.grad.abs().sum() > 0
    assert torch.equal(bn.running_mean, stats[0]) and torch.equal(bn.running_var, stats[1])


def test_weight_codes_count_the_same_changes_as_the_folded_codes(plugins):
    """AIT counts changed codes of the latent weight; a per-channel positive fold factor leaves symmetric
    per-channel codes as they are (a negative γ flips a channel's signs, which changes no count)."""
    quantizer, student, _ = _student(plugins, bits=4)
    conv = student.get_submodule("features.stage3.unit2.body.conv1.conv")
    folded, _ = conv.folded()
    assert (quantizer.weight_codes(conv.weight, 4) != symmetric_weight_grid(folded, 4)[0]).float().mean() < 1e-3


def test_integer_layers_list_each_layer_as_one_integer_operator(plugins):
    quantizer, student, _ = _student(plugins)
    ops = [x for x in quantizer.integer_layers(student) if hasattr(x, "codes")]
    assert len(ops) == 22 and all(op.input and op.bias_codes is not None for op in ops)
    assert [op.output for op in ops if op.output is None] == [None]  # the classifier: float logits
    stem = ops[0]
    assert stem.absorbed == ("features.init_block.bn", "features.init_block.activ")
    assert stem.output == "features.init_block.activ.quant" and stem.input == "features.init_block.conv.input_quant"


@pytest.mark.parametrize("profile, bits, needle", [
    ("ort-int4w", "8", "ort-int4w executes at most 4-bit weights and 8-bit activations exactly; W8A8 is not "
                       "deployable there (use ort-int8)"),
    ("ort-int4w", "5/8", "W5A8 is not deployable"),
])
def test_what_the_integer_path_cannot_execute_is_refused_before_any_trial(tiny, tmp_path, capsys, profile, bits, needle):
    root, weights = tiny
    out = tmp_path / "results"
    err = one_line_error(capsys, run_argv(root, weights, out, "--generators", "gdfq", "--loss", "kd", "--bits", bits,
                                          "--budget", "smoke", "-o", f"uniform.profile={profile}", "--dry-run"))
    assert "quantizer 'uniform' refuses model resnet20_cifar10" in err and needle in err
    assert not out.exists()


class _PreActivation(nn.Module):
    """BN → ReLU → conv: a BN no convolution precedes, which cannot be folded into integer weights."""

    def __init__(self) -> None:
        super().__init__()
        self.conv0 = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.relu = nn.ReLU()
        self.conv = nn.Conv2d(4, 4, 3)
        self.bn2 = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv0(x)
        x = self.conv(self.relu(self.bn(x) + x))
        return self.fc(self.bn2(x).mean((2, 3)))


class _WithPReLU(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.act = nn.PReLU()
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.act(self.conv(x)).mean((2, 3)))


@pytest.mark.parametrize("model, needle", [
    (_PreActivation, "BatchNorm bn does not directly follow a convolution whose output only it reads"),
    (_WithPReLU, "module act (PReLU) is not an operator the integer path executes exactly"),
])
def test_a_model_the_integer_path_cannot_execute_is_refused_in_one_line_also_on_the_meta_device(model, needle):
    quantizer = UniformQuantizer(UniformOptions(profile="ort-int8"))
    with torch.device("meta"):
        network = model()
    with pytest.raises(UserError, match=re.escape(needle)):
        quantizer.quantize(network, 8, 8)


def test_quantize_outputs_is_refused_under_a_deployable_profile(plugins):
    quantizer = UniformQuantizer(UniformOptions(profile="ort-int8", quantize_outputs=("features.stage1.*.body",)))
    with pytest.raises(UserError, match="places its own output quantizers"):
        quantizer.quantize(plugins.models.get("resnet20_cifar10").build(), 8, 8)


# ---------------------------------------------------------------- every method runs under them


def _deployable(spec, profile: str = "ort-int8"):
    return spec.model_copy(update={"quantizer": PluginChoice(name="uniform", options={"profile": profile})})


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("generator", PLUGINS.generators.names())
def test_every_generator_trains_a_student_under_ort_int8(tmp_path, generator):
    options = smoke_generator_options(PLUGINS, generator, "kd")
    spec = make_spec(generator, "kd", batch_size=2, generator_options=options, epochs=2, iters_per_epoch=1)
    cls = PLUGINS.generators.get(generator)
    if cls.budget_problem(cls.Options(**spec.generator.options), spec):
        pytest.skip(f"{generator} is post-training only at this budget")
    parts = make_parts(PLUGINS, _deployable(spec), tmp_path / "cache")
    parts.generator.prepare()
    student = parts.ctx.student
    assert sum(isinstance(m, DeployConv2d) for m in student.modules()) == 21
    bn = student.get_submodule("features.init_block.bn")
    gamma = bn.weight.detach().clone()
    for epoch in range(spec.budget.epochs):
        phase = spec.budget.phase(epoch)
        with epoch_context(parts, phase):
            terms = iterate(parts, phase)
    assert torch.isfinite(terms["total"]) and not torch.equal(gamma, bn.weight.detach())  # γ trained


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("loss", PLUGINS.losses.names())
@pytest.mark.parametrize("profile", DEPLOYABLE)
def test_every_loss_trains_a_student_under_the_deployable_profiles(tmp_path, loss, profile):
    parts = make_parts(PLUGINS, _deployable(make_spec("gdfq", loss, batch_size=2), profile), tmp_path / "cache")
    phase = parts.ctx.spec.budget.first_training_phase
    with parts.quantizer.calibrating(parts.ctx.student, True), torch.no_grad():
        parts.ctx.student(torch.randn(2, 3, 32, 32))
    with epoch_context(parts, phase):
        terms = iterate(parts, phase)
    assert "total" in terms and torch.isfinite(terms["total"])
