"""ZeroQ (docs/methods/zeroq.md) and PTQ-only trials (zeroq.md#post-training-only-trials): its loss and
init on hand values, the distilled set's cache, the variants' student losses, the PTQ path (no
optimizer step, each image fed once in order, the row labelled PTQ) and the one-line errors for
budgets it cannot run."""

from __future__ import annotations

import copy
import csv
import math

import pytest
import torch
from conftest import make_parts, make_spec, one_line_error
from support.data import write_random_weights, write_test_set
from support.leaderboard import fake_result, trial_row

from zsqbench.api.options import fill_options
from zsqbench.api.spec import PluginChoice
from zsqbench.errors import UserError
from zsqbench.grid.budgets import resolve_budget
from zsqbench.leaderboard.aggregate import aggregate
from zsqbench.leaderboard.rows import result_row
from zsqbench.toolkit.synthesis import batch_seed
from zsqbench.trial.step import epoch_context, iterate
from zsqbench_plugins.generators import zeroq as zeroq_module
from zsqbench_plugins.generators.zeroq import zeroq_init

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = {"synthesis_iters": 2, "calibration_batch": 2}


def ptq_spec(num_images: int = 6, batch: int = 4, **options):
    iters = math.ceil(num_images / batch)
    return make_spec("zeroq", batch_size=batch, epochs=1, warmup_epochs=1, iters_per_epoch=iters,
                     generator_options={"variant": "ptq", "num_images": num_images, "synthesis_batch": 4,
                                        **TINY, **options})


def ft_spec(**options):
    return make_spec("zeroq", batch_size=4, generator_options={"num_images": 6, "synthesis_batch": 4, **TINY,
                                                               **options})


class CountingSynthesis:
    def __init__(self, monkeypatch):
        self.calls = 0
        self.real = zeroq_module.optimize_pixels
        monkeypatch.setattr(zeroq_module, "optimize_pixels", self)

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.real(*args, **kwargs)


# ---------------------------------------------------------------------------------- synthesis


def test_code_init_is_tiny_uniform_noise_on_zeroqs_grid():
    x = zeroq_init(64, (3, 8, 8), torch.Generator().manual_seed(0), "code")
    k = x * 5418.75 + 127.5  # the integers U{0..254} back
    assert torch.allclose(k, k.round(), atol=1e-3) and k.round().min() >= 0 and k.round().max() <= 254
    assert x.abs().max().item() <= 127.5 / 5418.75 + 1e-9  # ±0.0235
    assert x.std().item() == pytest.approx(0.0136, abs=0.001)
    assert zeroq_init(64, (3, 8, 8), torch.Generator().manual_seed(0), "paper").std().item() == pytest.approx(1, abs=0.05)


def test_zeroq_loss_through_the_teacher_equals_section_2_2(tiny_parts):
    """L_ZQ = T_0 + Σ_l (1/B) Σ_b [‖m_{l,b} − μ̂_l‖² + ‖s_{l,b} − ŝ_l‖²] on the teacher's own BN inputs."""
    parts = tiny_parts(ptq_spec())
    teacher = parts.ctx.teacher
    bns = parts.generator.distilled.bns
    x = torch.randn(3, 3, 32, 32)
    inputs = []
    handles = [bn.register_forward_hook(lambda m, i, o: inputs.append((i[0], m))) for bn in bns.bns]
    with bns.recording(), torch.no_grad():
        teacher(x)
        got = bns.loss(x).item()
    for h in handles:
        h.remove()
    assert len(inputs) == 21

    def term(z, mu, var):
        n = z.shape[2] * z.shape[3]
        m = z.sum(dim=(2, 3)) / n
        s = (((z - m[..., None, None]) ** 2).sum(dim=(2, 3)) / (n - 1) + 1e-6).sqrt()
        return (((m - mu) ** 2).sum(1) + ((s - (var + 1e-6).sqrt()) ** 2).sum(1)).mean()

    expected = sum(term(z, bn.running_mean, bn.running_var) for z, bn in inputs)
    expected += term(x, torch.zeros(3), torch.full((3,), 1 - 1e-6))
    assert got == pytest.approx(expected.item(), rel=1e-5)


