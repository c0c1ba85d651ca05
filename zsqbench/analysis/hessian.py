"""Hessian-trace (curvature) of a trial's student loss, by Hutchinson's estimator
(:mod:`zsqbench.analysis.hutchinson`).

Why: AKT claims its feature loss lowers the Hessian trace of the student loss, i.e. that
the quantized student ends in a flatter region. Users must be able to check that claim on
any trial, with any generator and loss, so the analysis only uses what every trial has:
the student, the teacher, the feature taps and the objective of :class:`TrialParts`.

What is measured with fake quantization
    The quantizers use the identity straight-through estimator (STE): in the backward pass
    each weight and activation quantizer is the identity, so every second-order term
    through a quantizer vanishes (there is no derivative of the rounding at all). The
    estimate is therefore the trace of the Hessian of the loss *as a function of the latent
    FP weights, with quantization treated as the identity in derivatives*, evaluated at the
    point the forward pass actually visits (quantized weights and activations, frozen
    activation ranges). That is the curvature SGD "sees" during QAT, which is the quantity
    the AKT claim is about; it is not the curvature of a smooth surrogate of the quantized
    network. Likewise ReLUs contribute no second derivative, as in every such analysis.

Leaving the trial untouched
    The analysis never calls ``.backward()`` (only :func:`torch.autograd.grad`, which does
    not accumulate into ``.grad``), takes no optimizer step, freezes activation ranges
    during its forwards (``quantizer.calibrating(student, False)``, the previous state
    restored afterwards), runs teacher and student in eval mode as the trainer does (so no BN
    statistics move) and draws the batch without advancing the generator. Parameters,
    buffers, quantizer ranges and gradients stay bit-identical; :func:`trial_hessian_trace`
    checks this with :func:`model_state_fingerprint` and raises if anything moved.

Scope
    The loss is the objective's ``total`` term on one fixed batch (the term the student step
    minimizes). Methods that change the step itself (HAST's FGSM difficulty promotion) are
    measured on their objective at the clean batch only.
"""

from __future__ import annotations

import copy
import random
from contextlib import ExitStack, contextmanager, nullcontext
from typing import TYPE_CHECKING, Any, Callable, ContextManager, Iterator, Literal, Mapping

import numpy as np
import torch
from torch import Tensor, nn

from zsqbench.analysis.hutchinson import TraceEstimate, hutchinson_trace, parameter_groups
from zsqbench.api.features import FeatureTaps
from zsqbench.api.generator import Batch
from zsqbench.api.losses import LossInputs
from zsqbench.api.spec import Phase

if TYPE_CHECKING:  # pragma: no cover
    from zsqbench.trial.build import TrialParts


# ------------------------------------------------------------------------- model state


def model_state_fingerprint(module: nn.Module, *, include_grads: bool = False) -> dict[str, Tensor | None]:
    """Cloned parameters and buffers keyed by name (and ``grad:<name>`` with ``include_grads``).

    Compare two fingerprints with :func:`state_differences` to prove that an analysis left a
    model bit-identical (quantizer ranges are buffers, so they are covered).
    """
    out: dict[str, Tensor | None] = {}
    for name, p in module.named_parameters():
        out[name] = p.detach().clone()
        if include_grads:
            out[f"grad:{name}"] = None if p.grad is None else p.grad.detach().clone()
    for name, b in module.named_buffers():
        out[name] = b.detach().clone()
    return out


def _bits(t: Tensor) -> Tensor:
    return t.detach().cpu().contiguous().reshape(-1).view(torch.uint8)


def state_differences(before: Mapping[str, Tensor | None], after: Mapping[str, Tensor | None]) -> list[str]:
    """Names whose tensors differ bit for bit (NaN payloads included), or that appear in one only."""
    diffs = [f"{k} (missing after)" for k in before if k not in after]
    diffs += [f"{k} (new after)" for k in after if k not in before]
    for k in before:
        if k not in after:
            continue
        a, b = before[k], after[k]
        if a is None or b is None:
            if (a is None) != (b is None):
                diffs.append(f"{k} (None vs tensor)")
            continue
        if a.dtype != b.dtype or a.shape != b.shape or not torch.equal(_bits(a), _bits(b)):
            diffs.append(k)
    return diffs


