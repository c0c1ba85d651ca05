"""The pixel-synthesis engine (docs/methods/common.md#pixel-synthesis-engine): images optimized against
the frozen teacher, the first stage of HAST, ZeroQ and IntraQ, written once.

A method supplies the starting pixels, a :class:`PixelSchedule` (iterations, Adam lr, plateau,
an optional augmentation and its probability), a BN-statistics loss of the family
(:class:`zsqbench.toolkit.bn_stats.BNStatsLoss`) and its ordered loss terms; each term receives a
:class:`SynthesisView` (pre-augmentation and augmented pixels, teacher logits, the recorded BN
loss, tapped features, labels, per-batch context such as IntraQ's class centres) and returns a
scalar. Gradients go to the pixels only; the result is the final, un-augmented, unclipped batch.

The set-level helpers (:func:`synthesize_parts`, :func:`load_or_build`) make a whole set batch by
batch into a :class:`zsqbench.toolkit.cache.TensorCache` entry: each batch seeded from its own
index (never the global RNG, so a trial draws the same numbers afterwards whether its set came
from the cache or not), saved as a part as soon as it is done (an interrupted build resumes), the
assembled set verified before use, progress reported every ten iterations.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Mapping

import torch
from torch import Tensor, nn

from zsqbench.api.features import FeatureTaps
from zsqbench.api.generator import TrainContext
from zsqbench.toolkit.bn_stats import BNStatsLoss
from zsqbench.toolkit.cache import Check, TensorCache, state_fingerprint

Report = Callable[[str, int, int], None]


@dataclass(frozen=True)
class PixelSchedule:
    """How one batch is optimized: Adam on the pixels, ReduceLROnPlateau (mode min) stepped on the
    total loss every iteration, and an augmentation applied with probability ``augment_p`` per
    iteration (one coin for the whole batch, as IntraQ's code)."""

    iters: int
    lr: float
    patience: int
    min_lr: float = 1e-4
    factor: float = 0.1
    augment_p: float = 0.0

    def plateau(self) -> dict[str, Any]:
        """The scheduler's settings (part of the methods' cache keys)."""
        return {"mode": "min", "factor": self.factor, "patience": self.patience, "min_lr": self.min_lr}


@dataclass
class SynthesisView:
    """What each loss term of one iteration sees. ``bn_loss`` is the BN-statistics loss of this
    forward (already reduced); ``features`` the taps the engine was given, with their graph."""

    x: Tensor
    x_aug: Tensor
    logits: Tensor
    bn_loss: Tensor
    features: dict[str, Tensor]
    labels: Tensor | None
    context: dict[str, Any] = field(default_factory=dict)


LossTerm = Callable[[SynthesisView], Tensor]


def bn_term(view: SynthesisView) -> Tensor:
    """The BN-statistics loss as a term (place it where the method adds it)."""
    return view.bn_loss


@dataclass
class SynthesizedBatch:
    """The final pixels and each term's value at the first and the last iteration (the
    diagnostics of docs/methods/common.md#synthesis-diagnostics: the BN loss should fall substantially)."""

    x: Tensor
    first: dict[str, float]
    last: dict[str, float]


def optimize_pixels(
    teacher: nn.Module,
    x0: Tensor,
    terms: Mapping[str, LossTerm],
    schedule: PixelSchedule,
    bn: BNStatsLoss,
    *,
    labels: Tensor | None = None,
    context: dict[str, Any] | None = None,
    taps: FeatureTaps | None = None,
    augment: Callable[[Tensor], Tensor] | None = None,
    augment_seed: int | None = None,
    on_step: Callable[[int], None] = lambda it: None,
) -> SynthesizedBatch:
    """Optimize one batch of pixels (the loop of docs/methods/common.md#pixel-synthesis-engine).

    Each iteration: augment (when a coin with probability ``schedule.augment_p`` lands), teacher
    forward with the BN hooks (and ``taps``) recording, the terms added in their given order,
    the gradient with respect to the pixels alone, one Adam step, the plateau scheduler stepped
    on the total. The augmentation and its coin draw from torch's global RNG, forked and seeded
    with ``augment_seed`` for the batch, so the caller's RNG stream is left untouched.
    """
    if augment is not None and augment_seed is None:
        raise ValueError("an augmented synthesis needs augment_seed (it must not draw from the trial's RNG)")
    x = x0.detach().clone().requires_grad_(True)
    optimizer = torch.optim.Adam([x], lr=schedule.lr)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, **schedule.plateau())
    context = context or {}
    first: dict[str, float] = {}
    last: dict[str, float] = {}
    with torch.random.fork_rng(devices=[], enabled=augment is not None):
        if augment is not None:
            torch.manual_seed(augment_seed)  # type: ignore[arg-type]
        for it in range(schedule.iters):
            use_aug = augment is not None and torch.rand(()).item() < schedule.augment_p
            x_aug = augment(x) if use_aug else x  # type: ignore[misc]
            with bn.recording(), (taps.active() if taps is not None else nullcontext()):
                logits = teacher(x_aug)
                features = taps.take(detach=False) if taps is not None else {}
            view = SynthesisView(x, x_aug, logits, bn.loss(x_aug), features, labels, context)
            values = {name: term(view) for name, term in terms.items()}
            parts = iter(values.values())
            loss = next(parts)
            for value in parts:
                loss = loss + value
            (grad,) = torch.autograd.grad(loss, [x])
            x.grad = grad
            optimizer.step()
            scheduler.step(loss.item())
            if it == 0 or it + 1 == schedule.iters:
                record = {name: float(v.detach()) for name, v in values.items()} | {"total": loss.item()}
                (first if it == 0 else last).update(record)
                if schedule.iters == 1:
                    last.update(record)
            on_step(it + 1)
    return SynthesizedBatch(x.detach(), first, last)