def test_distilled_set_is_cached_and_follows_its_settings(tiny_parts, monkeypatch):
    counter = CountingSynthesis(monkeypatch)
    first = tiny_parts(ft_spec()).generator
    first.prepare()
    assert counter.calls == 2 and first.images.shape == (6, 3, 32, 32)  # batches of 4 + 2
    with torch.no_grad():  # labels: the teacher's argmax (ZeroQ has none)
        assert torch.equal(first.labels, first.ctx.teacher(first.images).argmax(1))
    second = tiny_parts(ft_spec()).generator
    second.prepare()
    assert counter.calls == 2 and torch.equal(second.images, first.images)  # the cache, verified
    other = tiny_parts(ft_spec(init="paper")).generator
    assert other.distilled.cache().key != first.distilled.cache().key
    assert tiny_parts(ft_spec(variant="il_ft")).generator.distilled.cache().key != first.distilled.cache().key
    diagnostics = first.distilled.diagnostics
    assert diagnostics is not None and diagnostics.shape == (2, 2, 2)  # batches x (first, last) x (bn, total)


def test_the_bn_loss_falls_during_synthesis(tiny_parts):
    # a random teacher's statistics blow up under lr 0.5 steps from tiny noise; a small lr shows the descent
    gen = tiny_parts(ft_spec(synthesis_iters=15, synthesis_lr=0.05, num_images=4)).generator
    gen.prepare()
    (first, last), = gen.distilled.diagnostics[:, :, 0].tolist()
    assert last < 0.9 * first


@pytest.mark.realdata
def test_the_bn_loss_falls_substantially_on_the_real_teacher(tiny_parts, data_root):
    """The diagnostic of docs/methods/common.md#synthesis-diagnostics with the real (chenyaofo)
    CIFAR-10 teacher at ZeroQ's own lr 0.5."""
    gen = tiny_parts(ft_spec(synthesis_iters=60, num_images=8, synthesis_batch=8)).generator
    state = torch.load(data_root / "weights" / "resnet20_cifar10.pth", map_location="cpu", weights_only=True)
    gen.ctx.teacher.load_state_dict(state)
    gen.prepare()
    (first, last), = gen.distilled.diagnostics[:, :, 0].tolist()
    assert last < 0.1 * first


def test_variants_native_losses_hand_values(tiny_parts):
    s = torch.zeros(1, 2)
    t = torch.tensor([[20 * math.log(3.0), 0.0]])  # softmax(t/20) = (0.75, 0.25)
    kl = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    y = torch.tensor([1])
    ft = tiny_parts(ft_spec()).generator.native_losses().logit
    assert ft(s, t, y).item() == pytest.approx(8000 * kl, rel=1e-5)  # KD only
    il = tiny_parts(ft_spec(variant="il_ft")).generator.native_losses().logit
    assert il(s, t, y).item() == pytest.approx(8000 * kl + math.log(2), rel=1e-5)  # + CE(s, y)


def test_il_ft_keeps_its_random_labels(tiny_parts):
    gen = tiny_parts(ft_spec(variant="il_ft")).generator
    gen.prepare()
    rng = torch.Generator().manual_seed(batch_seed("zeroq-synthesis", 0, 0))  # batch 0, trial seed 0
    assert torch.equal(gen.labels[:4], torch.randint(0, 10, (4,), generator=rng))
    assert gen.distilled.diagnostics.shape[-1] == 3  # bn, ce, total


