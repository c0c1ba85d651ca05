"""HAST (CVPR 2023): offline hard-sample synthesis, then QAT with difficulty promotion (METHODS §6).

Three phases:

1. :meth:`HAST.prepare` synthesizes a fixed set of images by optimizing pixels against the
   teacher (focal "hardness" CE + BN statistics, §6.1). The set is cached on disk, keyed by
   the teacher's weights and every synthesis setting, verified before use and resumable
   batch by batch (synthesis is the most expensive part of a HAST trial).
2. Warm-up epochs calibrate the activation ranges on the output of a GDFQ generator trained
   at its own small batch (§6.2), *not* on the hard samples.
3. Afterwards batches come from the synthetic set with per-sample random-resized-crop and
   flip, and each student step adds a one-step FGSM copy of the batch (§6.3).

Native student loss: α·T²·KL_batchmean (α = T = 20, weight 8000) plus feature alignment (FA)
on the 9 residual-unit body outputs. The ``hparams`` switch picks between what the code ran
(λ_FA = 1000, ε = 0.01 for both datasets; defect H1) and the hocon values (CIFAR-100: 2000/0.02).
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Literal

import torch
from pydantic import Field
from torch import Tensor, nn
from torch.nn import functional as F
from torchvision.transforms import InterpolationMode, RandomResizedCrop
from torchvision.transforms.v2 import functional as TF

from zsqbench.errors import UserError
from zsqbench.api.features import FeatureTaps
from zsqbench.files import file_digest, write_bytes_atomic, write_json_atomic
from zsqbench.api.hookspecs import hookimpl
from zsqbench.api.interfaces import (
    Batch, Generator, LossInputs, NativeLosses, PluginOptions, StudentObjective, TrainContext,
)
from zsqbench_plugins.generators._common import BNStatsLoss, CifarGenerator, kd_kl, step_on

# (λ_FA, ε) per dataset in the hocon files; the code hard-codes the CIFAR-10 pair for both (H1).
HOCON_HPARAMS: dict[str, tuple[float, float]] = {"cifar10": (1000.0, 0.01), "cifar100": (2000.0, 0.02)}
CODE_HPARAMS: tuple[float, float] = (1000.0, 0.01)

# Synthesis-optimizer constants of the reference (METHODS §6.1); part of the cache key.
PLATEAU = {"mode": "min", "factor": 0.1, "patience": 50, "min_lr": 1e-4}
CACHE_FORMAT = 1
IMAGE_SHAPE = (3, 32, 32)


class HASTOptions(PluginOptions):
    """Defaults are the reference code's (METHODS §6.4). The synthesis size is an option, not a
    budget field; the smoke and cpu presets shrink it through their ``generator_options``."""

    # student loss and difficulty promotion
    hparams: Literal["code", "hocon"] = Field(
        "code", description="'code' = λ_FA 1000, ε 0.01 (what options.py ran); 'hocon' = per dataset "
        "(CIFAR-100: 2000 / 0.02); explicit lambda_fa / eps win"
    )
    lambda_fa: float | None = Field(None, ge=0, description="feature-alignment weight λ_FA (None: from hparams)")
    eps: float | None = Field(None, ge=0, description="FGSM step ε of the difficulty promotion (None: from hparams)")
    kd_alpha: float = Field(20.0, ge=0, description="α in α·T²·KL_batchmean")
    temperature: float = Field(20.0, gt=0, description="KD temperature T")
    perturb_through_teacher: bool = Field(
        True, description="the input gradient of the perturbation also flows through the teacher (code)"
    )
    # offline synthesis (METHODS §6.1)
    num_images: int = Field(5120, ge=1, description="size of the synthetic set (paper: 4 groups x 1280)")
    synthesis_batch: int = Field(256, ge=1, description="images optimized jointly (their BN statistics are matched)")
    synthesis_iters: int = Field(1000, ge=1, description="Adam steps per synthesis batch")
    synthesis_lr: float = Field(0.5, gt=0, description="Adam learning rate on the pixels")
    groups: int = Field(4, ge=1, description="informational: the reference ran the synthesis as 4 separate jobs")
    hardness_beta: float = Field(10.0, ge=0, description="β of the focal hardness loss β·mean((1-p)^γ·CE)")
    hardness_gamma: float = Field(2.0, ge=0, description="γ of the focal hardness loss")
    synthesis_seed: int | None = Field(
        None, ge=0, description="seed of the synthesis (None: the trial seed); set it to share one set across seeds"
    )
    # range calibration with a GDFQ generator (METHODS §6.2)
    calibration_batch: int = Field(16, ge=1, description="batch of the calibration generator (hard-coded 16: H5)")
    calibration_bns_weight: float = Field(0.1, ge=0, description="BNS weight of the calibration generator's loss")


# ------------------------------------------------------------------------------ losses


def hardness_loss(logits: Tensor, labels: Tensor, beta: float, gamma: float) -> Tensor:
    """β·mean_b[(1 − p_b)^γ · CE_b] with p_b = softmax(logits_b)_{y_b} (METHODS §6.1).

    Focal weighting: samples the teacher already finds easy count less, so the pixels move
    towards hard (low-confidence) images. The gradient also flows through the weight.
    """
    log_p = F.log_softmax(logits, dim=1).gather(1, labels[:, None]).squeeze(1)
    return beta * ((1 - log_p.exp()).pow(gamma) * -log_p).mean()


def channel_energy(feature: Tensor) -> Tensor:
    """Â = L2-normalize over channels of mean_{h,w} F², shape (B, C): the map's per-channel energy profile."""
    return F.normalize(feature.pow(2).mean(dim=(2, 3)), p=2.0, dim=1)


