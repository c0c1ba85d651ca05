"""From the grids of docs/methods/uniform.md#the-quantization-function to ONNX's quantization
parameters: the derivation, and containers.

**Ours** (the fake quantizer, float32): for bit-width k, S = (2^k − 1)/(hi − lo), Z = round(S·lo) + 2^(k−1),

    q  = clamp(round(S·x − Z), −2^(k−1), 2^(k−1) − 1)          x̂ = (q + Z) / S.

**ONNX**: ``QuantizeLinear`` gives c = saturate(round(x / scale) + zero_point) (round half to even) and
``DequantizeLinear`` gives y = (c − zero_point) · scale, per tensor or per axis.

**The mapping.** Pick an integer code offset o and set

    scale = 1/S,    c = q + o,    zero_point = o − Z.

Dequantizing: (c − zero_point)·scale = (q + o − o + Z)/S = (q + Z)/S = x̂. The integers agree exactly; only
1/S is rounded to float32 (one half-ulp, and a product instead of a quotient: ≤ 1 ulp of x̂ apart).
Quantizing: round(x/scale) + zero_point = round(S·x) − Z + o, and since Z is an integer,
round(S·x) − Z = round(S·x − Z): the same code q + o; the k-bit clamp of q becomes a ``Clip`` of c to
[o − 2^(k−1), o + 2^(k−1) − 1] after ``QuantizeLinear`` (the "QCDQ" pattern: an 8-bit container, a k-bit
range). Exact ties round half to even on both sides. What is not exact: ONNX computes fl(x / fl(1/S))
where we compute fl(fl(S·x) − Z); the two differ by a few ulps, so an activation within a few ulps of a
rounding boundary (m + ½) can land on the neighbouring code, one grid step away. That is the
only way the exported model's activations can differ from the student's by more than float rounding
(see :mod:`zsqbench.export.runtime` for the tolerance that follows).

**Containers.** A code range must fit the container, and so must the zero point:

- ``int8``, o = 0: c = q ∈ [−2^(k−1), 2^(k−1) − 1]; zero_point = −Z must lie in [−128, 127].
- ``uint8``, o = 2^(k−1): c ∈ [0, 2^k − 1]; zero_point = 2^(k−1) − Z = −round(S·lo) must lie in [0, 255].

When lo ≤ 0 ≤ hi, S·lo ∈ [−(2^k − 1), 0], so both fit for every k ≤ 8: the range containing zero is what
makes them fit. Reading Z itself as ONNX's zero point (the tempting mistake) overflows int8 at 8 bits
as soon as lo = 0 (Z = 128: every activation after a ReLU). A range that excludes zero (a weight channel
whose weights all have one sign) puts −round(S·lo) outside [0, 2^k − 1]; at 8 bits no 8-bit container
holds that zero point at all. Such a weight is stored in ``int32`` with c = q + Z and zero_point 0
(DequantizeLinear's int32 form; exact, 4 bytes a weight, that layer only). An activation cannot be
stored so (QuantizeLinear has no int32 output); a quantizer after a ReLU has lo = 0, and any other
that excludes zero is refused by name.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from torch import Tensor

from zsqbench.api.quantizer import IntegerGrid
from zsqbench.errors import UserError

#: name -> (smallest code, largest code, NumPy dtype) of the 8-bit containers.
CONTAINERS: dict[str, tuple[int, int, type]] = {"int8": (-128, 127, np.int8), "uint8": (0, 255, np.uint8)}
WEIGHT_PREFERENCE = ("int8", "uint8")  # signed weights: what integer kernels (s8 weights) expect
ACTIVATION_PREFERENCE = ("uint8", "int8")  # zero point 0 after a ReLU: u8 activations


@dataclass(frozen=True)
class OnnxQuant:
    """One quantizer in ONNX's terms, y = (c − zero_point)·scale, and the grid it came from."""

    bits: int
    container: str  # int8, uint8 or int32
    #: 1/S in float32: a scalar (per tensor) or one per output channel.
    scale: np.ndarray
    #: in the container's dtype, the shape of ``scale``.
    zero_point: np.ndarray
    #: c = q + offset (a scalar for int8/uint8, Z per channel for int32).
    offset: np.ndarray
    #: S and Z of docs/methods/uniform.md#the-quantization-function, as the fake quantizer computed them.
    S: np.ndarray
    Z: np.ndarray

    @property
    def per_channel(self) -> bool:
        return self.scale.ndim == 1

    @property
    def dtype(self) -> type:
        return np.int32 if self.container == "int32" else CONTAINERS[self.container][2]

    @property
    def code_min(self) -> np.ndarray:
        """The smallest code of the k-bit grid (per channel for int32)."""
        return (self.offset - 2 ** (self.bits - 1)).astype(np.int64)

    @property
    def code_max(self) -> np.ndarray:
        return (self.offset + 2 ** (self.bits - 1) - 1).astype(np.int64)

    @property
    def needs_clip(self) -> bool:
        """Whether the k-bit range is narrower than the container (then a Clip carries it)."""
        if self.container == "int32":
            return True
        lo, hi, _ = CONTAINERS[self.container]
        return bool((self.code_min > lo).any() or (self.code_max < hi).any())

    def codes(self, q: Tensor) -> np.ndarray:
        """The stored integers of grid codes q (a weight: offset per output channel, axis 0)."""
        q64 = q.detach().cpu().numpy().astype(np.int64)
        offset = self.offset.reshape((-1,) + (1,) * (q64.ndim - 1)) if self.offset.ndim else self.offset
        c = q64 + offset
        lo = self.code_min.reshape(offset.shape) if self.offset.ndim else self.code_min
        hi = self.code_max.reshape(offset.shape) if self.offset.ndim else self.code_max
        if (c < lo).any() or (c > hi).any():
            raise ValueError("grid codes outside their k-bit range")
        return c.astype(self.dtype)

    def describe(self) -> dict:
        """Plain values for quantization.json (per-channel lists or scalars)."""
        def plain(a: np.ndarray, kind: type) -> object:
            return [kind(v) for v in a.tolist()] if a.ndim else kind(a.item())

        return {
            "bits": self.bits, "container": self.container, "per": "channel" if self.per_channel else "tensor",
            "scale": plain(self.scale, float), "zero_point": plain(self.zero_point, int),
            "code_min": plain(self.code_min, int), "code_max": plain(self.code_max, int),
            "S": plain(self.S, float), "Z": plain(self.Z, int),
        }


