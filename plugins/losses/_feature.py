"""Shared code of the attention-based feature-distillation losses (docs/methods/akt.md; the
ablations: docs/methods/spatial.md, docs/methods/channel.md).

AKT's refined feature distillation (RFD) compares, for every tapped feature map, the
teacher's and the student's *spatial* and *channel* attentions through a temperature
softened KL divergence. The ``spatial`` and ``channel`` plugins are the paper's Table 4
ablations (one branch each), ``akt`` uses both. All three are one class here,
:class:`AttentionDistillationLoss`, parametrized by the branches it sums; the plugin
modules only name and register a subclass, so the three cannot drift apart.

Paper vs code (docs/methods/akt.md#paper-and-code). Every difference is an option whose default is
the released code; ``mode="paper"`` switches all of them at once (explicit keys still win):

=================  ==========================  =====================================
option             code (default)              paper
=================  ==========================  =====================================
logit              ``native`` (AdaDFQ: entropy ``kl`` ("standard KL", T = 20)
                   of the logit difference)
akt_alpha          ``None``: L_logit + L_RFD   0.5: α·L_logit + (1 − α)·L_RFD (Eq. 9)
map_reduction      ``sum`` over the n maps     ``mean`` (λ/n, Eq. 8)
taps               ``default`` (9 ResUnit      ``last_per_stage`` ("final layer of
                   bodies in ResNet-20)        each module", 3 maps)
batch_reduction    ``sum``                     unstated; kept at ``sum``
=================  ==========================  =====================================

Not an option: the channel attention is softmaxed twice (once inside Ch, once after the
division by τ). docs/methods/akt.md#attentions marks the attentions [PAPER = CODE], so a
single-softmax variant would be neither the paper nor the code, only a new method.

Numerics: both attention distributions are almost uniform, so the KL is a tiny difference
of large logs (≈ ‖Δ‖²/(2Nτ²), docs/methods/akt.md#refined-feature-distillation). The
softmax/KL part is computed in float64: in float32 the cancellation error exceeds the value
itself for close maps (measured: 8× for spatial and 360× for channel KLs of 16×32×32 maps with
10% noise, where the KL is 1e-8 and 1e-10 per sample). It is O(B·(HW + C)) elements per map,
negligible next to the network.
The attentions themselves (means of F²) stay in the maps' dtype.
"""

from __future__ import annotations

from typing import Any, Callable, ClassVar, Literal

import torch
from pydantic import Field, model_validator
from torch import Tensor
from torch.nn import functional as F

from zsqbench.api import BudgetOverride, DistillationLoss, LossInputs, NativeLosses, PluginOptions, TeacherModel
from zsqbench.errors import UserError
from zsqbench.toolkit.energy import square_means
from zsqbench.toolkit.logits import kd_kl
from zsqbench.toolkit.reference import use_reference

# ------------------------------------------------------------------------ attentions


def spatial_attention_of(energy: Tensor, eps: float = 1e-12) -> Tensor:
    """Sp from mean_c F² (see :func:`spatial_attention`)."""
    return F.normalize(energy.flatten(1), p=2.0, dim=1, eps=eps)


def channel_attention_of(energy: Tensor) -> Tensor:
    """Ch from mean_hw F² (see :func:`channel_attention`)."""
    return torch.softmax(energy, dim=1)


def spatial_attention(feature: Tensor, eps: float = 1e-12) -> Tensor:
    """Sp(F) (docs/methods/akt.md#attentions): mean over channels of F², flattened to (B, H·W), L2-normalized
    per sample, so the attention says *where* the map is active regardless of its scale."""
    return spatial_attention_of(square_means(feature, channel=False)[0], eps)


def channel_attention(feature: Tensor) -> Tensor:
    """Ch(F) (docs/methods/akt.md#attentions): softmax over channels of the per-channel mean of F²,
    shape (B, C), i.e. *which* channels carry the energy. The KL softmaxes it a second time
    (docs/methods/akt.md#refined-feature-distillation)."""
    return channel_attention_of(square_means(feature, spatial=False)[1])


ATTENTIONS: dict[str, Callable[[Tensor], Tensor]] = {"spatial": spatial_attention, "channel": channel_attention}


def attentions(feature: Tensor, branches: tuple[str, ...]) -> dict[str, Tensor]:
    """The requested attentions of one map, from a single squaring of it."""
    spatial, channel = square_means(feature, "spatial" in branches, "channel" in branches)
    found = {"spatial": lambda: spatial_attention_of(spatial), "channel": lambda: channel_attention_of(channel)}
    return {b: found[b]() for b in branches}