def feature_alignment(student: dict[str, Tensor], teacher: dict[str, Tensor], paths: tuple[str, ...]) -> Tensor:
    """Σ_l mean_{b,c}(Â_Q − Â_T)² over the tapped maps (without λ_FA)."""
    missing = [p for p in paths if p not in student or p not in teacher]
    if missing:
        raise RuntimeError(f"feature alignment is missing the tapped maps {missing}; were the feature taps installed?")
    return torch.stack([(channel_energy(student[p]) - channel_energy(teacher[p])).pow(2).mean() for p in paths]).sum()


class HASTLogitLoss:
    """α·T²·KL_batchmean(softmax(t/T) ‖ softmax(s/T)); HAST computes a label CE but does not use it."""

    def __init__(self, alpha: float, temperature: float) -> None:
        self.alpha = alpha
        self.temperature = temperature

    def __call__(self, student_logits: Tensor, teacher_logits: Tensor, labels: Tensor) -> Tensor:
        return self.alpha * kd_kl(student_logits, teacher_logits, self.temperature, "batchmean")


class HASTObjective(StudentObjective):
    """HAST's complete student loss: the KD term plus λ_FA·feature alignment on ``feature_taps``."""

    def __init__(self, logit: HASTLogitLoss, lambda_fa: float, feature_taps: tuple[str, ...]) -> None:
        self.logit = logit
        self.lambda_fa = lambda_fa
        self.feature_taps = tuple(feature_taps)

    def __call__(self, inputs: LossInputs) -> dict[str, Tensor]:
        logit = self.logit(inputs.student_logits, inputs.teacher_logits, inputs.labels)
        fa = self.lambda_fa * feature_alignment(inputs.student_features, inputs.teacher_features, self.feature_taps)
        return {"total": logit + fa, "logit": logit, "fa": fa}


# --------------------------------------------------------------------------- synthesis


