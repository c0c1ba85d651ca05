"""Gradient inundation (GI): AIT's student optimizer (CVPR 2022; docs/methods/ait.md#gradient-inundation).

Plain SGD (momentum, Nesterov), except that the step on every weight tensor the quantizer
quantizes is enlarged by a per-tensor factor a ≥ 1, searched at every step, until a target
fraction p of the tensor's integer codes changes:

* direction D = G + μ·B̃ with the *prospective* buffer B̃ = μ·B + G (B̃ = G before the first
  step); weight decay is left out of D unless ``include_wd`` (the code leaves it out, T2);
* f(a) = share of codes that differ between W and W − a·η·D, each quantized on its own range
  (:meth:`zsqbench.api.quantizer.WeightCodeQuantizer.weight_codes`);
* a = 1 if f(1) ≥ p; else a doubles until f(a) ≥ p (at most to 2^``capped_doublings`` = 128 in
  the capped first training epoch, to 2^``max_doublings`` after it, so a zero or dead direction
  never hangs, T1), then ``bisection_rounds`` rounds of bisection on [a/2, a] stop early when
  |f(mid) − p| < ``tolerance``·p; the result is the last midpoint (code) or the bracket's upper
  end (``final="upper"``, which guarantees f ≥ p, T3). A tensor whose D is all zero keeps a = 1;
* the update is SGD's with lr·a for that tensor: the buffer takes the unscaled gradient. a stays
  out of ``param_group["lr"]``, which the core resets every epoch;
* p(e) = p₀·decay^#{milestones ≤ e} and the capped mode are derived from the epoch the trainer
  announces (:meth:`GISGD.start_epoch`) and saved in ``state_dict`` (the code mutates a shared
  setting and a resumed run restarts at p₀, T4).

Parameters outside the quantizer's list (BN, biases) take exactly torch's SGD step (its own
functional ``torch.optim.sgd.sgd``), bit for bit. The weights come from the quantizer, not from
name substrings (T8).

Exactness and speed (T9). On a GPU the search runs without a single host synchronization:
every doubling candidate of a tensor is evaluated in one batched pass, then every midpoint the
bisection could visit (2^rounds − 1, from the bracket's dyadic grid), and the bisection is
replayed on those values for all tensors at once (:func:`search`). On the CPU, where reading a
value costs nothing, candidates are evaluated one at a time and the search stops as soon as it
knows (:func:`search_one`, 4-5x fewer evaluations); both give the same numbers (tested), since
the midpoints are exact dyadic values and every candidate is the same elementwise expression.
The candidates are computed as
``W − D·s`` with ``s = float(η·a)`` (a product, then a difference, elementwise, batched or not),
and the applied update is the same expression for the chosen ``s``, so the realized share of
changed codes is exactly f(a) when D is the applied direction (weight decay 0, or included).
Torch's SGD instead fuses ``W + (−η)·D`` into one multiply-add, so a GI tensor's new value can
differ from torch SGD at lr·a by one rounding of W (its momentum buffer is bit-identical).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Literal

import torch
from torch import Tensor, nn
from torch.optim.sgd import sgd

from zsqbench.api import EpochAwareOptimizer, Phase, QuantizedWeight, WeightCodeQuantizer


@dataclass(frozen=True)
class GISettings:
    """The search's constants (the ait loss plugin's options, milestones resolved)."""

    threshold: float = 1e-3  # p₀
    threshold_decay: float = 0.1
    threshold_milestones: tuple[int, ...] = ()
    bisection_rounds: int = 5
    tolerance: float = 0.01  # early stop when |f − p| < tolerance·p
    final: Literal["midpoint", "upper"] = "midpoint"
    include_wd: bool = False
    capped_doublings: int = 7  # a ≤ 2^7 = 128 in capped mode ("stop once a > 100")
    max_doublings: int = 24  # a ≤ 2^24 afterwards
    first_uncapped_epoch: int = 5  # warm-up epochs + 1 in the code
    #: How candidates are evaluated; the same numbers either way. True: every candidate at once,
    #: no host synchronization (GPU); False: one at a time, stopping as soon as the answer is known
    #: (CPU, where a synchronization is free and 4-5x fewer candidates are evaluated); None: by device.
    batched: bool | None = None

    def threshold_at(self, epoch: int) -> float:
        """p(e) = p₀ · decay^#{m ≤ e}: the same rule as the LR's multi-step decay."""
        return self.threshold * self.threshold_decay ** sum(1 for m in self.threshold_milestones if m <= epoch)

    def capped_at(self, epoch: int) -> bool:
        return epoch < self.first_uncapped_epoch


