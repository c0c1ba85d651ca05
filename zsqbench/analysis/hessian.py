"""Hessian-trace (curvature) of a trial's student loss, by Hutchinson's estimator.

Why: AKT claims its feature loss lowers the Hessian trace of the student loss, i.e. that
the quantized student ends in a flatter region. Users must be able to check that claim on
any trial, with any generator and loss, so the analysis only uses what every trial has:
the student, the teacher, the feature taps and the objective of :class:`TrialParts`.

The estimator
    For a Rademacher vector v (entries ±1 with probability ½), E[vᵀHv] = tr(H). Each probe
    costs one Hessian-vector product, taken by double backprop: g = ∂L/∂θ once with
    ``create_graph=True``, then Hv = ∂(g·v)/∂θ per probe (the graph of g is reused). The
    estimate is the mean over probes; its standard error is the sample standard deviation
    over √n. A probe's vᵀHv splits exactly into Σ_b v_bᵀ(Hv)_b over parameter blocks, so
    per-layer traces (the traces of the diagonal blocks of H) come from the same probes at
    no extra cost and sum to the total. Probes come from a caller-supplied, seeded
    :class:`torch.Generator`, drawn per probe and per parameter in order, so a run is
    reproducible and independent of the global RNG.

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
    during its forwards (``quantizer.set_calibrating(student, False)``, flags restored
    afterwards), runs teacher and student in eval mode as the trainer does (so no BN
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
import math
import random
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Callable, ContextManager, Iterator, Literal, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from zsqbench.api.features import FeatureTaps
from zsqbench.api.interfaces import Batch, LossInputs

if TYPE_CHECKING:  # pragma: no cover
    from zsqbench.trial.train import TrialParts


# ------------------------------------------------------------------------------ results


@dataclass(frozen=True)
class GroupTrace:
    """The trace of one diagonal block of H (a layer or a parameter), from the shared probes."""

    trace: float
    stderr: float
    samples: tuple[float, ...] = field(repr=False)


@dataclass(frozen=True)
class TraceEstimate:
    """Hutchinson estimate of tr(H).

    ``trace`` is the mean of ``samples`` (one vᵀHv per probe), ``stderr`` the standard error
    of that mean (sample std with n − 1, over √n). ``converged`` says the stopping rule
    ``stderr ≤ rtol·|trace|`` was met after at least ``min_probes`` probes; False means the
    estimate stopped at ``max_probes`` (or at a non-finite sample) and is less precise than
    asked. ``loss`` is the loss value at the point where H was taken.
    """

    trace: float
    stderr: float
    num_probes: int
    converged: bool
    samples: tuple[float, ...] = field(repr=False)
    groups: dict[str, GroupTrace] = field(default_factory=dict, repr=False)
    loss: float = float("nan")
    rtol: float = float("nan")

    @property
    def relative_stderr(self) -> float:
        """stderr / |trace| (inf for a zero trace with non-zero spread)."""
        if self.stderr == 0.0:
            return 0.0
        return self.stderr / abs(self.trace) if self.trace != 0.0 else math.inf

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (samples included, so a report can be re-analysed later)."""
        d = asdict(self)
        d["samples"] = list(self.samples)
        d["groups"] = {k: {"trace": g.trace, "stderr": g.stderr, "samples": list(g.samples)}
                       for k, g in self.groups.items()}
        d["relative_stderr"] = self.relative_stderr
        return d


# ---------------------------------------------------------------------------- estimator


def rademacher_probe(params: Sequence[Tensor], generator: torch.Generator) -> list[Tensor]:
    """One Rademacher vector, as one ±1 tensor per parameter (shape, dtype and device of each).

    Draws happen on ``generator``'s device in parameter order, so a CPU generator gives the
    same probes whether the model sits on the CPU or a GPU, and a test can replay them.
    """
    out = []
    for p in params:
        bits = torch.randint(0, 2, p.shape, generator=generator, device=generator.device)
        out.append(bits.to(device=p.device, dtype=p.dtype).mul_(2).sub_(1))
    return out


