"""Qimera (NeurIPS 2021): superposed class embeddings make boundary samples with soft labels
(docs/methods/qimera.md; a clean-room implementation of the behaviour described there).

GDFQ's generator with four changes to its input and one to its labels
(docs/methods/qimera.md#what-changes-relative-to-gdfq):

* the latent size d is the teacher classifier's in-features (64 for ResNet-20), because the
  class embedding E (C × d) starts as a copy of the classifier's weight (``emb_init``);
* u = E[y] + σ·z (a sum, not GDFQ's product), standardized without parameters: per sample
  over its d entries, or, for a superposed batch, per class slot over the whole (B, d);
* an optional disentanglement mapping DM = Linear(d → 100) (``dm``; off in every released
  script, defect Q1, so off by default);
* with probability ``p_mix`` the **whole batch** is superposed: each sample draws K classes
  and mixes their (mapped) latents with λ = softmax(N(0, 1)); its soft label ℓ is the
  λ-weighted sum of the one-hots (repeated classes add up). Otherwise ℓ = onehot(y).

The rest of the network is GDFQ's from its projection ``l1`` on (``CifarGenerator.decode``).
Generator loss: soft CE(T(x), ℓ) + 0.1·BNS, Adam 1e-3 (0.5, 0.999) as GDFQ. Native student
loss: 400·KL_mean + soft CE(s, ℓ) (κ_ce = 1), GDFQ's loss with ℓ in place of y; for a one-hot
ℓ both are GDFQ's numbers. Batches carry ℓ as ``y_soft`` and the first slot's class as ``y``
(logging only). Schedule: GDFQ's, the generic ``paper`` preset (no budget override).
"""

from __future__ import annotations

from typing import Literal, Mapping, TypeVar

import torch
from pydantic import Field
from torch import Tensor, nn
from torch.nn import functional as F

from zsqbench.api import KD_CE, Batch, NativeLosses, Phase, PluginOptions, TrainContext, hookimpl
from zsqbench.errors import UserError
from zsqbench.toolkit.imagenet_generator import generator_network
from zsqbench.toolkit.logits import GDFQLogitLoss, LogitObjective, soft_cross_entropy
from zsqbench.toolkit.online import OnlineGenerator
from zsqbench_plugins.generators.cards import QIMERA_CARD
from zsqbench_plugins.generators.gdfq import GDFQOptions

_V = TypeVar("_V")

#: Output width of the disentanglement mapping: always 100 in the code (its 64 branch is dead, Q3).
DM_WIDTH = 100
#: eps of the parameter-free standardization (the code's 1-D BN default).
NORM_EPS = 1e-5
#: The released run scripts' embedding initialization per dataset (docs/methods/qimera.md#options).
SCRIPT_EMB_INIT: dict[str, Literal["teacher_fc", "random"]] = {
    "cifar10": "random", "cifar100": "teacher_fc",
    # run_imgnet_{r18,mv2}: random; the ResNet-50 script copies the classifier (-o qimera.emb_init=teacher_fc)
    "imagenet": "random"}
#: K of the released scripts per dataset at 3–4 bits, and at 5 bits and more
#: (docs/methods/qimera.md#options [REC]; W3A3 and widths above 5 have no script: [AMBIG], the
#: nearest script's K).
SCRIPT_K: dict[str, tuple[int, int]] = {
    "cifar10": (2, 2), "cifar100": (10, 50),
    # IMAGENET.md §3.2: K = 500 (R18, R50) / 100 (MV2) at 4 bits, 100 at 5 bits; p_mix 0.7 for R50
    # (-o qimera.mix_classes=100 / -o qimera.p_mix=0.7 for those teachers)
    "imagenet": (500, 100)}


class QimeraOptions(GDFQOptions):
    """Defaults are the released scripts' (docs/methods/qimera.md#options), per dataset where they differ; GDFQ's
    loss options (BNS weight, KD, CE — the CE taken against the soft labels) as GDFQ has them."""

    p_mix: float = Field(0.4, ge=0, le=1, description="probability that a batch is superposed (all scripts: 0.4)")
    mix_classes: int | None = Field(
        None, ge=2, description="K, classes mixed per superposed sample (None: the script's, CIFAR-10 2, "
        "CIFAR-100 10 below 5 bits and 50 from 5 bits)"
    )
    noise_scale: float = Field(1.0, gt=0, description="σ in u = E[y] + σ·z")
    emb_init: Literal["teacher_fc", "random"] | None = Field(
        None, description="E from the teacher classifier's weight or N(0, 1) (None: the script's, "
        "CIFAR-10 random, CIFAR-100 teacher_fc)"
    )
    dm: bool = Field(False, description="disentanglement mapping Linear(d → 100) (the paper's; off in every script)")
    norm: Literal["code", "per_sample"] = Field(
        "code", description="latent standardization of a superposed batch: 'code' = per slot over the "
        "batch, 'per_sample' = per sample as in the single-label path"
    )