def teacher_fingerprint(model: nn.Module) -> str:
    """sha256 over the teacher's state_dict (names, dtypes, shapes, bytes): the cache follows the weights."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _batch_seed(seed: int, index: int) -> int:
    digest = hashlib.sha256(f"hast-synthesis:{seed}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def synthesize_batch(
    teacher: nn.Module,
    bns: BNStatsLoss,
    x0: Tensor,
    labels: Tensor,
    opts: HASTOptions,
    on_step: Callable[[int], None] = lambda it: None,
) -> Tensor:
    """Optimize the pixels ``x0`` so the teacher finds them hard yet BN-plausible (METHODS §6.1).

    Adam(lr 0.5) on the pixels alone, ReduceLROnPlateau stepped on the total loss every
    iteration, no augmentation, no clipping. Returns the final images, detached.
    """
    x = x0.detach().clone().requires_grad_(True)
    optimizer = torch.optim.Adam([x], lr=opts.synthesis_lr)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, **PLATEAU)
    for it in range(opts.synthesis_iters):
        with bns.recording():
            logits = teacher(x)
        loss = hardness_loss(logits, labels, opts.hardness_beta, opts.hardness_gamma) + bns.loss()
        (grad,) = torch.autograd.grad(loss, [x])
        x.grad = grad
        optimizer.step()
        scheduler.step(loss.item())
        on_step(it + 1)
    return x.detach()


class SyntheticSetCache:
    """The synthetic set on disk: ``<root>/<key>/images.pt`` plus ``manifest.json``.

    The manifest (written last) records the count, shapes and the sha256 of the tensor file;
    anything that does not match is rebuilt, never used. While synthesizing, every finished
    batch is written atomically to ``parts/`` with its own digest, so an interrupted synthesis
    resumes from the finished batches; the parts are deleted once the set is assembled.
    """

    def __init__(self, root: Path, settings: dict[str, Any]) -> None:
        self.settings = settings
        self.key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()
        self.dir = root / self.key[:24]
        self.data_path = self.dir / "images.pt"
        self.manifest_path = self.dir / "manifest.json"
        self.parts_dir = self.dir / "parts"

    # -- the assembled set
    def load(self, count: int, num_classes: int) -> tuple[tuple[Tensor, Tensor] | None, str]:
        """The verified set, or None and why it cannot be used ("" when there is simply none)."""
        if not self.manifest_path.is_file():
            return None, ""
        try:
            manifest = json.loads(self.manifest_path.read_text())
        except (OSError, json.JSONDecodeError):
            return None, "unreadable manifest"
        expected = {"format": CACHE_FORMAT, "key": self.key, "count": count}
        if any(manifest.get(k) != v for k, v in expected.items()):
            return None, "manifest does not match the requested settings"
        if not self.data_path.is_file():
            return None, "images.pt is missing"
        if self.data_path.stat().st_size != manifest.get("bytes") or file_digest(self.data_path) != manifest.get("sha256"):
            return None, "images.pt does not match its recorded size/sha256 (truncated or modified)"
        try:
            data = torch.load(self.data_path, map_location="cpu", weights_only=True)
            x, y = data["x"], data["y"]
        except Exception as exc:  # a file that passed the digest but does not load is still unusable
            return None, f"images.pt does not load ({type(exc).__name__})"
        problem = _check_tensors(x, y, count, num_classes)
        return (None, problem) if problem else ((x, y), "")

    def save(self, x: Tensor, y: Tensor) -> None:
        payload = _serialize(x, y)
        write_bytes_atomic(self.data_path, payload)
        write_json_atomic(self.manifest_path, {
            "format": CACHE_FORMAT, "key": self.key, "count": int(y.shape[0]),
            "x_shape": list(x.shape), "y_shape": list(y.shape), "x_dtype": str(x.dtype), "y_dtype": str(y.dtype),
            "bytes": len(payload), "sha256": hashlib.sha256(payload).hexdigest(), "settings": self.settings,
        })
        shutil.rmtree(self.parts_dir, ignore_errors=True)

    def invalidate(self) -> None:
        for path in (self.manifest_path, self.data_path):
            path.unlink(missing_ok=True)

    # -- finished synthesis batches
    def _part(self, index: int) -> tuple[Path, Path]:
        return self.parts_dir / f"{index:05d}.pt", self.parts_dir / f"{index:05d}.json"

    def save_part(self, index: int, x: Tensor, y: Tensor) -> None:
        data_path, meta_path = self._part(index)
        payload = _serialize(x, y)
        write_bytes_atomic(data_path, payload)
        write_json_atomic(meta_path, {"key": self.key, "count": int(y.shape[0]),
                                      "sha256": hashlib.sha256(payload).hexdigest()})

    def load_part(self, index: int, count: int, num_classes: int) -> tuple[Tensor, Tensor] | None:
        """A finished batch if it is intact and belongs to this key; otherwise None (redo it)."""
        data_path, meta_path = self._part(index)
        try:
            meta = json.loads(meta_path.read_text())
            if meta.get("key") != self.key or meta.get("count") != count or file_digest(data_path) != meta.get("sha256"):
                return None
            data = torch.load(data_path, map_location="cpu", weights_only=True)
            x, y = data["x"], data["y"]
        except Exception:
            return None
        return None if _check_tensors(x, y, count, num_classes) else (x, y)


def _serialize(x: Tensor, y: Tensor) -> bytes:
    buffer = io.BytesIO()
    torch.save({"x": x.detach().cpu().contiguous(), "y": y.detach().cpu().contiguous()}, buffer)
    return buffer.getvalue()


def _check_tensors(x: Any, y: Any, count: int, num_classes: int) -> str:
    if not isinstance(x, Tensor) or not isinstance(y, Tensor):
        return "cached object is not a pair of tensors"
    if tuple(x.shape) != (count, *IMAGE_SHAPE) or x.dtype != torch.float32:
        return f"images have shape {tuple(x.shape)} {x.dtype}, expected {(count, *IMAGE_SHAPE)} float32"
    if tuple(y.shape) != (count,) or y.dtype != torch.int64:
        return f"labels have shape {tuple(y.shape)} {y.dtype}, expected ({count},) int64"
    if count and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        return f"labels outside 0..{num_classes - 1}"
    if not torch.isfinite(x).all():
        return "images contain NaN/Inf"
    return ""


# ------------------------------------------------------------------------ augmentation


def random_resized_crop_flip(
    x: Tensor,
    size: int = 32,
    scale: tuple[float, float] = (0.5, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    flip_p: float = 0.5,
) -> Tensor:
    """Per-sample RandomResizedCrop (bilinear) then horizontal flip, on tensors of any device.

    Parameters are drawn from torch's global RNG, so the trial seed fixes them. Crops are
    never larger than the image, so the resize only upsamples and antialiasing is moot.
    """
    out = []
    for img in x:
        top, left, h, w = RandomResizedCrop.get_params(img, list(scale), list(ratio))
        img = TF.resized_crop(img, top, left, h, w, [size, size], InterpolationMode.BILINEAR, antialias=False)
        if torch.rand(1).item() < flip_p:
            img = TF.horizontal_flip(img)
        out.append(img)
    return torch.stack(out)


# ------------------------------------------------------------------------ calibration


class CalibrationGenerator:
    """GDFQ's generator (CE + 0.1·BNS), used only to feed range calibration (METHODS §6.2)."""

    def __init__(self, ctx: TrainContext, batch_size: int, bns_weight: float) -> None:
        self.ctx = ctx
        self.batch_size = batch_size
        self.bns_weight = bns_weight
        self.net = CifarGenerator(ctx.num_classes).to(ctx.device).train()
        o = ctx.spec.optim
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=o.generator_lr, betas=o.generator_betas)
        self.bns = BNStatsLoss(ctx.teacher)

    def set_epoch(self, epoch: int) -> None:
        lr = self.ctx.spec.optim.generator_lr * self.ctx.spec.budget.lr_factor(epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def step(self) -> Batch:
        ctx = self.ctx
        z = torch.randn(self.batch_size, self.net.latent_dim, device=ctx.device)
        y = torch.randint(0, ctx.num_classes, (self.batch_size,), device=ctx.device)
        x = self.net(z, y)
        with self.bns.recording():
            t, feats = ctx.teacher_forward(x)
        loss = F.cross_entropy(t, y) + self.bns_weight * self.bns.loss()
        step_on(self.optimizer, loss, self.net)
        return Batch(x=x.detach(), y=y, teacher_logits=t.detach(), teacher_features=feats)


# ---------------------------------------------------------------------------- plugin


@contextmanager
def _taps_with_graph(taps: FeatureTaps, enabled: bool) -> Iterator[None]:
    """Let the teacher taps keep the graph for one forward: the perturbation gradient of the
    FA term flows through the teacher's features too (METHODS §6.3)."""
    previous = taps.detach
    if enabled:
        taps.detach = False
    try:
        yield
    finally:
        taps.detach = previous


class HAST(Generator):
    name = "hast"
    description = (
        "HAST: offline hard-sample synthesis + GDFQ-generator calibration; QAT with FGSM difficulty "
        "promotion and KD + feature-alignment student loss"
    )
    Options = HASTOptions

    def __init__(self, options: PluginOptions, ctx: TrainContext) -> None:
        super().__init__(options, ctx)
        opts: HASTOptions = self.options  # type: ignore[assignment]
        if opts.hparams == "code":
            lambda_fa, eps = CODE_HPARAMS
        elif ctx.spec.dataset in HOCON_HPARAMS:
            lambda_fa, eps = HOCON_HPARAMS[ctx.spec.dataset]
        else:
            raise UserError(
                f"HAST has no hocon values for dataset '{ctx.spec.dataset}'; use hparams=code or set lambda_fa and eps"
            )
        self.lambda_fa = lambda_fa if opts.lambda_fa is None else opts.lambda_fa
        self.eps = eps if opts.eps is None else opts.eps
        if "default" not in ctx.teacher_entry.feature_taps:
            raise UserError(
                f"model '{ctx.teacher_entry.name}' declares no 'default' feature taps, which HAST's feature "
                "alignment needs; add them to the model plugin"
            )
        self.fa_taps = tuple(ctx.teacher_entry.feature_taps["default"])
        self.calibration: CalibrationGenerator | None = CalibrationGenerator(
            ctx, opts.calibration_batch, opts.calibration_bns_weight
        )
        self.images: Tensor | None = None
        self.labels: Tensor | None = None
        self._perm: Tensor | None = None
        self._pos = 0

    # -- stage 1: the synthetic set
    def synthesis_settings(self) -> dict[str, Any]:
        """Everything the synthetic set depends on; its sha256 names the cache entry."""
        o: HASTOptions = self.options  # type: ignore[assignment]
        ctx = self.ctx
        return {
            "format": CACHE_FORMAT,
            "teacher_sha256": teacher_fingerprint(ctx.teacher),
            "dataset": ctx.spec.dataset,
            "num_classes": ctx.num_classes,
            "num_images": o.num_images,
            "batch": o.synthesis_batch,
            "iters": o.synthesis_iters,
            "lr": o.synthesis_lr,
            "plateau": PLATEAU,
            "hardness": [o.hardness_beta, o.hardness_gamma],
            "seed": ctx.spec.seed if o.synthesis_seed is None else o.synthesis_seed,
        }

    def cache(self) -> SyntheticSetCache:
        return SyntheticSetCache(Path(self.ctx.cache_dir) / "hast", self.synthesis_settings())

    def prepare(self) -> None:
        """Load the verified synthetic set from the cache, or (re)build it.

        Synthesis uses its own seeded RNG per batch, never the global one, so a trial draws
        the same random numbers afterwards whether the set came from the cache or not.
        """
        o: HASTOptions = self.options  # type: ignore[assignment]
        cache = self.cache()
        loaded, problem = cache.load(o.num_images, self.ctx.num_classes)
        if loaded is None:
            if problem:
                self.ctx.report(f"HAST cache {cache.dir} unusable ({problem}); re-synthesizing", 0, o.num_images)
                cache.invalidate()
            x, y = self._synthesize(cache)
            cache.save(x, y)
            loaded, problem = cache.load(o.num_images, self.ctx.num_classes)
            if loaded is None:
                raise RuntimeError(f"the HAST synthetic set just written to {cache.dir} fails verification: {problem}")
        x, y = loaded
        self.images, self.labels = x.to(self.ctx.device), y.to(self.ctx.device)
        self._perm, self._pos = None, 0

    def _synthesize(self, cache: SyntheticSetCache) -> tuple[Tensor, Tensor]:
        o: HASTOptions = self.options  # type: ignore[assignment]
        ctx = self.ctx
        seed = cache.settings["seed"]
        sizes = [min(o.synthesis_batch, o.num_images - start) for start in range(0, o.num_images, o.synthesis_batch)]
        total = len(sizes) * o.synthesis_iters
        bns = BNStatsLoss(ctx.teacher)
        xs, ys = [], []
        for index, size in enumerate(sizes):
            done = index * o.synthesis_iters
            part = cache.load_part(index, size, ctx.num_classes)
            if part is None:
                rng = torch.Generator().manual_seed(_batch_seed(seed, index))
                y = torch.randint(0, ctx.num_classes, (size,), generator=rng)
                x0 = torch.randn((size, *IMAGE_SHAPE), generator=rng)
                desc = f"HAST synthesis batch {index + 1}/{len(sizes)}"

                def on_step(it: int, done: int = done, desc: str = desc) -> None:
                    if it % 10 == 0 or it == o.synthesis_iters:
                        ctx.report(desc, done + it, total)

                x = synthesize_batch(ctx.teacher, bns, x0.to(ctx.device), y.to(ctx.device), o, on_step).cpu()
                cache.save_part(index, x, y)
                part = (x, y)
            else:
                ctx.report(f"HAST synthesis batch {index + 1}/{len(sizes)} (cached)", done + o.synthesis_iters, total)
            xs.append(part[0])
            ys.append(part[1])
        return torch.cat(xs), torch.cat(ys)

    # -- stage 2: batches
    def start_epoch(self, epoch: int) -> None:
        if epoch < self.ctx.spec.budget.warmup_epochs:
            if self.calibration is not None:
                self.calibration.set_epoch(epoch)
        else:
            self.calibration = None  # never used again (the reference moves it to the CPU)

    def next_batch(self, epoch: int) -> Batch:
        if epoch < self.ctx.spec.budget.warmup_epochs:
            if self.calibration is None:
                raise RuntimeError("HAST calibration generator requested after the calibration epochs")
            return self.calibration.step()
        if self.images is None or self.labels is None:
            raise RuntimeError("HAST.next_batch called before prepare()")
        idx = self._next_indices(self.ctx.spec.budget.batch_size).to(self.images.device)
        return Batch(x=random_resized_crop_flip(self.images[idx]), y=self.labels[idx])

    def _next_indices(self, count: int) -> Tensor:
        """The next ``count`` indices of the shuffled set, reshuffling (global RNG) at each new pass."""
        assert self.labels is not None
        n = self.labels.shape[0]
        chunks = []
        while count > 0:
            if self._perm is None or self._pos >= n:
                self._perm, self._pos = torch.randperm(n), 0
            take = min(count, n - self._pos)
            chunks.append(self._perm[self._pos:self._pos + take])
            self._pos += take
            count -= take
        return torch.cat(chunks)

    # -- stage 2b: the student step with difficulty promotion
    def student_step(
        self, batch: Batch, objective: StudentObjective, optimizer: torch.optim.Optimizer
    ) -> dict[str, Tensor]:
        """Clean pass, one FGSM step on the input, perturbed pass, one SGD step on their sum (§6.3).

        The input gradient g = dL/dx and the student weight gradients of the clean loss come
        from a single backward (the reference backpropagates the clean loss twice, once
        through the teacher for nothing: H8). Returned terms are the clean + perturbed sums
        per key (so ``total`` is what the step minimized) plus ``adv_total``, the perturbed part.
        """
        o: HASTOptions = self.options  # type: ignore[assignment]
        ctx = self.ctx
        params = [p for p in ctx.student.parameters() if p.requires_grad]
        x = batch.x.detach().clone().requires_grad_(True)
        with torch.set_grad_enabled(o.perturb_through_teacher), _taps_with_graph(ctx.teacher_taps, o.perturb_through_teacher):
            t, t_feats = ctx.teacher_forward(x)
        s, s_feats = ctx.student_forward(x)
        clean = objective(LossInputs(s, t, batch.y, s_feats, t_feats))
        grads = torch.autograd.grad(clean["total"], [x, *params], allow_unused=True)
        x_adv = (x + self.eps * grads[0].sign()).detach()

        with torch.no_grad():
            t_adv, t_adv_feats = ctx.teacher_forward(x_adv)
        s_adv, s_adv_feats = ctx.student_forward(x_adv)
        adv = objective(LossInputs(s_adv, t_adv, batch.y, s_adv_feats, t_adv_feats))
        optimizer.zero_grad(set_to_none=True)
        for p, g in zip(params, grads[1:]):
            p.grad = g
        adv["total"].backward()
        optimizer.step()
        terms = {k: clean[k].detach() + adv[k].detach() for k in clean}
        terms["adv_total"] = adv["total"].detach()
        return terms

    def native_losses(self) -> NativeLosses:
        o: HASTOptions = self.options  # type: ignore[assignment]
        logit = HASTLogitLoss(o.kd_alpha, o.temperature)
        return NativeLosses(logit=logit, objective=HASTObjective(logit, self.lambda_fa, self.fa_taps))

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"perm": self._perm, "pos": self._pos}
        if self.calibration is not None:
            state["calibration"] = {"net": self.calibration.net.state_dict(),
                                    "optimizer": self.calibration.optimizer.state_dict()}
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._perm, self._pos = state.get("perm"), int(state.get("pos", 0))
        if "calibration" in state and self.calibration is not None:
            self.calibration.net.load_state_dict(state["calibration"]["net"])
            self.calibration.optimizer.load_state_dict(state["calibration"]["optimizer"])
        elif "calibration" not in state:
            self.calibration = None


@hookimpl
def register_generators(register) -> None:
    register(HAST)
