"""HAST stage 1: hard-sample synthesis (METHODS §6.1) and its cache.

Pixels are optimized against the teacher (focal "hardness" CE + BN statistics). The set is
cached (:class:`zsqbench.toolkit.cache.TensorCache`), keyed by the teacher's weights and every
synthesis setting, verified before use and resumable batch by batch.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any, Callable

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from zsqbench.api import TrainContext
from zsqbench.toolkit.bn_stats import BNStatsLoss
from zsqbench.toolkit.cache import TensorCache, state_fingerprint

if TYPE_CHECKING:  # pragma: no cover
    from zsqbench_plugins.generators.hast import HASTOptions

# Synthesis-optimizer constants of the reference (METHODS §6.1); part of the cache key.
PLATEAU = {"mode": "min", "factor": 0.1, "patience": 50, "min_lr": 1e-4}
CACHE_FORMAT = 2  # 2: zsqbench.toolkit.cache layout


def hardness_loss(logits: Tensor, labels: Tensor, beta: float, gamma: float) -> Tensor:
    """β·mean_b[(1 − p_b)^γ · CE_b] with p_b = softmax(logits_b)_{y_b} (METHODS §6.1).

    Focal weighting: samples the teacher already finds easy count less, so the pixels move
    towards hard (low-confidence) images. The gradient also flows through the weight.
    """
    log_p = F.log_softmax(logits, dim=1).gather(1, labels[:, None]).squeeze(1)
    return beta * ((1 - log_p.exp()).pow(gamma) * -log_p).mean()


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


def _check_tensors(x: Any, y: Any, count: int, shape: tuple[int, ...], num_classes: int) -> str:
    if not isinstance(x, Tensor) or not isinstance(y, Tensor):
        return "cached object is not a pair of tensors"
    if tuple(x.shape) != (count, *shape) or x.dtype != torch.float32:
        return f"images have shape {tuple(x.shape)} {x.dtype}, expected {(count, *shape)} float32"
    if tuple(y.shape) != (count,) or y.dtype != torch.int64:
        return f"labels have shape {tuple(y.shape)} {y.dtype}, expected ({count},) int64"
    if count and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        return f"labels outside 0..{num_classes - 1}"
    if not torch.isfinite(x).all():
        return "images contain NaN/Inf"
    return ""


def set_check(count: int, shape: tuple[int, ...], num_classes: int) -> Callable[[dict[str, Tensor]], str]:
    return lambda t: _check_tensors(t.get("x"), t.get("y"), count, shape, num_classes)


class SyntheticSet:
    """The synthetic set of one HAST trial: its settings, its cache entry, and building it."""

    def __init__(self, ctx: TrainContext, options: "HASTOptions") -> None:
        self.ctx = ctx
        self.options = options
        self.image_shape = tuple(ctx.teacher_entry.input_size)

    def settings(self) -> dict[str, Any]:
        """Everything the synthetic set depends on; its sha256 names the cache entry."""
        o = self.options
        ctx = self.ctx
        return {
            "format": CACHE_FORMAT,
            "teacher_sha256": state_fingerprint(ctx.teacher),
            "dataset": ctx.spec.dataset,
            "num_classes": ctx.num_classes,
            "image_shape": list(self.image_shape),
            "num_images": o.num_images,
            "batch": o.synthesis_batch,
            "iters": o.synthesis_iters,
            "lr": o.synthesis_lr,
            "plateau": PLATEAU,
            "hardness": [o.hardness_beta, o.hardness_gamma],
            "seed": ctx.spec.seed if o.synthesis_seed is None else o.synthesis_seed,
        }

    def cache(self) -> TensorCache:
        return TensorCache(self.ctx.cache_dir / "hast", self.settings())

    def load_or_build(self) -> tuple[Tensor, Tensor]:
        """The verified set from the cache, else (re)built, saved and verified.

        Synthesis uses its own seeded RNG per batch, never the global one, so a trial draws
        the same random numbers afterwards whether the set came from the cache or not.
        """
        o = self.options
        cache = self.cache()
        check = set_check(o.num_images, self.image_shape, self.ctx.num_classes)
        loaded, problem = cache.load(check)
        if loaded is None:
            if problem:
                self.ctx.report(f"HAST cache {cache.dir} unusable ({problem}); re-synthesizing", 0, o.num_images)
                cache.invalidate()
            x, y = self._synthesize(cache)
            cache.save({"x": x, "y": y})
            loaded, problem = cache.load(check)
            if loaded is None:
                raise RuntimeError(f"the HAST synthetic set just written to {cache.dir} fails verification: {problem}")
        return loaded["x"], loaded["y"]

    def _synthesize(self, cache: TensorCache) -> tuple[Tensor, Tensor]:
        o = self.options
        ctx = self.ctx
        seed = cache.settings["seed"]
        sizes = [min(o.synthesis_batch, o.num_images - start) for start in range(0, o.num_images, o.synthesis_batch)]
        total = len(sizes) * o.synthesis_iters
        bns = BNStatsLoss(ctx.teacher)
        xs, ys = [], []
        for index, size in enumerate(sizes):
            done = index * o.synthesis_iters
            part = cache.load_part(index, set_check(size, self.image_shape, ctx.num_classes))
            if part is None:
                rng = torch.Generator().manual_seed(_batch_seed(seed, index))
                y = torch.randint(0, ctx.num_classes, (size,), generator=rng)
                x0 = torch.randn((size, *self.image_shape), generator=rng)
                desc = f"HAST synthesis batch {index + 1}/{len(sizes)}"

                def on_step(it: int, done: int = done, desc: str = desc) -> None:
                    if it % 10 == 0 or it == o.synthesis_iters:
                        ctx.report(desc, done + it, total)

                x = synthesize_batch(ctx.teacher, bns, x0.to(ctx.device), y.to(ctx.device), o, on_step).cpu()
                cache.save_part(index, {"x": x, "y": y})
            else:
                ctx.report(f"HAST synthesis batch {index + 1}/{len(sizes)} (cached)", done + o.synthesis_iters, total)
                x, y = part["x"], part["y"]
            xs.append(x)
            ys.append(y)
        return torch.cat(xs), torch.cat(ys)