def _validate_params(params: Sequence[Tensor]) -> list[Tensor]:
    params = list(params)
    if not params:
        raise ValueError("hutchinson_trace needs at least one parameter")
    if len({id(p) for p in params}) != len(params):
        raise ValueError("hutchinson_trace got the same parameter twice; its block would be counted twice")
    bad = [i for i, p in enumerate(params) if not (p.requires_grad and p.is_floating_point())]
    if bad:
        raise ValueError(f"parameters at positions {bad} are not floating point tensors that require grad")
    return params


def _group_indices(params: list[Tensor], groups: Mapping[str, Sequence[Tensor]] | None) -> dict[str, list[int]]:
    """Map each group to the positions of its parameters in ``params`` (identity, not value)."""
    if not groups:
        return {}
    position = {id(p): i for i, p in enumerate(params)}
    out: dict[str, list[int]] = {}
    for name, members in groups.items():
        members = list(members)
        if not members:
            raise ValueError(f"parameter group '{name}' is empty")
        missing = [j for j, p in enumerate(members) if id(p) not in position]
        if missing:
            raise ValueError(
                f"parameter group '{name}' holds parameters (members {missing}) that are not in `params`; "
                "its block trace would not come from the probed Hessian"
            )
        idx = [position[id(p)] for p in members]
        if len(set(idx)) != len(idx):
            raise ValueError(f"parameter group '{name}' lists a parameter twice")
        out[name] = idx
    return out


def _mean_stderr(samples: Sequence[float]) -> tuple[float, float]:
    n = len(samples)
    mean = math.fsum(samples) / n
    if n < 2:
        return mean, math.nan
    var = math.fsum((s - mean) ** 2 for s in samples) / (n - 1)
    return mean, math.sqrt(var / n)


def hutchinson_trace(
    loss_fn: Callable[[], Tensor],
    params: Sequence[Tensor],
    *,
    max_probes: int = 100,
    min_probes: int = 10,
    rtol: float = 0.05,
    generator: torch.Generator,
    per_param_groups: Mapping[str, Sequence[Tensor]] | None = None,
) -> TraceEstimate:
    """Estimate tr(∂²L/∂θ²) for θ = ``params`` with Rademacher probes and double backprop.

    ``loss_fn`` is called once and must return a scalar whose graph reaches ``params``.
    Probing stops as soon as, after ``min_probes`` (≥ 2, so a standard error exists), the
    standard error of the running mean is at most ``rtol``·|mean|, or at ``max_probes``.
    ``rtol = 0`` runs all ``max_probes`` unless every probe gives the same value (e.g. a
    diagonal Hessian, where each Rademacher probe is exact). A non-finite probe ends the run
    unconverged: more probes cannot repair it.

    ``per_param_groups`` (name → parameters, each one of ``params``) asks for the trace of
    each group's diagonal block of H; groups need not cover ``params``. Parameters the loss
    does not reach, or reaches only linearly, have a zero Hessian block.
    Gradients in ``.grad`` are neither read nor written.
    """
    params = _validate_params(params)
    if min_probes < 2:
        raise ValueError(f"min_probes must be at least 2 (a standard error needs two probes), got {min_probes}")
    if max_probes < min_probes:
        raise ValueError(f"max_probes ({max_probes}) must be at least min_probes ({min_probes})")
    if not (rtol >= 0 and math.isfinite(rtol)):
        raise ValueError(f"rtol must be a finite number ≥ 0, got {rtol}")
    group_idx = _group_indices(params, per_param_groups)

    loss = loss_fn()
    if not isinstance(loss, Tensor) or loss.numel() != 1:
        raise ValueError("loss_fn must return a scalar tensor")
    if not loss.requires_grad:
        raise ValueError("the loss does not depend on any parameter that requires grad (was it built under no_grad?)")
    loss_value = float(loss.detach().double().item())
    grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
    del loss  # the graph stays alive through ``grads``
    # Blocks whose gradient depends on θ; the others (unused, or linear in θ) have Hv = 0.
    live = [i for i, g in enumerate(grads) if g is not None and g.requires_grad]

    samples: list[float] = []
    block_rows: list[list[float]] = []
    converged = False
    count, run_mean, run_m2 = 0, 0.0, 0.0  # Welford: O(1) per probe for the stopping rule
    for _ in range(max_probes):
        v = rademacher_probe(params, generator)  # drawn for every block, so the stream is fixed
        blocks = [0.0] * len(params)
        if live:
            dot = torch.stack([(grads[i] * v[i]).sum() for i in live]).sum()
            hv = torch.autograd.grad(dot, [params[i] for i in live], retain_graph=True, allow_unused=True)
            contrib = [(i, (v[i] * h).sum(dtype=torch.float64)) for i, h in zip(live, hv) if h is not None]
            if contrib:
                dev = contrib[0][1].device
                values = torch.stack([c.to(dev) for _, c in contrib]).tolist()  # one sync per probe
                for (i, _), value in zip(contrib, values):
                    blocks[i] = value
        sample = math.fsum(blocks)
        samples.append(sample)
        block_rows.append(blocks)
        if not math.isfinite(sample):
            break
        count += 1
        delta = sample - run_mean
        run_mean += delta / count
        run_m2 += delta * (sample - run_mean)
        if count >= min_probes:
            stderr = math.sqrt(max(run_m2, 0.0) / (count - 1) / count)
            if stderr <= rtol * abs(run_mean):
                converged = True
                break
    del grads  # frees the double-backward graph before the estimate is assembled

    trace, stderr = _mean_stderr(samples)
    groups: dict[str, GroupTrace] = {}
    for name, idx in group_idx.items():
        gs = tuple(math.fsum(row[i] for i in idx) for row in block_rows)
        g_mean, g_se = _mean_stderr(gs)
        groups[name] = GroupTrace(trace=g_mean, stderr=g_se, samples=gs)
    return TraceEstimate(
        trace=trace, stderr=stderr, num_probes=len(samples), converged=converged, samples=tuple(samples),
        groups=groups, loss=loss_value, rtol=float(rtol),
    )


