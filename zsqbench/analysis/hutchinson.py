"""Hutchinson's estimator of a Hessian trace, with per-block traces from the same probes.

For a Rademacher vector v (entries ±1 with probability ½), E[vᵀHv] = tr(H). Each probe
costs one Hessian-vector product, taken by double backprop: g = ∂L/∂θ once with
``create_graph=True``, then Hv = ∂(g·v)/∂θ per probe (the graph of g is reused). The
estimate is the mean over probes; its standard error is the sample standard deviation
over √n. A probe's vᵀHv splits exactly into Σ_b v_bᵀ(Hv)_b over parameter blocks, so
per-layer traces (the traces of the diagonal blocks of H) come from the same probes at
no extra cost and sum to the total. Probes come from a caller-supplied, seeded
:class:`torch.Generator`, drawn per probe and per parameter in order, so a run is
reproducible and independent of the global RNG.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Literal, Mapping, Sequence

import torch
from torch import Tensor, nn

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