def test_calibration_distilled_calibrates_on_the_cached_distilled_images(tiny_parts, plugins, monkeypatch):
    """-o zeroq.calibration=distilled: the calibration epochs feed the distilled set (the cached one,
    calibration_batch images at a time, in order, wrapping, not augmented) instead of the scaffold's
    GDFQ-style generator; the default keeps the generator and every trial id."""
    counter = CountingSynthesis(monkeypatch)
    cached = tiny_parts(ft_spec()).generator
    assert cached.calibration is not None  # the default: the scaffold's calibration generator
    cached.prepare()
    parts = tiny_parts(ft_spec(calibration="distilled"))
    gen, ctx = parts.generator, parts.ctx
    assert gen.calibration is None and gen.networks() == {}
    gen.prepare()
    assert counter.calls == 2 and torch.equal(gen.images, cached.images)  # read from the cache
    seen = []
    handle = ctx.student.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach().clone()))
    phase = ctx.spec.budget.phase(0)
    assert phase.calibrating
    try:
        with epoch_context(parts, phase):
            for _ in range(4):
                assert iterate(parts, phase) == {}
    finally:
        handle.remove()
    images = cached.images
    assert torch.equal(seen[0], images[:2])  # the first calibration batch: the first cached distilled images
    assert torch.equal(torch.cat(seen), torch.cat([images, images[:2]]))  # in order, wrapping around the 6
    assert gen.state_dict()["calibration_pos"] == 2
    training = ctx.spec.budget.phase(1)
    with epoch_context(parts, training):
        assert "total" in iterate(parts, training)  # fine-tuning as with the default calibration
    filled = {name: fill_options(plugins.generators.get("zeroq"), {"calibration": name} if name else {},
                                 "generator", "zeroq") for name in ("", "generator", "distilled")}
    assert filled[""] == filled["generator"] and "calibration" not in filled[""]  # ids unchanged by default
    assert filled["distilled"]["calibration"] == "distilled"
    with pytest.raises(UserError, match="variant=ptq always calibrates on the distilled set"):
        fill_options(plugins.generators.get("zeroq"), {"variant": "ptq", "calibration": "distilled"}, "generator",
                     "zeroq")


# ----------------------------------------------------------------------------------- PTQ path


def test_ptq_feeds_each_image_once_in_order_and_never_steps(tiny_parts):
    parts = tiny_parts(ptq_spec())
    ctx, gen = parts.ctx, parts.generator
    assert gen.networks() == {} and gen.calibration is None  # calibrates on its own set
    gen.prepare()
    before = copy.deepcopy(ctx.student.state_dict())
    seen = []
    handle = ctx.student.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach().clone()))
    phase = ctx.spec.budget.phase(0)
    try:
        with epoch_context(parts, phase):
            for _ in range(ctx.spec.budget.iters_per_epoch):
                assert iterate(parts, phase) == {}
    finally:
        handle.remove()
    assert [len(b) for b in seen] == [4, 2] and torch.equal(torch.cat(seen), gen.images)
    assert parts.optimizer.state_dict()["state"] == {}  # zero optimizer steps
    after = ctx.student.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if not k.endswith(("x_min", "x_max", "beta_t", "updates")))
    assert any(not torch.equal(before[k], after[k]) for k in before if k.endswith("x_max"))  # ranges calibrated
    with pytest.raises(RuntimeError, match="exactly once|after all"):
        gen.next_batch(phase)


def test_ptq_budget_problems_are_user_errors(plugins, tmp_path):
    with pytest.raises(UserError, match="--budget ptq, or -o zeroq.variant=ft"):
        make_parts(plugins, make_spec("zeroq", generator_options={"variant": "ptq"}), tmp_path)
    with pytest.raises(UserError, match="--iters-per-epoch 2"):
        make_parts(plugins, ptq_spec().model_copy(update={"budget": ptq_spec().budget.model_copy(
            update={"iters_per_epoch": 3})}), tmp_path)
    with pytest.raises(UserError, match="range_tracking=minmax"):
        make_parts(plugins, ptq_spec(num_images=6, batch=4).model_copy(
            update={"quantizer": PluginChoice(name="uniform", options={"range_tracking": "exact"})}), tmp_path)
    minmax = PluginChoice(name="uniform", options={"range_tracking": "minmax"})
    make_parts(plugins, ptq_spec(num_images=6, batch=4).model_copy(update={"quantizer": minmax}), tmp_path)
    with pytest.raises(UserError, match="no training epochs"):
        make_parts(plugins, make_spec("gdfq", epochs=1, warmup_epochs=1), tmp_path)