@dataclass
class SearchResult:
    """One step's search, one entry per GI tensor (device tensors): the factor a, the final
    bracket [lo, hi], the last doubling value a_d, f(1), whether the doubling stopped at its
    limit without reaching p, and whether the tensor was skipped (D = 0)."""

    scale: Tensor
    lo: Tensor
    hi: Tensor
    doubled: Tensor
    natural: Tensor
    limited: Tensor
    skipped: Tensor


def doubling_scales(doublings: int, device: torch.device) -> Tensor:
    """The doubling candidates 1, 2, 4, ..., 2^doublings (float64)."""
    return torch.pow(2.0, torch.arange(doublings + 1, dtype=torch.float64, device=device))


def tree_scales(doubled: Tensor, rounds: int) -> Tensor:
    """Every midpoint a bisection of [a_d/2, a_d] can evaluate in ``rounds`` rounds, for each
    tensor: a_d/2·(1 + k/2^rounds), k = 1 … 2^rounds − 1 (exact dyadic values, equal to the
    midpoints computed as (lo + hi)/2). Shape (tensors, 2^rounds − 1)."""
    k = torch.arange(1, 2**rounds, dtype=torch.float64, device=doubled.device)
    return doubled.unsqueeze(1) / 2 * (1 + k / 2**rounds)


def search_one(flips: Callable[[float], float], p: float, settings: GISettings,
               doublings: int) -> tuple[float, float, float, float, float, bool]:
    """The search (docs/methods/ait.md#gradient-inundation) for one tensor, one candidate at a
    time, as the code states it: (a, lo, hi, a_d, f(1), whether the doubling stopped at its limit
    short of p)."""
    natural = value = flips(1.0)
    j = 0
    while value < p and j < doublings:
        j += 1
        value = flips(2.0**j)
    if j == 0:  # f(1) >= p already (or no doubling allowed)
        return 1.0, 1.0, 1.0, 1.0, natural, natural < p
    limited = value < p
    doubled = 2.0**j
    lo, hi, last = doubled / 2, doubled, doubled
    for _ in range(settings.bisection_rounds):
        last = (lo + hi) / 2
        value = flips(last)
        if value < p:
            lo = last
        else:
            hi = last
        if abs(value - p) < settings.tolerance * p:
            break
    return (hi if settings.final == "upper" else last), lo, hi, doubled, natural, limited


