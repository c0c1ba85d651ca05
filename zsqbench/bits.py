"""Bit-widths: how a user writes them, the one way they are spelled, their range."""

from __future__ import annotations

from zsqbench.errors import UserError

MIN_BITS, MAX_BITS = 2, 8


def bits_label(w_bits: object, a_bits: object) -> str:
    """"W4A4": the one spelling of a bit-width pair, in tables, progress, plots and filters alike."""
    return f"W{w_bits}A{a_bits}"


def parse_bits(text: str) -> list[tuple[int, int]]:
    """'3,4,5' -> [(3,3),(4,4),(5,5)]; '4/8' -> [(4,8)] (weights/activations)."""
    pairs: list[tuple[int, int]] = []
    for item in (p.strip() for p in str(text).split(",")):
        if not item:
            continue
        parts = item.split("/")
        try:
            if len(parts) == 1:
                w = a = int(parts[0])
            elif len(parts) == 2:
                w, a = int(parts[0]), int(parts[1])
            else:
                raise ValueError
        except ValueError:
            raise UserError(
                f"bad bit-width '{item}': use integers like '3,4,5' (wXaX) or '4/8' (w4a8)"
            ) from None
        for b in (w, a):
            if not MIN_BITS <= b <= MAX_BITS:
                raise UserError(
                    f"bad bit-width '{item}': bits must be between {MIN_BITS} and {MAX_BITS}"
                )
        if (w, a) in pairs:
            raise UserError(f"bit-width {bits_label(w, a)} is listed twice in '{text}'; give each once")
        pairs.append((w, a))
    if not pairs:
        raise UserError("no bit-width given: pass e.g. --bits 3,4,5")
    return pairs
