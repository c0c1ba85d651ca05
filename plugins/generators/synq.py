"""SynQ (ICLR 2025): HAST's offline set and difficulty promotion, fine-tuned on low-pass filtered
batches with a Grad-CAM alignment term and a cross-entropy on easy samples only (docs/methods/synq.md).

SynQ's code is a fork of HAST's, so the plugin is HAST with three additions (:class:`SynQ`
subclasses :class:`~zsqbench_plugins.generators.hast.HAST`):

1. Stage 1 is HAST's synthesis, cache included: with equal settings a ``synq`` trial reads the set
   a ``hast`` trial made. SynQ adds ``focal_clamp`` (it acts only where γ < 1, the ImageNet
   synthesis, and is then part of the cache key) and ``synthesis_preset = synq_script`` (β 0.1,
   γ 0.5 on CIFAR, what its one script passes).
2. Calibration is HAST's (the GDFQ generator at batch 16), plus, by default, a student forward on one
   all-zero image before every calibration batch, as the released code runs it
   (``zero_image_calibration``); it pulls the frozen activation ranges down.
3. Each training batch is crop + flip, then the Gaussian low-pass filter
   (:func:`zsqbench.toolkit.lowpass.gaussian_lowpass`, D0 = 80). The step
   (:meth:`SynQ.student_step`) is HAST's clean + FGSM-perturbed pair with: the easy-sample CE
   (:class:`zsqbench.toolkit.easy_ce.EasySampleCE`) in both passes, its mask taken from the clean
   teacher logits and reused in the perturbed pass; the feature term in the perturbed pass only on
   ImageNet (``fa_perturbed = auto``); and λ_CAM times the Grad-CAM alignment
   (:func:`zsqbench.toolkit.gradcam.cam_alignment`) of the clean pass, at the teacher's declared
   ``cam_target`` layer, first order.

Native student loss (``--loss kd``): 8000·KL + λ_CE·selective CE + λ_FA·FA. A feature loss
(``--loss akt``, ``spatial``, ``channel``) keeps SynQ's logit term and replaces FA wherever FA
appears, as for HAST; the CAM term and the filter stay with every loss.
"""

from __future__ import annotations

import warnings
from dataclasses import replace
from typing import Any, Literal

import torch
from pydantic import Field, model_validator
from torch import Tensor

from zsqbench.api import BudgetOverride, LossInputs, NativeLosses, PluginOptions, hookimpl
from zsqbench.api.generator import Batch, PassCounts, StudentUpdate, TrainContext
from zsqbench.api.models import TeacherModel
from zsqbench.api.spec import Phase
from zsqbench.toolkit.easy_ce import EasySampleCE
from zsqbench.toolkit.gradcam import ActivationTap, CAMSettings, cam_alignment, last_conv_path
from zsqbench.toolkit.lowpass import gaussian_lowpass
from zsqbench.toolkit.offline import imagenet_overrides, short_synthesis_overrides
from zsqbench_plugins.generators.cards import SYNQ_CARD
from zsqbench_plugins.generators.hast import HAST, HASTLogitLoss, HASTObjective, HASTOptions
from zsqbench_plugins.generators.synq_synthesis import CentreSet, LayeredSet

#: What ``mode = paper`` sets unless given (docs/methods/synq.md#code-and-paper).
PAPER_SETTINGS: dict[str, Any] = {"lowpass": "dataset", "cam_form": "paper", "mask_compare": "inclusive",
                                  "lambda_fa": 0.0, "zero_image_calibration": False, "synthesis": "lbns",
                                  "lbns_variance": "pooled"}
#: The synthesis constants of SynQ's generation scripts (written for a ResNet-34 teacher).
SCRIPT_SYNTHESIS: dict[str, Any] = {"hardness_beta": 0.1, "hardness_gamma": 0.5}
#: ImageNet's synthesis (HAST's: focal β 0.1, γ 0.5, per-image crop + flip with probability 0.5).
IMAGENET_SYNTHESIS: dict[str, Any] = {"hardness_beta": 0.1, "hardness_gamma": 0.5, "synthesis_augment_p": 0.5,
                                      "synthesis_crop_min": 0.4}