@contextmanager
def _fork_all_rngs(seed: int | None = None) -> Iterator[None]:
    """Run a block with torch (CPU and CUDA), Python and NumPy RNGs restored afterwards.

    With ``seed`` the block starts from that seed in all of them, so code that draws from
    the global streams (a plugin's ``next_batch``) gives a reproducible result without
    shifting the trial's own random numbers.
    """
    py_state, np_state = random.getstate(), np.random.get_state()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    try:
        with torch.random.fork_rng(devices=devices):
            if seed is not None:
                torch.manual_seed(seed)
                random.seed(seed)
                np.random.seed(seed % 2**32)
            yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)


@contextmanager
def _preserved_modes(module: nn.Module, train: bool) -> Iterator[None]:
    """Set train/eval mode on ``module`` for a block and restore every submodule's flag."""
    flags = [(m, m.training) for m in module.modules()]
    module.train(train)
    try:
        yield
    finally:
        for m, flag in flags:
            m.training = flag


def _frozen_ranges(parts: "TrialParts") -> ContextManager[None]:
    return parts.quantizer.calibrating(parts.ctx.student, False)


def _taps(taps: FeatureTaps) -> ContextManager[Any]:
    """The taps' hooks for a block; reuse them when a caller (the trainer) already installed them."""
    return nullcontext(taps) if taps.is_active else taps.active()


# ---------------------------------------------------------------------- the trial's loss


def student_loss_closure(parts: "TrialParts", batch: Batch) -> Callable[[], Tensor]:
    """The trial's student objective (its ``total`` term) on a fixed batch, as a function of the student weights.

    The teacher runs once, here, under ``no_grad`` with its taps (its outputs are constants
    of the loss; any teacher outputs carried by ``batch`` are ignored so the features match
    the objective's taps exactly). Each call then runs the student forward with frozen
    activation ranges and both networks in eval mode, through the feature taps the
    objective declares, and returns the objective's ``total`` with its graph.
    """
    ctx, objective = parts.ctx, parts.objective
    needed = tuple(objective.feature_taps)
    for side, taps in (("teacher", ctx.teacher_taps), ("student", ctx.student_taps)):
        missing = [p for p in needed if p not in taps.paths]
        if missing:
            raise ValueError(f"the objective needs feature taps {missing} that the trial's {side} taps lack")
    x, y = batch.x.detach(), batch.y.detach()
    soft = None if batch.y_soft is None else batch.y_soft.detach()

    with ExitStack() as stack:
        stack.enter_context(torch.no_grad())
        stack.enter_context(_preserved_modes(ctx.teacher, train=False))
        stack.enter_context(_taps(ctx.teacher_taps))
        ctx.teacher_taps.take(detach=True)  # drop maps of an earlier forward under the caller's taps
        t_logits, t_feats = ctx.teacher_forward(x)
    t_logits = t_logits.detach()
    t_feats = {k: v.detach() for k, v in t_feats.items()}

    def loss_fn() -> Tensor:
        with _frozen_ranges(parts), _preserved_modes(ctx.student, train=False), _taps(ctx.student_taps):
            ctx.student_taps.take(detach=True)
            s_logits, s_feats = ctx.student_forward(x)
            terms = objective(LossInputs(s_logits, t_logits, y, s_feats, t_feats, soft_labels=soft))
        if "total" not in terms:
            raise KeyError(f"the objective returned no 'total' term (got {sorted(terms)})")
        return terms["total"]

    return loss_fn


def _restored_buffers(networks: list[nn.Module]) -> ContextManager[None]:
    @contextmanager
    def restore() -> Iterator[None]:
        saved = [(b, b.detach().clone()) for net in networks for b in net.buffers()]
        try:
            yield
        finally:
            with torch.no_grad():
                for b, value in saved:
                    b.copy_(value)

    return restore()