def search(flips_doubling: Tensor, flips_tree_fn: Any, p: float, settings: GISettings, doublings: int) -> SearchResult:
    """The search (docs/methods/ait.md#gradient-inundation) for every tensor at once, from flip fractions alone (no host
    synchronization); the same results as :func:`search_one`.

    ``flips_doubling``: (tensors, doublings + 1), f at 1, 2, ..., 2^doublings.
    ``flips_tree_fn(doubled)``: f at :func:`tree_scales` of the chosen a_d, (tensors, 2^R − 1).
    """
    rounds = settings.bisection_rounds
    reached = flips_doubling >= p
    found = reached.any(dim=1)
    limit = torch.full_like(found, doublings, dtype=torch.int64)
    first = torch.where(found, reached.to(torch.int64).argmax(dim=1), limit)  # argmax: the first True
    doubled = torch.pow(2.0, first.to(torch.float64))
    searching = first > 0
    steps = 2**rounds
    lo_k = torch.zeros_like(first)
    hi_k = torch.full_like(first, steps)
    last_k = hi_k.clone()
    if rounds:
        flips_tree = flips_tree_fn(doubled)
        active = searching.clone()
        for _ in range(rounds):
            mid = (lo_k + hi_k) // 2
            f_mid = flips_tree.gather(1, (mid - 1).unsqueeze(1)).squeeze(1)
            below = f_mid < p
            lo_k = torch.where(active & below, mid, lo_k)
            hi_k = torch.where(active & ~below, mid, hi_k)
            last_k = torch.where(active, mid, last_k)
            active = active & ((f_mid - p).abs() >= settings.tolerance * p)
    final_k = hi_k if settings.final == "upper" else last_k
    half = doubled / 2
    one = torch.ones_like(doubled)
    scale = torch.where(searching, half * (1 + final_k.to(torch.float64) / steps), one)
    lo = torch.where(searching, half * (1 + lo_k.to(torch.float64) / steps), one)
    hi = torch.where(searching, half * (1 + hi_k.to(torch.float64) / steps), one)
    return SearchResult(scale, lo, hi, doubled, flips_doubling[:, 0], ~found, torch.zeros_like(found))