class SynQOptions(HASTOptions):
    """HAST's options (synthesis, KD, FGSM) and SynQ's. Defaults are SynQ's released code where it
    has one, the specification's recommendation where it has none; ``mode = paper`` switches every
    code/paper difference at once and explicit options win."""

    retired = {}  # HAST's retired 'groups' never existed here
    hparams: Literal["code"] = Field(
        "code", description="SynQ's code hard-codes λ_FA 1000, ε 0.01 (its hocon's lam 4000 is ignored); "
        "lambda_fa / eps change them")
    mode: Literal["code", "paper"] = Field(
        "code", description="'paper' = lowpass=dataset, cam_form=paper, mask_compare=inclusive, "
        "lambda_fa=0, zero_image_calibration=false, synthesis=lbns, lbns_variance=pooled; explicit options win")
    # the low-pass filter
    lowpass: Literal["batch", "dataset", "off"] = Field(
        "batch", description="'batch' = every training batch after crop + flip (code); 'dataset' = the stored set "
        "once, before training (paper's Algorithm 1); 'off'")
    d0: float = Field(80.0, gt=0, description="width D0 of the Gaussian low-pass, in frequency bins")
    # the Grad-CAM alignment
    lambda_cam: float = Field(50.0, ge=0, description="weight λ_CAM of the CAM alignment (0: off)")
    cam_form: Literal["code", "paper"] = Field(
        "code", description="'code' = argmax class, clamped weights, resized, min-max, MSE; 'paper' = label class, "
        "signed weights, layer resolution, squared norm per sample")
    cam_target: str | None = Field(
        None, description="module path of the CAM layer (None: the model's declared cam_target, else its last "
        "Conv2d); MobileNetV2 'output' reproduces the code's degenerate 1x1 maps")
    cam_weight_grad: bool = Field(False, description="backpropagate through the channel weights (double backprop)")
    cam_norm_eps: float = Field(1e-10, gt=0, description="eps of the per-sample min-max normalization")
    cam_flat_guard: bool = Field(
        True, description="maps with a range below 1e-6·max + 1e-12 become 0 without gradient; false = the code, "
        "whose min-max gradient of such maps is of order 1/eps (its NaN issue, SQ5)")
    # the easy-sample CE
    lambda_ce: float = Field(0.5, ge=0, description="weight λ_CE of the easy-sample CE, in both passes")
    tau: float | None = Field(
        None, gt=0, le=1, description="difficulty threshold τ (None: 0.7 on CIFAR-10, 0.5 otherwise)")
    mask_compare: Literal["strict", "inclusive"] = Field(
        "strict", description="easy when δ < τ (code) or δ ≤ τ (paper)")
    mask_source: Literal["clean", "each_pass"] = Field(
        "clean", description="the perturbed pass reuses the clean mask (code) or computes its own")
    # the two passes
    lambda_pert: float = Field(1.0, ge=0, description="weight λ_P of the perturbed pass")
    fa_perturbed: Literal["auto", "always", "never"] = Field(
        "auto", description="the feature term in the perturbed pass: 'auto' = on ImageNet only (code)")
    loader_order: Literal["pass", "epoch"] = Field(
        "pass", description="'pass' = a new permutation at every pass over the set (harness); 'epoch' = one per "
        "epoch, repeated by every pass within it (code)")
    # calibration and synthesis
    zero_image_calibration: bool = Field(
        True, description="a student forward on one zero image before every calibration batch (code)")
    synthesis: Literal["hast", "lbns"] = Field(
        "hast", description="'hast' = HAST's synthesis and cache (what SynQ's scripts run); 'lbns' = plus TexQ's "
        "calibration centres and the layered BN term (the code's --lbns)")
    lbns_variance: Literal["code", "pooled"] = Field(
        "code", description="the centres' pooled variance: 'code' leaves the first batch's unweighted, 'pooled' not")
    centre_iters: int = Field(1500, ge=1, description="Adam steps of each calibration-centre batch (lbns)")
    centres_in_set: bool = Field(False, description="append one centre per class to the fine-tuning set")
    synthesis_preset: Literal["hast", "synq_script"] = Field(
        "hast", description="'hast' = HAST's β, γ (CIFAR 10 / 2: HAST's set); 'synq_script' = 0.1 / 0.5")
    focal_clamp: float = Field(
        1e-12, ge=0, le=1e-3, description="the focal weight is max(1 - p, clamp)^γ where γ < 1 (0: as HAST)")

    @model_validator(mode="before")
    @classmethod
    def _presets(cls, data: Any) -> Any:
        """Fill the presets' values for keys not given, so the dumped options hold them and
        re-validating a stored spec changes nothing."""
        if isinstance(data, dict):
            if data.get("mode") == "paper":
                data = {**PAPER_SETTINGS, **data}
            if data.get("synthesis_preset") == "synq_script":
                data = {**SCRIPT_SYNTHESIS, **data}
        return data