def parameter_groups(
    module: nn.Module, by: Literal["module", "parameter"] = "module"
) -> dict[str, list[nn.Parameter]]:
    """Trainable parameters grouped per owning module path ("layer3.0.conv1") or per parameter name.

    Per-module groups give per-layer traces (a layer's weight and bias together); parameters
    registered on the root module itself are grouped under their own name.
    """
    if by not in ("module", "parameter"):
        raise ValueError(f"by must be 'module' or 'parameter', got {by!r}")
    out: dict[str, list[nn.Parameter]] = {}
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        key = name if by == "parameter" else (name.rpartition(".")[0] or name)
        out.setdefault(key, []).append(p)
    return out


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


@contextmanager
def _frozen_ranges(parts: "TrialParts") -> Iterator[None]:
    """Activation ranges frozen through the Quantizer interface, previous flags restored.

    The interface has no getter, so the flags are read by duck typing (any module with a
    boolean ``calibrating``, as the uniform quantizer's QuantAct) and restored after.
    """
    student, quantizer = parts.ctx.student, parts.ctx.quantizer
    flags = [(m, m.calibrating) for m in student.modules() if isinstance(getattr(m, "calibrating", None), bool)]
    quantizer.set_calibrating(student, False)
    try:
        yield
    finally:
        for m, flag in flags:
            m.calibrating = flag


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
    needed = tuple(getattr(objective, "feature_taps", ()))
    for side, taps in (("teacher", ctx.teacher_taps), ("student", ctx.student_taps)):
        missing = [p for p in needed if p not in taps.paths]
        if missing:
            raise ValueError(f"the objective needs feature taps {missing} that the trial's {side} taps lack")
    x, y = batch.x.detach(), batch.y.detach()

    with ExitStack() as stack:
        stack.enter_context(torch.no_grad())
        stack.enter_context(_preserved_modes(ctx.teacher, train=False))
        stack.enter_context(_taps(ctx.teacher_taps))
        ctx.teacher_taps.take()  # drop maps of an earlier forward under the caller's taps
        t_logits, t_feats = ctx.teacher_forward(x)
    t_logits = t_logits.detach()
    t_feats = {k: v.detach() for k, v in t_feats.items()}

    def loss_fn() -> Tensor:
        with _frozen_ranges(parts), _preserved_modes(ctx.student, train=False), _taps(ctx.student_taps):
            ctx.student_taps.take()
            s_logits, s_feats = ctx.student_forward(x)
            terms = objective(LossInputs(s_logits, t_logits, y, s_feats, t_feats))
        if "total" not in terms:
            raise KeyError(f"the objective returned no 'total' term (got {sorted(terms)})")
        return terms["total"]

    return loss_fn