class GISGD(EpochAwareOptimizer):
    """SGD with gradient inundation on the quantizer's weights; two param groups, ``gi`` False
    (plain torch SGD) and True (the quantized weights, in :meth:`quantized_weights` order)."""

    def __init__(self, params: Iterable[nn.Parameter], quantized: list[QuantizedWeight],
                 quantizer: WeightCodeQuantizer, settings: GISettings, *, lr: float, momentum: float,
                 nesterov: bool, weight_decay: float) -> None:
        params = list(params)
        ids = {id(p) for p in params}
        stray = [q.name for q in quantized if id(q.weight) not in ids]
        if stray:
            raise ValueError(f"quantized weights {stray[:3]} are not among the optimized parameters")
        gi_ids = {id(q.weight) for q in quantized}
        defaults = {"lr": lr, "momentum": momentum, "dampening": 0.0, "weight_decay": weight_decay,
                    "nesterov": nesterov, "maximize": False, "foreach": None, "differentiable": False, "fused": None}
        groups = [{"params": [p for p in params if id(p) not in gi_ids], "gi": False},
                  {"params": [q.weight for q in quantized], "gi": True}]
        super().__init__([g for g in groups if g["params"]], defaults)
        self.quantized = quantized
        self.quantizer = quantizer
        self.settings = settings
        self.epoch = -1  # before the first start_epoch: capped, p₀ (the code's state at creation)
        self.threshold = settings.threshold
        self.capped = True
        self.last: SearchResult | None = None
        self._reset_stats()

    # -- the epoch schedule (derived, checkpointed)
    def start_epoch(self, phase: Phase) -> None:
        self.epoch = phase.epoch
        self.threshold = self.settings.threshold_at(phase.epoch)
        self.capped = self.settings.capped_at(phase.epoch)

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["gi"] = {"epoch": self.epoch, "threshold": self.threshold, "capped": self.capped}
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state = dict(state_dict)
        gi = state.pop("gi")
        super().load_state_dict(state)
        self.epoch, self.threshold, self.capped = int(gi["epoch"]), float(gi["threshold"]), bool(gi["capped"])

    # -- per-epoch record
    def _reset_stats(self) -> None:
        self._steps = 0
        self._sums: dict[str, Tensor] = {}

    def _observe(self, result: SearchResult, index: Tensor) -> None:
        """Accumulate one step's search on the device; ``index``: the searched tensors' positions
        in :attr:`quantized` (a tensor without a gradient in a step is not searched)."""
        if not self._sums:
            zeros = torch.zeros(len(self.quantized), dtype=torch.float64, device=index.device)
            self._sums = {k: zeros.clone() for k in ("count", "scale", "natural", "limited", "skipped", "scale_max")}
        values = {"count": torch.ones_like(result.scale), "scale": result.scale, "natural": result.natural,
                  "limited": result.limited.to(torch.float64), "skipped": result.skipped.to(torch.float64)}
        for key, value in values.items():
            self._sums[key].index_add_(0, index, value)
        self._sums["scale_max"].scatter_reduce_(0, index, result.scale, reduce="amax")
        self._steps += 1

    def epoch_summary(self) -> dict[str, Any]:
        """Threshold and mode of the epoch; over its steps, the mean and largest factor a, the mean
        natural flip fraction f(1) (overall and per tensor), searches that stopped at the doubling
        limit short of p, tensors skipped for a zero direction. One host synchronization."""
        summary: dict[str, Any] = {"threshold": self.threshold, "capped": self.capped, "steps": self._steps}
        if self._steps:
            names = [q.name for q in self.quantized]
            sums = {k: v.tolist() for k, v in self._sums.items()}
            counted = [(name, c, a, f) for name, c, a, f in zip(names, sums["count"], sums["scale"], sums["natural"])
                       if c]
            searches = sum(sums["count"])
            summary.update(
                scale_mean=sum(sums["scale"]) / searches, scale_max=max(sums["scale_max"]),
                natural_flip_mean=sum(sums["natural"]) / searches,
                limit_hits=int(sum(sums["limited"])), zero_direction=int(sum(sums["skipped"])),
                scale_mean_by_tensor={name: a / c for name, c, a, _ in counted},
                natural_flip_by_tensor={name: f / c for name, c, _, f in counted},
            )
        self._reset_stats()
        return summary

    # -- the step
    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            if group["gi"]:
                self._gi_step(group)
            else:
                self._sgd_step(group)
        return loss

    def _sgd_step(self, group: dict[str, Any]) -> None:
        """Torch's SGD step for this group, through the same functional and options as
        ``torch.optim.SGD.step`` (hence bit-identical to it)."""
        params = [p for p in group["params"] if p.grad is not None]
        buffers = [self.state[p].get("momentum_buffer") for p in params]
        sgd(params, [p.grad for p in params], buffers, has_sparse_grad=False, foreach=group["foreach"],
            fused=group["fused"], weight_decay=group["weight_decay"], momentum=group["momentum"], lr=group["lr"],
            dampening=group["dampening"], nesterov=group["nesterov"], maximize=group["maximize"])
        if group["momentum"] != 0:
            for p, buf in zip(params, buffers):
                self.state[p]["momentum_buffer"] = buf

    def _directions(self, group: dict[str, Any], p: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        """(search direction D, applied direction, new momentum buffer), as torch's SGD forms them;
        the buffer is the prospective one and is stored only when the step is applied."""
        wd, mu, nesterov = group["weight_decay"], group["momentum"], group["nesterov"]
        grad = p.grad
        applied = grad.add(p, alpha=wd) if wd != 0 else grad
        searched = applied if (wd == 0 or self.settings.include_wd) else grad

        def direction(d: Tensor) -> tuple[Tensor, Tensor | None]:
            if mu == 0:
                return d, None
            old = self.state[p].get("momentum_buffer")
            buf = torch.clone(d).detach() if old is None else old.mul(mu).add_(d, alpha=1 - group["dampening"])
            return (d.add(buf, alpha=mu) if nesterov else buf), buf

        applied_dir, buf = direction(applied)
        search_dir = applied_dir if searched is applied else direction(searched)[0]
        return search_dir, applied_dir, buf

    def _gi_step(self, group: dict[str, Any]) -> None:
        lr = group["lr"]
        entries = [(i, p, q.bits) for i, (p, q) in enumerate(zip(group["params"], self.quantized))
                   if p.grad is not None]
        if not entries:
            return
        prepared = []
        for _, p, bits in entries:
            search_dir, applied_dir, buf = self._directions(group, p)
            prepared.append(_Prepared(p, bits, search_dir, applied_dir, buf, self.quantizer.weight_codes(p, bits)))
        doublings = self.settings.capped_doublings if self.capped else self.settings.max_doublings
        batched = self.settings.batched
        if batched is None:
            batched = prepared[0].weight.device.type != "cpu"
        search_fn = self._search_batched if batched else self._search_sequential
        result = search_fn(prepared, lr, doublings)
        for i, t in enumerate(prepared):
            if t.buffer is not None:
                self.state[t.weight]["momentum_buffer"] = t.buffer
            t.weight.sub_(t.applied * (result.scale[i] * lr).to(t.weight.dtype))
        self.last = result
        index = torch.tensor([i for i, _, _ in entries])
        if result.scale.is_cuda:  # through pinned memory: a plain copy to the GPU would make the host wait
            index = index.pin_memory().to(result.scale.device, non_blocking=True)
        self._observe(result, index.to(result.scale.device))

    def _search_batched(self, prepared: list["_Prepared"], lr: float, doublings: int) -> SearchResult:
        """Every doubling candidate, then every possible midpoint, each tensor in one pass; the
        bisection replayed on the device for all tensors together."""
        grid = doubling_scales(doublings, prepared[0].weight.device)
        flips = torch.stack([self._flips(t, grid, lr) for t in prepared])

        def flips_tree(doubled: Tensor) -> Tensor:
            scales = tree_scales(doubled, self.settings.bisection_rounds)
            return torch.stack([self._flips(t, scales[i], lr) for i, t in enumerate(prepared)])

        result = search(flips, flips_tree, self.threshold, self.settings, doublings)
        zero = torch.stack([t.searched.eq(0).all() for t in prepared])
        one = torch.ones_like(result.scale)
        return SearchResult(torch.where(zero, one, result.scale), torch.where(zero, one, result.lo),
                            torch.where(zero, one, result.hi), torch.where(zero, one, result.doubled), result.natural,
                            result.limited & ~zero, zero)

    def _search_sequential(self, prepared: list["_Prepared"], lr: float, doublings: int) -> SearchResult:
        """One candidate at a time, per tensor, stopping as soon as the answer is known."""
        rows = []
        for t in prepared:
            if bool(t.searched.eq(0).all()):
                rows.append((1.0, 1.0, 1.0, 1.0, 0.0, False, True))
                continue
            device = t.weight.device

            def flips(a: float, t: _Prepared = t, device: torch.device = device) -> float:
                return float(self._flips(t, torch.tensor([a], dtype=torch.float64, device=device), lr)[0])

            rows.append((*search_one(flips, self.threshold, self.settings, doublings), False))
        device = prepared[0].weight.device
        cols = list(zip(*rows))
        floats = [torch.tensor(c, dtype=torch.float64, device=device) for c in cols[:5]]
        flags = [torch.tensor(c, dtype=torch.bool, device=device) for c in cols[5:]]
        return SearchResult(*floats, *flags)

    def _flips(self, t: "_Prepared", scales: Tensor, lr: float) -> Tensor:
        """f at each of ``scales`` (float64, shape (n,)): share of codes changed by W − D·fl(η·a)."""
        weight = t.weight
        s = (scales * lr).to(weight.dtype).view(-1, *([1] * weight.dim()))
        candidates = weight.unsqueeze(0) - t.searched.unsqueeze(0) * s
        changed = self.quantizer.weight_codes(candidates, t.bits, stacked=True).ne(t.codes.unsqueeze(0))
        return changed.flatten(1).sum(dim=1).to(torch.float64) / weight.numel()


@dataclass
class _Prepared:
    """One GI tensor of a step: the weight, its bit-width, the search and applied directions, its
    prospective momentum buffer (None without momentum) and its current codes."""

    weight: Tensor
    bits: int
    searched: Tensor
    applied: Tensor
    buffer: Tensor | None
    codes: Tensor