def onnx_quant(grid: IntegerGrid, what: str, *, weight: bool) -> OnnxQuant:
    """The container and parameters of ``grid`` (see the module docstring); ``what`` names it in errors."""
    bits = grid.bits
    if not 1 < bits <= 8:
        raise UserError(f"{what} has {bits}-bit codes; ONNX's 8-bit containers hold 2 to 8 bits")
    S = np.asarray(grid.scale.detach().cpu().numpy(), dtype=np.float32)
    Zf = grid.zero.detach().cpu().numpy().astype(np.float64)
    if not (np.isfinite(S).all() and np.isfinite(Zf).all() and (S > 0).all()):
        raise UserError(f"{what} has a non-finite or non-positive grid (S={S}, Z={Zf}); its trial is broken")
    Z = np.asarray(Zf, dtype=np.int64)
    if not np.array_equal(Z, Zf):
        raise ValueError(f"{what}: zero points are not integers")
    scale = np.asarray(1.0 / S.astype(np.float64), dtype=np.float32)
    half = 2 ** (bits - 1)
    for name in WEIGHT_PREFERENCE if weight else ACTIVATION_PREFERENCE:
        lo, hi, dtype = CONTAINERS[name]
        offset = 0 if lo < 0 else half
        zp = offset - Z
        if ((zp >= lo) & (zp <= hi)).all():
            return OnnxQuant(bits, name, scale, np.asarray(zp, dtype=dtype), np.asarray(offset, dtype=np.int64), S, Z)
    if weight:
        return OnnxQuant(bits, "int32", scale, np.zeros(Z.shape, dtype=np.int32), Z.copy(), S, Z)
    raise UserError(f"{what}: its range excludes zero (zero point {int(np.ravel(Z)[0])} at {bits} bits), which no "
                    "8-bit container holds, and QuantizeLinear has no wider output; it cannot be exported")


def layer_bytes(quant: OnnxQuant, numel: int) -> dict[str, float]:
    """Bytes of a quantized tensor: at the true bit-width, and as stored (codes in the container)."""
    stored_itemsize = np.dtype(quant.dtype).itemsize
    params = quant.scale.size * (4 + stored_itemsize)  # float32 scale and a zero point per channel
    return {"true_bits": numel * quant.bits / 8 + params, "stored": numel * stored_itemsize + params}
