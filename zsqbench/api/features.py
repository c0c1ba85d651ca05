"""Feature taps: forward hooks addressed by module path, paired by name.

Hooks exist only inside :meth:`FeatureTaps.active`; evaluation runs outside it, so no hook
fires and nothing is retained between batches (the reference code's D10). Each forward
overwrites the captured maps; :meth:`take` hands them over (detached or with their graph, as
the caller asks) and forgets them.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence

from torch import Tensor, nn

from zsqbench.errors import UserError


class FeatureTaps:
    def __init__(self, model: nn.Module, paths: Sequence[str]) -> None:
        modules = dict(model.named_modules())
        missing = [p for p in paths if p not in modules]
        if missing:
            raise UserError(
                f"feature tap(s) {missing} do not exist in the model; use module paths such as "
                f"{[n for n in modules if n][:3]}"
            )
        self.paths = tuple(dict.fromkeys(paths))
        self._modules = [modules[p] for p in self.paths]
        self._captured: dict[str, Tensor] = {}
        self._handles: list = []

    def _make_hook(self, path: str):
        def hook(module: nn.Module, inputs, output: Tensor) -> None:
            self._captured[path] = output

        return hook

    @property
    def is_active(self) -> bool:
        return bool(self._handles)

    @contextmanager
    def active(self) -> Iterator["FeatureTaps"]:
        if not self.paths:
            yield self
            return
        self._handles = [m.register_forward_hook(self._make_hook(p)) for p, m in zip(self.paths, self._modules)]
        try:
            yield self
        finally:
            for h in self._handles:
                h.remove()
            self._handles = []
            self._captured = {}

    def take(self, detach: bool) -> dict[str, Tensor]:
        """The maps of the latest forward, keyed by path (detached, or keeping their graph);
        the taps forget them."""
        captured, self._captured = self._captured, {}
        return {k: v.detach() for k, v in captured.items()} if detach else captured