def fixed_generator_batch(parts: "TrialParts", batch_size: int, seed: int, *, epoch: int | None = None) -> Batch:
    """A reproducible batch from the trial's generator, leaving the generator (and global RNGs) unchanged.

    Two paths, because generators differ in what they expose:

    * Online generators with a network ``net(z, y)`` and ``net.latent_dim`` (GDFQ, AdaDFQ):
      z ~ N(0, I) and y ~ U{0..C−1} are drawn from a private CPU ``torch.Generator`` seeded
      with ``seed`` (same images on any device up to kernel numerics), and the network runs
      in train mode — in ZSQ the generator is always in train mode, its BNs normalizing with
      batch statistics, so this is the distribution the student trains on — under
      ``no_grad``; its buffers (BN running statistics) are restored bit for bit afterwards.
      The generator is not stepped: the batch is what it produces *now*.
    * Any other generator (offline ones such as HAST): ``next_batch(epoch)`` is called on a
      deep copy of the generator (which copies its context, teacher and student, so any step,
      range update or cursor move lands on the copy), with every global RNG seeded with
      ``seed`` and restored afterwards; calls repeat until ``batch_size`` samples exist. The
      default ``epoch`` is the first training epoch (after warm-up), whose batches the
      student objective sees; an offline generator must have run ``prepare()``.

    The returned batch carries no teacher outputs: :func:`student_loss_closure` computes them.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    ctx, gen = parts.ctx, parts.generator
    net = getattr(gen, "net", None)
    if isinstance(net, nn.Module) and isinstance(getattr(net, "latent_dim", None), int):
        rng = torch.Generator().manual_seed(seed)
        z = torch.randn(batch_size, net.latent_dim, generator=rng).to(ctx.device)
        y = torch.randint(0, ctx.num_classes, (batch_size,), generator=rng).to(ctx.device)
        saved = [(b, b.detach().clone()) for b in net.buffers()]
        try:
            with torch.no_grad(), _fork_all_rngs(), _preserved_modes(net, train=True):
                x = net(z, y)
        finally:
            with torch.no_grad():
                for b, value in saved:
                    b.copy_(value)
        return Batch(x=x.detach(), y=y)

    if ctx.teacher_taps.is_active or ctx.student_taps.is_active:
        raise RuntimeError(
            "fixed_generator_batch copies the generator; call it outside an active FeatureTaps context "
            "(the copied networks would carry the live hooks)"
        )
    epoch = ctx.spec.budget.warmup_epochs if epoch is None else epoch
    xs: list[Tensor] = []
    ys: list[Tensor] = []
    with _fork_all_rngs(seed):
        clone = copy.deepcopy(gen)
        have = 0
        while have < batch_size:
            b = clone.next_batch(epoch)
            if b.x.shape[0] == 0:
                raise RuntimeError(f"generator '{type(gen).__name__}' returned an empty batch")
            xs.append(b.x.detach())
            ys.append(b.y.detach())
            have += b.x.shape[0]
    return Batch(x=torch.cat(xs)[:batch_size].to(ctx.device), y=torch.cat(ys)[:batch_size].to(ctx.device))


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