def standardize(u: Tensor, dims: tuple[int, ...]) -> Tensor:
    """(u − mean) / sqrt(biased var + 1e-5) over ``dims``: a BN without affine or running
    statistics, written out (the code's 1-D BN over a transposed 3-D tensor, defect Q4)."""
    mean = u.mean(dim=dims, keepdim=True)
    centered = u - mean
    var = centered.square().mean(dim=dims, keepdim=True)
    return centered / torch.sqrt(var + NORM_EPS)


def superposed_labels(y: Tensor, lam: Tensor, num_classes: int) -> Tensor:
    """ℓ_b = Σ_k λ_bk·onehot(y_bk), shape (B, C): classes drawn twice add their weights."""
    return torch.zeros(y.shape[0], num_classes, dtype=lam.dtype, device=lam.device).scatter_add_(1, y, lam)


class QimeraNet(nn.Module):
    """E, the optional DM and GDFQ's trunk: (z, y[, λ]) -> images (docs/methods/qimera.md#generator-input).

    Single-label: y (B,), z (B, d). Superposed: y (B, K), z (B, K, d), λ (B, K); each slot is
    standardized, mapped, then the slots are summed with weights λ (DM is affine and Σλ = 1,
    so mapping before or after the sum is the same).
    """

    def __init__(self, num_classes: int, latent_dim: int, noise_scale: float, dm: bool,
                 norm: Literal["code", "per_sample"], input_size: tuple[int, ...] = (3, 32, 32)) -> None:
        super().__init__()
        self.noise_scale = noise_scale
        self.norm = norm
        self.embed = nn.Embedding(num_classes, latent_dim)  # N(0, 1), the `random` initialization
        self.dm = nn.Linear(latent_dim, DM_WIDTH) if dm else None
        # GDFQ's trunk for the teacher's input size, without classes (they are in the latent): at
        # 224 px the conditional-BN stack of IMAGENET.md §3.2 with plain affine BNs and
        # l1 = Linear(d → 401,408) ([AMBIG] whether Qimera's ImageNet trunk keeps per-class BNs)
        self.body = generator_network(input_size, None, latent_dim=DM_WIDTH if dm else latent_dim)

    def latent(self, z: Tensor, y: Tensor, lam: Tensor | None = None) -> Tensor:
        """h, the input of the trunk's projection, shape (B, d) or (B, 100) with DM."""
        u = self.embed(y) + self.noise_scale * z
        if lam is None or self.norm == "per_sample":
            n = standardize(u, (-1,))  # each sample (and slot) over its d entries
        else:
            n = standardize(u, (0, 2))  # each slot k over all (b, j) of the batch
        m = n if self.dm is None else self.dm(n)
        return m if lam is None else (lam.unsqueeze(-1) * m).sum(dim=1)

    def forward(self, z: Tensor, y: Tensor, lam: Tensor | None = None) -> Tensor:
        return self.body.decode(self.latent(z, y, lam))


def classifier_weight(ctx: TrainContext) -> Tensor:
    """The teacher classifier's weight (C × d), which fixes d and initializes E."""
    entry = ctx.teacher_entry
    if entry.classifier is None:
        raise UserError(f"model '{entry.name}' declares no classifier module, which Qimera needs for its latent "
                        "size and embedding; set classifier= in the model plugin")
    try:
        module = ctx.teacher.get_submodule(entry.classifier)
    except AttributeError:
        raise UserError(f"model '{entry.name}' declares classifier '{entry.classifier}', which the network does "
                        "not have; fix classifier= in the model plugin") from None
    weight = getattr(module, "weight", None)
    if not isinstance(weight, Tensor) or weight.dim() != 2 or weight.shape[0] != entry.num_classes:
        raise UserError(f"classifier '{entry.classifier}' of model '{entry.name}' has no ({entry.num_classes}, d) "
                        "weight; Qimera needs a linear classifier (point classifier= at it)")
    return weight