def test_bad_budgets_exit_2_with_one_line(capsys, tmp_path, plugins):
    weights = write_random_weights(tmp_path / "t.pth", plugins.models.get("resnet20_cifar10").build())
    base = ["run", "--bits", "4", "--teacher-weights", str(weights), "--dry-run"]
    err = one_line_error(capsys, [*base, "--generators", "zeroq", "-o", "zeroq.variant=ptq", "--budget", "smoke"])
    assert "--budget ptq" in err and "zeroq.variant=ft" in err
    assert "no training epochs" in one_line_error(capsys, [*base, "--generators", "gdfq", "--budget", "ptq"])
    assert "--iters-per-epoch 2" in one_line_error(
        capsys, [*base, "--generators", "zeroq", "--budget", "ptq", "-o", "zeroq.num_images=64"])


def test_ptq_budget_preset_and_overrides(plugins):
    ptq = resolve_budget(plugins, "ptq", "zeroq", "kd")
    b = ptq.budget
    assert (b.epochs, b.warmup_epochs, b.iters_per_epoch, b.batch_size) == (1, 1, 1, 32) and not b.trains
    assert ptq.generator_options == {"variant": "ptq"}
    paper = resolve_budget(plugins, "paper", "zeroq", "kd")
    assert (paper.budget.epochs, paper.budget.batch_size, paper.budget.lr_milestones) == (151, 256, [20, 40, 60])
    assert resolve_budget(plugins, "smoke", "zeroq", "kd").generator_options["num_images"] == 16


def test_a_ptq_trial_end_to_end_is_labelled_ptq_and_reuses_its_set(tmp_path, plugins, monkeypatch, capsys):
    """The CLI on a fixture data root: exit 0, one warm-up epoch, top1_last = ptq_top1, ptq_only
    in the leaderboard; a second bit-width reuses the cached distilled batch."""
    from zsqbench.cli.main import main

    write_test_set(tmp_path / "data", "cifar10", n=40)
    weights = write_random_weights(tmp_path / "t.pth", plugins.models.get("resnet20_cifar10").build())
    counter = CountingSynthesis(monkeypatch)
    argv = ["run", "--generators", "zeroq", "--loss", "kd", "--bits", "4,8", "--budget", "ptq",
            "-o", "zeroq.synthesis_iters=2", "--data-root", str(tmp_path / "data"), "--teacher-weights", str(weights),
            "--out", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache"), "--device", "cpu", "-q", "--yes"]
    assert main(argv) == 0
    assert counter.calls == 1  # one distilled batch, shared by both bit-widths
    with open(tmp_path / "out" / "leaderboard.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 2 and all(r["ptq_only"] == "True" and r["epochs"] == r["warmup_epochs"] == "1" for r in rows)
    assert all(r["top1_last"] == r["ptq_top1"] for r in rows)
    capsys.readouterr()
    assert "post-training only" in one_line_error(capsys, ["analyze", "hessian", str(tmp_path / "out"),
                                                           "--data-root", str(tmp_path / "data"),
                                                           "--teacher-weights", str(weights)])


def test_ptq_label_in_rows_and_aggregates():
    result = fake_result("a" * 16)
    assert result_row(result)["ptq_only"] is False
    result["spec"]["budget"].update(epochs=1, warmup_epochs=1)
    assert result_row(result)["ptq_only"] is True
    import pandas as pd

    ptq = [trial_row("zeroq", seed=s, budget="ptq", epochs=1, warmup_epochs=1, ptq_only=True) for s in (0, 1)]
    assert aggregate(pd.DataFrame(ptq))["ptq_only"].tolist() == [True]
    legacy = [{k: v for k, v in r.items() if k != "ptq_only"} for r in ptq]  # tables from before the column
    assert aggregate(pd.DataFrame(legacy))["ptq_only"].tolist() == [True]
    mixed = [ptq[0], trial_row("zeroq", seed=1, budget="ptq", epochs=1, warmup_epochs=0, ptq_only=False)]
    with pytest.raises(UserError, match="mix post-training-only trials"):
        aggregate(pd.DataFrame(mixed))
