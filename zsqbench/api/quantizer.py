"""Quantizers: turn a copy of the FP teacher into a fake-quantized student."""

from __future__ import annotations

from abc import ABC, abstractmethod
from contextlib import contextmanager
from typing import ClassVar, Iterator

from torch import nn

from zsqbench.api.cards import MethodCard
from zsqbench.api.options import NoOptions, PluginOptions


class Quantizer(ABC):
    """Builds the student and owns its calibration state.

    The student must keep the FP module names, so feature taps address teacher and student
    with the same module path. Whether activation ranges are being calibrated is the
    quantizer's state, read and changed only through :meth:`is_calibrating`,
    :meth:`set_calibrating` and :meth:`calibrating`.
    """

    name: ClassVar[str]
    description: ClassVar[str]
    Options: ClassVar[type[PluginOptions]] = NoOptions
    #: Where the method comes from and what was verified here (``zsqbench plugins NAME``).
    card: ClassVar[MethodCard | None] = None

    def __init__(self, options: PluginOptions) -> None:
        self.options = options

    @abstractmethod
    def quantize(self, model: nn.Module, w_bits: int, a_bits: int) -> nn.Module:
        """Return the student built in place from ``model`` (a private copy)."""

    @abstractmethod
    def set_calibrating(self, student: nn.Module, enabled: bool) -> None:
        """Turn activation-range tracking on (calibration) or off (frozen ranges)."""

    @abstractmethod
    def is_calibrating(self, student: nn.Module) -> bool:
        """Whether the student's activation ranges are currently tracked."""

    @contextmanager
    def calibrating(self, student: nn.Module, enabled: bool) -> Iterator[None]:
        """Ranges tracked (``enabled``) or frozen within the block; the previous state after it."""
        previous = self.is_calibrating(student)
        self.set_calibrating(student, enabled)
        try:
            yield
        finally:
            self.set_calibrating(student, previous)