def attention_kl(teacher_attention: Tensor, student_attention: Tensor, tau: float) -> Tensor:
    """Per-sample KL( softmax(A_T/τ) ‖ softmax(A_Q/τ) ), summed over attention positions: shape (B,).

    Direction teacher ‖ student as in the code (Σ p_T (log p_T − log p_Q)); no τ² factor.
    log_softmax equals the code's log(softmax(·)) and cannot underflow. Computed in float64
    (see the module docstring) and returned in the attention's dtype.
    """
    if teacher_attention.shape != student_attention.shape:
        raise ValueError(
            f"teacher attention {tuple(teacher_attention.shape)} and student attention "
            f"{tuple(student_attention.shape)} differ; the tapped maps must have the same shape"
        )
    log_p_t = torch.log_softmax(teacher_attention.double() / tau, dim=1)
    log_p_q = torch.log_softmax(student_attention.double() / tau, dim=1)
    kl = (log_p_t.exp() * (log_p_t - log_p_q)).sum(dim=1)
    return kl.to(student_attention.dtype)


# --------------------------------------------------------------------------- options

#: What ``mode="paper"`` sets (docs/methods/akt.md#paper-and-code) unless a key is given explicitly.
PAPER_SETTINGS: dict[str, Any] = {
    "logit": "kl",
    "akt_alpha": 0.5,
    "map_reduction": "mean",
    "taps": "last_per_stage",
}


class AttentionLossOptions(PluginOptions):
    mode: Literal["code", "paper"] = Field(
        "code",
        description="preset of the paper/code differences: 'code' = released AKT code, 'paper' = "
        "logit=kl, akt_alpha=0.5, map_reduction=mean, taps=last_per_stage; explicit options win",
    )
    logit: Literal["native", "kl"] = Field(
        "native",
        description="logit term: 'native' = the generator's published logit loss (code; AdaDFQ's "
        "entropy of the logit difference), 'kl' = T²·KL batchmean (paper's 'standard KL')",
    )
    temperature: float = Field(20.0, gt=0, description="T of the 'kl' logit term")
    lam: float = Field(1000.0, ge=0, description="λ, weight of the feature term (code: 1000, paper: unstated)")
    tau: float = Field(8.0, gt=0, description="τ, temperature of the attention softmax")
    map_reduction: Literal["sum", "mean"] = Field(
        "sum", description="over the n tapped maps: 'sum' = code, 'mean' = paper (λ/n)"
    )
    batch_reduction: Literal["sum", "mean"] = Field(
        "sum", description="over the batch: 'sum' = code (grows with B), 'mean' = per-sample average"
    )
    taps: str = Field(
        "default",
        description="which of the teacher's named tap sets to use: 'default'/'all_units' (ResNet-20: "
        "9 ResUnit bodies, code) or 'last_per_stage' (3 maps, paper)",
    )
    akt_alpha: float | None = Field(
        None, ge=0, le=1,
        description="None = code: L_logit + L_feat; α = paper Eq. 9: α·L_logit + (1 − α)·L_feat (paper α = 0.5)",
    )
    per_map: bool = Field(False, description="also return 'feature/<path>', each map's share of 'feature'")

    @model_validator(mode="before")
    @classmethod
    def _apply_mode(cls, data: Any) -> Any:
        """Fill the paper's values for keys not given; the dumped options then hold them
        explicitly, so re-validating a stored spec is idempotent."""
        if isinstance(data, dict) and data.get("mode") == "paper":
            data = {**PAPER_SETTINGS, **data}
        return data


# ------------------------------------------------------------------------------ loss