# ------------------------------------------------------------------------------ losses


class SynQLogitLoss:
    """KD (HAST's 8000·KL) + λ_CE·easy-sample CE: SynQ's logit term, what feature losses keep."""

    def __init__(self, kd: HASTLogitLoss, easy_ce: EasySampleCE) -> None:
        self.kd = kd
        self.easy_ce = easy_ce

    def __call__(self, student_logits: Tensor, teacher_logits: Tensor, labels: Tensor) -> Tensor:
        kd = self.kd(student_logits, teacher_logits, labels)
        if self.easy_ce.weight == 0:
            return kd
        return kd + self.easy_ce(student_logits, teacher_logits, labels)


# ---------------------------------------------------------------------------- plugin

#: The calibration centres' steps under the short presets (read only with synthesis = lbns), shrunk as the set's.
CENTRE_ITERS = {"smoke": 3, "cpu": 100, "in1k-smoke": 2, "in1k-short": 500}


def _short(override: BudgetOverride) -> BudgetOverride:
    options = {**override.generator_options, "centre_iters": CENTRE_ITERS[override.preset]}
    return override.model_copy(update={"generator_options": options})


BUDGET_OVERRIDES = (
    *(_short(o) for o in short_synthesis_overrides("synq", "hard samples",
                                                   "HAST's official 1e-5 diverged there; SynQ has its KD weight")),
    *(_short(o) for o in imagenet_overrides("synq", IMAGENET_SYNTHESIS) if o.preset != "in1k-paper"),
    BudgetOverride(preset="in1k-paper", generator="synq", epochs=101, warmup_epochs=4, batch_size=16,
                   lr_milestones=(100, 200, 350), generator_options=dict(IMAGENET_SYNTHESIS),
                   note="SynQ's ImageNet recipe: 4 calibration + 97 epochs at the paper's batch 16 (code: 4), lr 1e-6 "
                        "x0.1 at 100/200/350 (only the last epoch decays); HAST's 5,120 x 1,000 synthesis"),
    BudgetOverride(preset="paper", generator="synq", epochs=101, batch_size=256, lr_milestones=(20, 40, 60),
                   optim={"student_lr": 1e-4},
                   note="no CIFAR recipe was released: 4 calibration + 97 epochs at the paper's batch 256, lr 1e-4 "
                        "x0.1 at 20/40/60 (IntraQ's recipe; docs/methods/synq.md#budgets)"),
)