class Qimera(OnlineGenerator):
    name = "qimera"
    description = ("Qimera generator: GDFQ's network fed superposed class embeddings (boundary samples with "
                   "soft labels); KD-mean·T² + soft-label CE student loss")
    Options = QimeraOptions
    card = QIMERA_CARD

    def __init__(self, options: PluginOptions, ctx: TrainContext) -> None:
        opts: QimeraOptions = options  # type: ignore[assignment]
        weight = classifier_weight(ctx)
        self.latent_dim = int(weight.shape[1])
        self.mix_classes = opts.mix_classes or self._script_k(ctx)
        self.emb_init = opts.emb_init or self._script_value(SCRIPT_EMB_INIT, ctx, "emb_init")
        super().__init__(options, ctx)  # builds the network (build_network)
        if self.emb_init == "teacher_fc":
            with torch.no_grad():  # a copy into E's own storage: training E never touches the teacher
                self.online.net.embed.weight.copy_(weight.detach())

    @staticmethod
    def _script_value(table: Mapping[str, _V], ctx: TrainContext, option: str) -> _V:
        """The released script's value for the trial's dataset; a dataset without a script must set it."""
        if ctx.spec.dataset not in table:
            raise UserError(f"Qimera has no released script for dataset '{ctx.spec.dataset}'; "
                            f"set -o qimera.{option}=...")
        return table[ctx.spec.dataset]

    def _script_k(self, ctx: TrainContext) -> int:
        low, high = self._script_value(SCRIPT_K, ctx, "mix_classes")
        return high if min(ctx.spec.w_bits, ctx.spec.a_bits) >= 5 else low

    def build_network(self) -> nn.Module:
        o: QimeraOptions = self.options  # type: ignore[assignment]
        return QimeraNet(self.ctx.num_classes, self.latent_dim, o.noise_scale, o.dm, o.norm,
                         tuple(self.ctx.teacher_entry.input_size))

    # -- sampling
    def draw_inputs(self, batch_size: int, rng: torch.Generator | None = None
                    ) -> tuple[Tensor, Tensor, Tensor | None, Tensor]:
        """(z, y, λ, ℓ) of one batch (docs/methods/qimera.md#generator-input): one coin decides
        whether the whole batch is superposed (y (B, K), z (B, K, d), λ (B, K)) or not (y (B),
        z (B, d), λ None).

        The coin is drawn on the CPU (no device sync); the rest on the device from the global
        RNG, or all on the CPU from ``rng`` (the same batch on any device).
        """
        o: QimeraOptions = self.options  # type: ignore[assignment]
        dev, c, d, k = self.ctx.device, self.ctx.num_classes, self.latent_dim, self.mix_classes

        def randn(*shape: int) -> Tensor:
            return torch.randn(shape, device=dev) if rng is None else torch.randn(shape, generator=rng).to(dev)

        def randint(*shape: int) -> Tensor:
            return (torch.randint(0, c, shape, device=dev) if rng is None
                    else torch.randint(0, c, shape, generator=rng).to(dev))

        if torch.rand((), generator=rng).item() < o.p_mix:
            y, z = randint(batch_size, k), randn(batch_size, k, d)
            lam = torch.softmax(randn(batch_size, k), dim=1)
            return z, y, lam, superposed_labels(y, lam, c)
        y, z = randint(batch_size), randn(batch_size, d)
        return z, y, None, F.one_hot(y, c).to(z.dtype)

    def draw(self, batch_size: int, rng: torch.Generator | None = None) -> Batch:
        """A batch with the images' graph to the generator: ``y`` the first slot's class."""
        z, y, lam, soft = self.draw_inputs(batch_size, rng)
        x = self.online.net(z, y, lam)
        return Batch(x=x, y=y if lam is None else y[:, 0], y_soft=soft)

    def sample(self, batch_size: int, rng: torch.Generator | None = None) -> Batch:
        return self.draw(batch_size, rng)

    # -- the iteration
    def next_batch(self, phase: Phase) -> Batch:
        """The generator step: soft CE(T(x), ℓ) + w·BNS, one Adam step; the batch carries the
        detached images, ℓ and the teacher's outputs on them."""
        batch = self.draw(self.online.batch_size)
        with self.online.bns.recording():
            t, feats = self.ctx.teacher_forward(batch.x)
        assert batch.y_soft is not None
        loss = generator_loss(t, batch.y_soft, self.online.bns.loss(), self.options.bns_weight)  # type: ignore[attr-defined]
        self.online.step(loss)
        return Batch(x=batch.x.detach(), y=batch.y, teacher_logits=t.detach(), teacher_features=feats,
                     y_soft=batch.y_soft)

    def native_losses(self) -> NativeLosses:
        logit = GDFQLogitLoss(self.options)  # type: ignore[arg-type]
        return NativeLosses(logit=logit, objective=LogitObjective(logit), family=KD_CE)


def generator_loss(teacher_logits: Tensor, soft_labels: Tensor, bns: Tensor, bns_weight: float) -> Tensor:
    """L_G = (1/B)·Σ_b H(ℓ_b, softmax(t_b)) + w·L_BNS (docs/methods/qimera.md#losses); GDFQ's CE + w·BNS for one-hot ℓ.
    On a superposed batch its CE part cannot fall below the mean entropy of ℓ."""
    return soft_cross_entropy(teacher_logits, soft_labels) + bns_weight * bns


@hookimpl
def register_generators(register) -> None:
    register(Qimera)
