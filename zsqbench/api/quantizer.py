"""Quantizers: turn a copy of the FP teacher into a fake-quantized student.

A quantizer may also declare its weight quantization as integer codes
(:class:`WeightCodeQuantizer`): which weight tensors it quantizes, at which bit-width, and the
codes its forward computes. Methods that reason about codes rather than fake-quantized values
(AIT's gradient inundation counts how many codes a step changes) need it; a loss that does says
so in :meth:`zsqbench.api.losses.DistillationLoss.check_quantizer`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from contextlib import contextmanager
from dataclasses import dataclass
from typing import ClassVar, Iterator, Union

from torch import Tensor, nn

from zsqbench.api.cards import MethodCard
from zsqbench.api.options import NoOptions, PluginOptions


@dataclass(frozen=True)
class IntegerGrid:
    """A uniform k-bit grid in the form of docs/methods/uniform.md#the-quantization-function:
    ``x̂ = (q + Z) / S`` with integer ``q ∈ [−2^(k−1), 2^(k−1) − 1]``.

    ``scale`` is S (a multiplier: real × S = integer) and ``zero`` is Z (float32 holding integers),
    both float32, either 0-d (per tensor) or of shape (C,) (per output channel, axis 0). They are
    the values the fake quantizer itself computes, so an exporter reproduces its grid exactly.
    """

    bits: int
    scale: Tensor
    zero: Tensor


@dataclass(frozen=True)
class IntegerWeight:
    """A quantized weight: the module at ``path`` computes ``float_module`` with its weight
    replaced by ``(codes + Z) / S`` (per output channel)."""

    path: str
    #: A plain ``nn.Conv2d`` / ``nn.Linear`` with the layer's settings and its FP parameters other
    #: than the weight (the bias stays FP).
    float_module: nn.Module
    grid: IntegerGrid
    #: q, int64, the weight's shape, inside [−2^(k−1), 2^(k−1) − 1].
    codes: Tensor
    #: An integer operator (deployable profiles, docs/deployment.md#deployable-profiles), else None/empty:
    #: int32 bias codes at scale s_x·s_w (``float_module``'s bias is then their float value),
    bias_codes: Tensor | None = None
    #: the activation quantizer whose codes the layer reads,
    input: str | None = None
    #: the one whose codes it writes (None: float output, e.g. the logits),
    output: str | None = None
    #: the modules it computes itself (a folded BN, the ReLU before its output quantizer), and
    absorbed: tuple[str, ...] = ()
    #: the bits its weights are stored at when packed (None: in their container).
    storage_bits: int | None = None


@dataclass(frozen=True)
class IntegerActivation:
    """A per-tensor activation quantizer: the module at ``path`` returns its input fake-quantized
    on ``grid`` and does nothing else."""

    path: str
    grid: IntegerGrid


IntegerLayer = Union[IntegerWeight, IntegerActivation]


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

    def weights_updated(self, student: nn.Module) -> None:
        """Called after every student optimizer step. A quantizer that caches anything derived from
        the weights between steps drops it here (an optimizer may change them through ``.data``,
        which autograd's version counters do not see). Default: nothing is cached."""

    @contextmanager
    def calibrating(self, student: nn.Module, enabled: bool) -> Iterator[None]:
        """Ranges tracked (``enabled``) or frozen within the block; the previous state after it."""
        previous = self.is_calibrating(student)
        self.set_calibrating(student, enabled)
        try:
            yield
        finally:
            self.set_calibrating(student, previous)

    def integer_layers(self, student: nn.Module) -> list[IntegerLayer]:
        """The student's quantizers as integer grids, for ``zsqbench export`` (frozen ranges).

        Optional: a quantizer that cannot describe its student this way is not exportable, and
        ``zsqbench export`` says so. The exporter replaces each listed module and keeps every other
        module as it is, so the list must cover every place where the student quantizes.
        """
        raise NotImplementedError(f"quantizer '{self.name}' does not describe its student as integer grids "
                                  "(Quantizer.integer_layers), so its trials cannot be exported")

@dataclass(frozen=True)
class QuantizedWeight:
    """One weight tensor the quantizer fake-quantizes on every forward: its parameter name in the
    student (``"features.stage1.unit1.body.conv1.conv.weight"``), the parameter, its bit-width."""

    name: str
    weight: nn.Parameter
    bits: int


class WeightCodeQuantizer(Quantizer):
    """A quantizer that exposes its weight quantization as integer codes.

    Declared by subclassing (not found by probing methods), so a loss can refuse a quantizer
    without codes when the grid is expanded, before anything runs.
    """

    @abstractmethod
    def quantized_weights(self, student: nn.Module) -> list[QuantizedWeight]:
        """Every weight tensor of ``student`` that the forward quantizes, in module order
        (22 for ResNet-20: 21 conv weights and the FC weight); never biases or BN parameters."""

    @abstractmethod
    def weight_codes(self, weight: Tensor, bits: int, *, stacked: bool = False) -> Tensor:
        """The integer codes of ``weight`` exactly as the forward computes them, with the range
        recomputed from ``weight`` itself (so for a candidate update, from the candidate).

        Integer-valued, same shape as ``weight``, in its float dtype (float32 for reduced
        precision). ``stacked``: ``weight`` is ``(n, *shape)``, n candidate values of one weight
        tensor, each quantized on its own ranges (one call instead of n).
        """