class AttentionDistillationLoss(DistillationLoss):
    """L = L_logit + λ·R_maps R_batch Σ_branches KL_branch (code), or α·L_logit + (1 − α)·(…) (paper).

    Subclasses set :attr:`branches`. Teacher and student maps are paired by module path,
    never by order, and a missing map is an error: an empty pairing is exactly how the
    released code's RFD became identically 0 (D3 of docs/methods/akt.md#defects-of-the-official-code).
    """

    branches: ClassVar[tuple[str, ...]] = ()
    Options = AttentionLossOptions

    def __init__(self, options: PluginOptions, native: NativeLosses, teacher: TeacherModel) -> None:
        super().__init__(options, native, teacher)
        opts: AttentionLossOptions = self.options  # type: ignore[assignment]
        unknown = [b for b in self.branches if b not in ATTENTIONS]
        if not self.branches or unknown:
            raise TypeError(f"{type(self).__name__}.branches must name some of {sorted(ATTENTIONS)}")
        if opts.taps not in teacher.feature_taps:
            known = ", ".join(sorted(teacher.feature_taps)) or "(none)"
            raise UserError(
                f"loss '{self.name}': model '{teacher.name}' has no feature-tap set '{opts.taps}'; "
                f"use taps = one of: {known}"
            )
        paths = tuple(teacher.feature_taps[opts.taps])
        if not paths:
            raise UserError(f"loss '{self.name}': tap set '{opts.taps}' of model '{teacher.name}' is empty")
        self.feature_taps = paths
        self.fused = not use_reference()  # equal-shaped maps together (:meth:`_grouped_map_terms`)

    @property
    def feature_weight(self) -> float:
        """Effective weight of the feature term in ``total`` (λ, times 1 − α in the paper form).

        The trainer warns when the epoch's feature term is exactly 0 although this is > 0:
        that is the signature of broken taps or pairing (docs/methods/akt.md#sanity-checks, defect D3).
        """
        opts: AttentionLossOptions = self.options  # type: ignore[assignment]
        return opts.lam * (1.0 if opts.akt_alpha is None else 1.0 - opts.akt_alpha)

    def logit_term(self, inputs: LossInputs) -> Tensor:
        opts: AttentionLossOptions = self.options  # type: ignore[assignment]
        if opts.logit == "native":
            # Code: for AdaDFQ the entropy-of-difference loss (docs/methods/adadfq.md#student-loss);
            # GDFQ+AKT / HAST+AKT keep their own logit loss (docs/methods/akt.md#feature-losses-on-gdfq-and-hast).
            return self.native.logit(inputs.student_logits, inputs.teacher_logits, inputs.targets)
        # Paper: "standard KL" logit distillation at T = 20 (docs/methods/akt.md#total-student-loss).
        return kd_kl(inputs.student_logits, inputs.teacher_logits, opts.temperature, "batchmean")

    def _check_maps(self, inputs: LossInputs) -> None:
        missing = [
            p for p in self.feature_taps if p not in inputs.teacher_features or p not in inputs.student_features
        ]
        if missing:
            raise RuntimeError(
                f"loss '{self.name}' needs feature maps {missing} from teacher and student, got teacher "
                f"{sorted(inputs.teacher_features)} / student {sorted(inputs.student_features)}; "
                "run both forwards inside FeatureTaps.active()"
            )

    def map_terms(self, inputs: LossInputs) -> dict[str, dict[str, Tensor]]:
        """branch -> path -> KL of that map, reduced over the batch (not yet weighted by λ)."""
        opts: AttentionLossOptions = self.options  # type: ignore[assignment]
        self._check_maps(inputs)
        # Not detached here: the trainer's teacher taps already detach (the D3 fix,
        # docs/methods/akt.md#one-iteration); HAST's difficulty promotion deliberately keeps the
        # teacher graph so its input gradient also flows through the teacher's features
        # (docs/methods/hast.md#training-with-difficulty-promotion,
        # docs/methods/akt.md#feature-losses-on-gdfq-and-hast).
        if self.fused:
            return self._grouped_map_terms(inputs)
        out: dict[str, dict[str, Tensor]] = {b: {} for b in self.branches}
        for path in self.feature_taps:
            f_t = inputs.teacher_features[path]
            f_q = inputs.student_features[path]
            att_t, att_q = attentions(f_t, self.branches), attentions(f_q, self.branches)
            for branch in self.branches:
                kl = attention_kl(att_t[branch], att_q[branch], opts.tau)
                # mode: code = reduction 'sum' over batch (and positions); 'mean' divides by B.
                out[branch][path] = kl.sum() if opts.batch_reduction == "sum" else kl.mean()
        return out

    def _grouped_map_terms(self, inputs: LossInputs) -> dict[str, dict[str, Tensor]]:
        """:meth:`map_terms` with the attentions and KLs of equal-shaped maps computed together.

        The maps of one stage have one shape (3 per stage in ResNet-20), so their energies are
        concatenated along the batch and each later operation (normalization or softmax, the two
        log-softmaxes, the KL) runs once per shape instead of once per map: a third of the loss's
        operations. Every operation works row by row, so each map's KL is the same per sample; only
        the batch reduction may sum in another order (tests/trial/test_fused_ops.py bounds it).
        """
        paths, per_branch = self._grouped_kls(inputs)
        found = {b: dict(zip(paths, torch.cat(per_branch[b]).unbind())) for b in self.branches}
        return {b: {p: found[b][p] for p in self.feature_taps} for b in self.branches}

    def _grouped_kls(self, inputs: LossInputs) -> tuple[list[str], dict[str, list[Tensor]]]:
        """The tapped paths, grouped by shape, and per branch each group's per-map KLs (a vector per
        group, in the order of the paths)."""
        opts: AttentionLossOptions = self.options  # type: ignore[assignment]
        groups: dict[tuple[int, ...], list[str]] = {}
        for path in self.feature_taps:
            groups.setdefault(tuple(inputs.teacher_features[path].shape), []).append(path)
        per_branch: dict[str, list[Tensor]] = {b: [] for b in self.branches}
        spatial, channel = "spatial" in self.branches, "channel" in self.branches
        for shape, paths in groups.items():
            energies_t = [square_means(inputs.teacher_features[p], spatial, channel) for p in paths]
            energies_q = [square_means(inputs.student_features[p], spatial, channel) for p in paths]
            for branch in self.branches:
                k = 0 if branch == "spatial" else 1
                of = spatial_attention_of if branch == "spatial" else channel_attention_of
                att_t = of(torch.cat([e[k].flatten(1) for e in energies_t]))
                att_q = of(torch.cat([e[k].flatten(1) for e in energies_q]))
                kl = attention_kl(att_t, att_q, opts.tau).view(len(paths), shape[0])
                per_branch[branch].append(kl.sum(dim=1) if opts.batch_reduction == "sum" else kl.mean(dim=1))
        return [p for paths in groups.values() for p in paths], per_branch

    def _branch_sums(self, inputs: LossInputs) -> dict[str, Tensor]:
        """Σ over the maps of each branch's KLs (not yet weighted by λ), summed in the order of the taps.

        The fused form, when its groups list the maps in the taps' order (ResNet's stages are
        contiguous), sums the groups' concatenated vectors instead of stacking one scalar per map:
        the same numbers in the same order, without the per-map selections and their backward nodes.
        A :meth:`map_terms` replaced by a subclass (or a test) is what the loss then sums, as always."""
        if self.fused and type(self).map_terms is _DEFINED_MAP_TERMS:
            self._check_maps(inputs)
            paths, per_branch = self._grouped_kls(inputs)
            if tuple(paths) == self.feature_taps:
                return {b: torch.cat(per_branch[b]).sum() for b in self.branches}
            found = {b: dict(zip(paths, torch.cat(per_branch[b]).unbind())) for b in self.branches}
            return {b: torch.stack([found[b][p] for p in self.feature_taps]).sum() for b in self.branches}
        return {b: torch.stack(list(maps.values())).sum() for b, maps in self.map_terms(inputs).items()}

    def __call__(self, inputs: LossInputs) -> dict[str, Tensor]:
        opts: AttentionLossOptions = self.options  # type: ignore[assignment]
        logit = self.logit_term(inputs)
        per_branch = self.map_terms(inputs) if opts.per_map else None
        # mode: code = Σ_j over maps; paper = (1/n) Σ_j (Eq. 8).
        scale = opts.lam / (len(self.feature_taps) if opts.map_reduction == "mean" else 1)
        if per_branch is None:
            branch_terms = {b: scale * total for b, total in self._branch_sums(inputs).items()}
        else:
            branch_terms = {b: scale * torch.stack(list(maps.values())).sum() for b, maps in per_branch.items()}
        feature = torch.stack(list(branch_terms.values())).sum()
        if opts.akt_alpha is None:
            total = logit + feature  # mode: code, weights 1 and 1
        else:
            total = opts.akt_alpha * logit + (1.0 - opts.akt_alpha) * feature  # mode: paper Eq. 9
        terms: dict[str, Tensor] = {"total": total, "logit": logit, "feature": feature}
        if len(self.branches) > 1:
            terms.update(branch_terms)
        if per_branch is not None:
            for path in self.feature_taps:
                terms[f"feature/{path}"] = scale * torch.stack([per_branch[b][path] for b in self.branches]).sum()
        return terms


#: :meth:`AttentionDistillationLoss.map_terms` as defined here (the fused sums bypass it only then)
_DEFINED_MAP_TERMS = AttentionDistillationLoss.map_terms


def akt_paper_schedule(loss: str) -> BudgetOverride:
    """AKT's own schedule for AdaDFQ + ``loss`` under the paper preset (the Table 2 AdaDFQ cells and
    the Table 4 ablations): 200 epochs x 200 iterations at batch 200, LRs x0.1 at epoch 100
    (docs/methods/akt.md#budgets). GDFQ and HAST with these losses keep their own schedules
    (docs/methods/akt.md#feature-losses-on-gdfq-and-hast)."""
    return BudgetOverride(preset="paper", generator="adadfq", loss=loss, epochs=200, iters_per_epoch=200,
                          batch_size=200, lr_milestones=(100,),
                          note="AKT's code: 200 x 200 iterations at batch 200, milestones {100} "
                               "(docs/methods/akt.md#budgets)")


__all__ = [
    "ATTENTIONS", "AttentionDistillationLoss", "AttentionLossOptions", "PAPER_SETTINGS", "akt_paper_schedule",
    "attention_kl", "attentions", "channel_attention", "spatial_attention", "square_means",
]