# ------------------------------------------------------------------ sets of batches and their cache


def batch_seed(tag: str, seed: int, index: int) -> int:
    """The seed of batch ``index`` of a set: independent of every other batch and of the global RNG."""
    digest = hashlib.sha256(f"{tag}:{seed}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def batch_sizes(count: int, batch: int) -> list[int]:
    """``count`` images in batches of ``batch`` (the last one smaller when it does not divide)."""
    return [min(batch, count - start) for start in range(0, count, batch)]


def check_set(count: int, shape: tuple[int, ...], num_classes: int) -> Check:
    """A cache check: ``x`` (count, *shape) finite float32 and ``y`` (count,) int64 labels in range."""

    def check(t: dict[str, Tensor]) -> str:
        x, y = t.get("x"), t.get("y")
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

    return check


#: Makes batch ``index`` of ``size`` images; reports its iterations through the callback.
MakeBatch = Callable[[int, int, Callable[[int], None]], dict[str, Tensor]]


def synthesize_parts(
    cache: TensorCache,
    sizes: list[int],
    iters: int,
    make: MakeBatch,
    check: Callable[[int], Check],
    report: Report,
    label: str,
    on_part: Callable[[int, dict[str, Tensor]], None] = lambda index, part: None,
) -> list[dict[str, Tensor]]:
    """Every batch of a set, from the cache's finished parts where intact, else made and saved as
    a part at once; ``on_part`` sees each batch in order (IntraQ's class centres follow them)."""
    total = len(sizes) * iters
    parts = []
    for index, size in enumerate(sizes):
        done = index * iters
        part = cache.load_part(index, check(size))
        if part is None:
            desc = f"{label} synthesis batch {index + 1}/{len(sizes)}"

            def on_step(it: int, done: int = done, desc: str = desc) -> None:
                if it % 10 == 0 or it == iters:
                    report(desc, done + it, total)

            part = make(index, size, on_step)
            cache.save_part(index, part)
        else:
            report(f"{label} synthesis batch {index + 1}/{len(sizes)} (cached)", done + iters, total)
        on_part(index, part)
        parts.append(part)
    return parts


def assemble(parts: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    """The set from its batches: ``x`` and ``y`` concatenated, any per-batch record every batch has
    (``diagnostics``, IntraQ's ``checks``) stacked."""
    out = {"x": torch.cat([p["x"] for p in parts]), "y": torch.cat([p["y"] for p in parts])}
    shared = set.intersection(*(set(p) for p in parts)) - {"x", "y"} if parts else set()
    for key in sorted(shared):
        out[key] = torch.stack([p[key] for p in parts])
    return out


def load_or_build(cache: TensorCache, check: Check, build: Callable[[], dict[str, Tensor]], report: Report,
                  label: str, count: int) -> dict[str, Tensor]:
    """The verified set from the cache; else (re)built, saved, and verified again before use. A
    damaged entry is reported and rebuilt, never used."""
    loaded, problem = cache.load(check)
    if loaded is None:
        if problem:
            report(f"{label} cache {cache.dir} unusable ({problem}); re-synthesizing", 0, count)
            cache.invalidate()
        cache.save(build())
        loaded, problem = cache.load(check)
        if loaded is None:
            raise RuntimeError(f"the {label} synthetic set just written to {cache.dir} fails verification: {problem}")
    return loaded


def diagnostics_tensor(batch: SynthesizedBatch, names: list[str]) -> Tensor:
    """(2, len(names)) float64: each named term at the first and the last iteration (stored with
    the batch, so a set read from the cache still tells how its synthesis went)."""
    return torch.tensor([[batch.first.get(n, float("nan")) for n in names],
                         [batch.last.get(n, float("nan")) for n in names]], dtype=torch.float64)


def describe_diagnostics(diagnostics: Tensor | None, names: list[str]) -> str:
    """"bn 812.3 -> 41.2, total ..." (first -> last iteration, mean over the set's batches)."""
    if diagnostics is None:
        return ""
    mean = diagnostics.mean(dim=0)
    return ", ".join(f"{n} {mean[0, i].item():.4g} -> {mean[1, i].item():.4g}" for i, n in enumerate(names))


class PixelSet(ABC):
    """A method's cached synthetic set, made batch by batch with the engine: what HAST's, ZeroQ's
    and IntraQ's sets share (cache key, per-batch seeds, resumable parts, verification,
    diagnostics). A subclass names its ``label`` and cache ``folder``, the settings its images
    depend on, and how one batch is made."""

    label: ClassVar[str]
    folder: ClassVar[str]
    #: The diagnostics' term names, in the order :func:`diagnostics_tensor` stores them.
    terms: ClassVar[list[str]] = ["bn", "total"]
    FORMAT: ClassVar[int] = 1

    def __init__(self, ctx: TrainContext, num_images: int, batch: int, iters: int, seed: int) -> None:
        self.ctx = ctx
        self.num_images, self.batch, self.iters, self.seed = num_images, batch, iters, seed
        self.image_shape = tuple(ctx.teacher_entry.input_size)
        #: Per-batch records of the loaded set (``diagnostics``: terms at the first and last iteration).
        self.records: dict[str, Tensor] = {}
        self.diagnostics: Tensor | None = None

    @abstractmethod
    def method_settings(self) -> dict[str, Any]:
        """The method's own synthesis settings (losses, schedule, init, ...), part of the cache key."""

    @abstractmethod
    def make_batch(self, index: int, size: int, rng: torch.Generator, on_step: Callable[[int], None]
                   ) -> dict[str, Tensor]:
        """Batch ``index``: ``x`` (on the CPU), ``y`` and ``diagnostics``, drawing its randomness
        from ``rng`` (seeded for this batch) only."""

    def start(self) -> None:
        """Called before the first batch (state that follows the batches starts empty)."""

    def on_part(self, index: int, part: dict[str, Tensor]) -> None:
        """Sees every finished batch in order, made or read from the cache."""

    def settings(self) -> dict[str, Any]:
        """Everything the set depends on; its sha256 names the cache entry."""
        ctx = self.ctx
        return {"format": self.FORMAT, "method": self.label, "teacher_sha256": state_fingerprint(ctx.teacher),
                "dataset": ctx.spec.dataset, "num_classes": ctx.num_classes, "image_shape": list(self.image_shape),
                "num_images": self.num_images, "batch": self.batch, "iters": self.iters, "seed": self.seed,
                **self.method_settings()}

    def cache(self) -> TensorCache:
        return TensorCache(self.ctx.cache_dir / self.folder, self.settings())

    def load_or_build(self) -> tuple[Tensor, Tensor]:
        """The verified set (images, labels) from the cache, else synthesized, saved and verified."""
        cache = self.cache()
        check = check_set(self.num_images, self.image_shape, self.ctx.num_classes)
        loaded = load_or_build(cache, check, lambda: self._build(cache), self.ctx.report, self.label, self.num_images)
        self.records = {k: v for k, v in loaded.items() if k not in ("x", "y")}
        self.diagnostics = self.records.get("diagnostics")
        summary = describe_diagnostics(self.diagnostics, self.terms)
        if summary:
            self.ctx.report(f"{self.label} set: {summary} (first -> last iteration)", self.num_images, self.num_images)
        return loaded["x"], loaded["y"]

    def _build(self, cache: TensorCache) -> dict[str, Tensor]:
        self.start()

        def make(index: int, size: int, on_step: Callable[[int], None]) -> dict[str, Tensor]:
            rng = torch.Generator().manual_seed(batch_seed(f"{self.folder}-synthesis", self.seed, index))
            return self.make_batch(index, size, rng, on_step)

        parts = synthesize_parts(cache, batch_sizes(self.num_images, self.batch), self.iters, make,
                                 lambda size: check_set(size, self.image_shape, self.ctx.num_classes),
                                 self.ctx.report, self.label, self.on_part)
        return assemble(parts)