class SynQ(HAST):
    name = "synq"
    description = ("SynQ: HAST's set and FGSM step, fine-tuned on low-pass batches with Grad-CAM alignment and "
                   "an easy-sample CE")
    Options = SynQOptions
    card = SYNQ_CARD
    budget_overrides = BUDGET_OVERRIDES

    @classmethod
    def pass_counts(cls, options: PluginOptions, teacher: TeacherModel) -> PassCounts:
        """HAST's passes plus a second backward over the clean student graph (the CAM term's, down to
        the CAM layer; the two score gradients only cross the networks' tails and the filter is an FFT,
        both negligible): ≈ 16T per sample against HAST's 14T (docs/methods/synq.md#compute)."""
        o: SynQOptions = options  # type: ignore[assignment]
        counts = super().pass_counts(options, teacher)
        if o.synthesis == "lbns":  # the calibration centres: one image per class, in whole synthesis batches
            centres = -(-teacher.num_classes // o.synthesis_batch) * o.synthesis_batch
            counts = replace(counts, synthesis_teacher=counts.synthesis_teacher + 3.0 * centres * o.centre_iters)
        if o.lambda_cam == 0:
            return counts
        return replace(counts, train_teacher=counts.train_teacher + 2.0, student_input_backwards=1)

    def __init__(self, options: PluginOptions, ctx: TrainContext) -> None:
        super().__init__(options, ctx)  # HAST: the scaffold, λ_FA and ε, the FA taps, the synthetic set
        o: SynQOptions = options  # type: ignore[assignment]
        self.tau = o.tau if o.tau is not None else (0.7 if ctx.spec.dataset == "cifar10" else 0.5)
        self.easy_ce = EasySampleCE(o.lambda_ce, self.tau, inclusive=o.mask_compare == "inclusive")
        self.logit_loss = SynQLogitLoss(HASTLogitLoss(o.kd_alpha, o.temperature), self.easy_ce)
        self.fa_perturbed = o.fa_perturbed == "always" or (o.fa_perturbed == "auto" and ctx.spec.dataset == "imagenet")
        self.cam_settings = CAMSettings(o.cam_form, o.cam_norm_eps, o.cam_flat_guard, o.cam_weight_grad)
        self.cam_target = o.cam_target or ctx.teacher_entry.cam_target or last_conv_path(ctx.teacher)
        ActivationTap(ctx.teacher, self.cam_target)  # a wrong path fails here, before any synthesis
        if o.synthesis == "lbns":
            self.synthetic_set = LayeredSet(ctx, o)  # type: ignore[assignment]
        self._cam_taps: tuple[int, ActivationTap, ActivationTap] | None = None
        self._warned_flat = False

    # -- stage 1: HAST's set (or the layered one), the centres appended if asked; 'dataset' filters it once
    def load_set(self) -> tuple[Tensor, Tensor]:
        x, y = super().load_set()
        if not self.options.centres_in_set:  # type: ignore[attr-defined]
            return x, y
        centres, labels = CentreSet(self.ctx, self.options).load_or_build()  # type: ignore[arg-type]
        classes = self.ctx.num_classes
        return torch.cat([x, centres[:classes]]), torch.cat([y, labels[:classes]])

    def prepare(self) -> None:
        super().prepare()
        o: SynQOptions = self.options  # type: ignore[assignment]
        if o.lowpass == "dataset":
            images, _ = self._set()
            self.images = torch.cat([gaussian_lowpass(chunk, o.d0) for chunk in images.split(256)])

    # -- stage 2: zero-image calibration forwards; filtered training batches
    def next_batch(self, phase: Phase) -> Batch:
        o: SynQOptions = self.options  # type: ignore[assignment]
        if phase.calibrating and o.zero_image_calibration:
            # the released code's side effect: one all-zero image (the mean image in normalized space)
            # through the student with live ranges before every calibration batch
            with torch.no_grad():
                self.ctx.student(torch.zeros((1, *self.image_shape), device=self.ctx.device))
            self.ctx.student_taps.take(detach=True)
        batch = super().next_batch(phase)
        if phase.calibrating or o.lowpass != "batch":
            return batch
        return Batch(x=gaussian_lowpass(batch.x, o.d0), y=batch.y)

    def start_epoch(self, phase: Phase) -> None:
        super().start_epoch(phase)
        if self.options.loader_order == "epoch" and phase.training:  # type: ignore[attr-defined]
            self._perm, self._pos = None, 0  # the code re-creates its loader, with a new permutation, every epoch

    def _next_indices(self, count: int) -> Tensor:
        """``loader_order = epoch``: when a pass ends within an epoch, the next one repeats the epoch's
        permutation (the code's sampler is seeded by the epoch), so batch compositions recur within it."""
        if self.options.loader_order == "pass":  # type: ignore[attr-defined]
            return super()._next_indices(count)
        assert self.labels is not None
        n = self.labels.shape[0]
        chunks = []
        while count > 0:
            if self._perm is not None and self._pos >= n:
                self._pos = 0
            take = min(count, n - self._pos if self._perm is not None else n)
            chunks.append(super()._next_indices(take))
            count -= take
        return torch.cat(chunks)

    def cam_taps(self) -> tuple[ActivationTap, ActivationTap]:
        """The CAM layer's taps on teacher and student (made again if the student was rebuilt)."""
        student = self.ctx.student
        if self._cam_taps is None or self._cam_taps[0] != id(student):
            self._cam_taps = (id(student), ActivationTap(self.ctx.teacher, self.cam_target),
                              ActivationTap(student, self.cam_target))
        return self._cam_taps[1], self._cam_taps[2]

    def _objective(self, student: StudentUpdate, inputs: LossInputs,
                   mask: Tensor | None) -> tuple[dict[str, Tensor], Tensor | None]:
        """The trial's objective with the easy mask fixed (None: the loss computes its own), and the
        weighted easy-sample CE inside it (None when the objective did not call SynQ's logit term)."""
        self.easy_ce.last_value = None
        with self.easy_ce.using_mask(mask):
            terms = student.objective(inputs)
        return terms, self.easy_ce.last_value

    def _clean_pass(self, x: Tensor, student: StudentUpdate, cam_on: bool, through: bool
                    ) -> tuple[Tensor, dict[str, Tensor], Tensor | None, Tensor, dict[str, Tensor], Tensor | None]:
        """Teacher and student on the clean batch, with their CAM layers' outputs (None when not tapped):
        (t, t_feats, a_t, s, s_feats, a_q)."""
        teacher_tap, student_tap = self.cam_taps()
        # without the input gradient through the teacher, its CAM layer output becomes a leaf: the tail
        # after it gets a graph (the score gradient needs one), nothing before it does
        with teacher_tap.active(leaf=cam_on and not through), student_tap.active():
            with torch.set_grad_enabled(through or cam_on):
                t, t_feats = self.ctx.teacher_forward(x if through else x.detach(), detach_features=not through)
            a_t = teacher_tap.take()
            s, s_feats = student.forward(x)
            a_q = student_tap.take()
        return t, t_feats, a_t, s, s_feats, a_q

    #: The clean pass outside any compiled graph. Grad-CAM differentiates each network's score with respect
    #: to its CAM layer's output; traced by ``--compile``, that map and the logits would be two outputs of
    #: one compiled graph, which autograd does not link to each other ("the differentiated Tensor ... not
    #: used in the graph"). Eagerly, the map is an intermediate of the logits' graph, as Grad-CAM needs.
    _clean_pass_eager = torch.compiler.disable(_clean_pass)

    def student_step(self, batch: Batch, phase: Phase, student: StudentUpdate) -> dict[str, Tensor]:
        """Clean pass, CAM term, one FGSM step on the input, perturbed pass, one SGD step on
        L_clean + λ_P·L_pert + λ_CAM·L_CAM (docs/methods/synq.md#one-iteration).

        The clean backward gives the input gradient and the student gradients of L_clean at once (as
        HAST's step); the CAM term's gradient comes from a second backward, which starts at the CAM
        layer. With λ_CAM = 0, λ_CE = 0, ``lowpass = off`` and ``fa_perturbed = always`` this is
        HAST's step, bit for bit.
        """
        o: SynQOptions = self.options  # type: ignore[assignment]
        ctx = self.ctx
        params = student.parameters
        cam_on = o.lambda_cam > 0
        through = o.perturb_through_teacher
        x = batch.x.detach().clone().requires_grad_(True)
        # under --compile the CAM's clean pass runs eagerly (see _clean_pass_eager); without the CAM it is traced
        clean_pass = self._clean_pass_eager if cam_on else self._clean_pass
        t, t_feats, a_t, s, s_feats, a_q = clean_pass(x, student, cam_on, through)
        t_loss = t if through else t.detach()
        mask = self.easy_ce.mask(t.detach(), batch.y)
        clean, selce = self._objective(student, LossInputs(s, t_loss, batch.y, s_feats, t_feats), mask)
        cam = None
        if cam_on:
            cam = cam_alignment(a_t, t, a_q, s, batch.y, self.cam_settings, tuple(x.shape[-2:]))
            self._warn_if_flat(a_q)
        grads = list(torch.autograd.grad(clean["total"], [x, *params], allow_unused=True, retain_graph=cam_on))
        if cam is not None:
            extra = torch.autograd.grad(o.lambda_cam * cam.loss, params, allow_unused=True)
            grads[1:] = [g if e is None else (e if g is None else g + e) for g, e in zip(grads[1:], extra)]

        pert = None
        if o.lambda_pert > 0:
            x_adv = (x + self.eps * grads[0].sign()).detach()
            with torch.no_grad():
                t_adv, t_adv_feats = ctx.teacher_forward(x_adv)
            s_adv, s_adv_feats = student.forward(x_adv)
            adv, adv_selce = self._objective(student, LossInputs(s_adv, t_adv, batch.y, s_adv_feats, t_adv_feats),
                                             mask if o.mask_source == "clean" else None)
            kept = adv if self.fa_perturbed or "logit" not in adv else {"total": adv["logit"], "logit": adv["logit"]}
            pert = kept["total"] if o.lambda_pert == 1 else o.lambda_pert * kept["total"]
        student.optimizer.zero_grad(set_to_none=True)
        for p, g in zip(params, grads[1:]):
            p.grad = g
        if pert is not None:
            pert.backward()
        student.optimizer.step()

        terms = {k: v.detach() for k, v in clean.items()}
        if pert is not None:
            for k, v in kept.items():
                if k != "total":
                    terms[k] = terms.get(k, 0.0) + o.lambda_pert * v.detach()
            terms["adv_total"] = pert.detach()
            terms["total"] = terms["total"] + pert.detach()
            if selce is not None and adv_selce is not None:
                selce = selce + o.lambda_pert * adv_selce
        if cam is not None:
            terms["cam"] = o.lambda_cam * cam.loss.detach()
            terms["cam_distance"] = cam.loss.detach()
            terms["cam_flat"] = cam.flat_fraction
            terms["total"] = terms["total"] + terms["cam"]
        if selce is not None:
            terms["selce"] = selce
        terms["easy_frac"] = mask.float().mean()
        return terms

    def _warn_if_flat(self, activation: Tensor) -> None:
        if not self._warned_flat and activation.shape[-2:] == (1, 1):
            self._warned_flat = True
            warnings.warn(f"synq: the CAM layer '{self.cam_target}' has 1x1 outputs, so its maps carry no spatial "
                          "signal (0 in exact arithmetic, rounding noise in float32); choose a spatial conv as "
                          "cam_target", stacklevel=2)

    def native_losses(self) -> NativeLosses:
        return NativeLosses(logit=self.logit_loss, objective=HASTObjective(self.logit_loss, self.lambda_fa, self.fa_taps))


@hookimpl
def register_generators(register) -> None:
    register(SynQ)