def fixed_generator_batch(parts: "TrialParts", batch_size: int, seed: int, *, phase: Phase | None = None) -> Batch:
    """A reproducible batch from the trial's generator, leaving the generator (and global RNGs) unchanged.

    Two paths, because generators differ in what they can do:

    * Generators with networks that sample (:meth:`Generator.sample`; GDFQ, AdaDFQ): the noise
      comes from a private CPU ``torch.Generator`` seeded with ``seed`` (same images on any
      device up to kernel numerics), and the networks run in train mode — in ZSQ the generator
      is always in train mode, its BNs normalizing with batch statistics, so this is the
      distribution the student trains on — under ``no_grad``; their buffers (BN running
      statistics) are restored bit for bit afterwards. The generator is not stepped: the batch
      is what it produces *now*.
    * Any other generator (offline ones such as HAST): ``next_batch(phase)`` is called on a deep
      copy of the generator (which copies its context, teacher and student, so any step, range
      update or cursor move lands on the copy), with every global RNG seeded with ``seed`` and
      restored afterwards; calls repeat until ``batch_size`` samples exist. The default phase is
      the first training epoch's, whose batches the student objective sees; an offline
      generator must have run ``prepare()``.

    The returned batch carries no teacher outputs (:func:`student_loss_closure` computes them); it
    keeps the generator's soft labels, which the student objective fits when they exist.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    ctx, gen = parts.ctx, parts.generator
    networks = list(gen.networks().values())
    with ExitStack() as stack:
        stack.enter_context(torch.no_grad())
        stack.enter_context(_fork_all_rngs())
        stack.enter_context(_restored_buffers(networks))
        for net in networks:
            stack.enter_context(_preserved_modes(net, train=True))
        sampled = gen.sample(batch_size, torch.Generator().manual_seed(seed))
    if sampled is not None:
        return Batch(x=sampled.x.detach(), y=sampled.y,
                     y_soft=None if sampled.y_soft is None else sampled.y_soft.detach())

    if ctx.teacher_taps.is_active or ctx.student_taps.is_active:
        raise RuntimeError(
            "fixed_generator_batch copies the generator; call it outside an active FeatureTaps context "
            "(the copied networks would carry the live hooks)"
        )
    phase = ctx.spec.budget.first_training_phase if phase is None else phase
    xs: list[Tensor] = []
    ys: list[Tensor] = []
    softs: list[Tensor | None] = []
    with _fork_all_rngs(seed):
        clone = copy.deepcopy(gen)
        have = 0
        while have < batch_size:
            b = clone.next_batch(phase)
            if b.x.shape[0] == 0:
                raise RuntimeError(f"generator '{type(gen).__name__}' returned an empty batch")
            xs.append(b.x.detach())
            ys.append(b.y.detach())
            softs.append(None if b.y_soft is None else b.y_soft.detach())
            have += b.x.shape[0]
    y_soft = None
    if all(t is not None for t in softs):  # soft labels (Qimera) stay with their images
        y_soft = torch.cat(softs)[:batch_size].to(ctx.device)  # type: ignore[arg-type]
    return Batch(x=torch.cat(xs)[:batch_size].to(ctx.device), y=torch.cat(ys)[:batch_size].to(ctx.device),
                 y_soft=y_soft)


def trial_hessian_trace(
    parts: "TrialParts",
    *,
    batch_size: int | None = None,
    seed: int = 0,
    max_probes: int = 100,
    min_probes: int = 10,
    rtol: float = 0.05,
    by: Literal["module", "parameter"] = "module",
    batch: Batch | None = None,
) -> TraceEstimate:
    """tr(H) of the trial's student objective on a fixed generator batch, per layer too.

    ``seed`` fixes both the batch (unless ``batch`` is given) and the probes, so two
    trials (e.g. ``kd`` vs ``akt`` students) are compared on the same images and the same
    probes. Raises if the student or teacher state (parameters, buffers, ``.grad``) is not
    bit-identical afterwards: the analysis must never alter a trial.
    """
    ctx = parts.ctx
    before = {"student": model_state_fingerprint(ctx.student, include_grads=True),
              "teacher": model_state_fingerprint(ctx.teacher, include_grads=True)}
    if batch is None:
        batch = fixed_generator_batch(parts, batch_size or ctx.spec.budget.batch_size, seed)
    loss_fn = student_loss_closure(parts, batch)
    params = [p for p in ctx.student.parameters() if p.requires_grad]
    estimate = hutchinson_trace(
        loss_fn, params, max_probes=max_probes, min_probes=min_probes, rtol=rtol,
        generator=torch.Generator().manual_seed(seed), per_param_groups=parameter_groups(ctx.student, by),
    )
    changed = {name: state_differences(before[name], model_state_fingerprint(net, include_grads=True))
               for name, net in (("student", ctx.student), ("teacher", ctx.teacher))}
    changed = {k: v for k, v in changed.items() if v}
    if changed:
        raise RuntimeError(f"the Hessian analysis changed the trial's state (a bug): {changed}")
    return estimate
