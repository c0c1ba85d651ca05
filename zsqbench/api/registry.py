"""Small typed registries: one per plugin kind, filled by the plugin manager.

Duplicate names are an error naming both sources (silently shadowing a method would
make a benchmark lie); unknown names list the known ones with a close-match hint.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Generic, Iterator, TypeVar

from zsqbench.errors import UnknownNameError, UserError

T = TypeVar("T")


@dataclass(frozen=True)
class Entry(Generic[T]):
    name: str
    kind: str
    obj: T
    source: str
    description: str


class Registry(Generic[T]):
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}
        self._frozen = False

    def add(self, name: str, obj: T, source: str, description: str) -> None:
        if self._frozen:
            raise RuntimeError(f"the {self.kind} registry is frozen; register plugins through hooks")
        if name in self._entries:
            other = self._entries[name].source
            raise UserError(
                f"duplicate {self.kind} name '{name}': registered by {other} and by {source}; "
                f"uninstall or disable one of them (see ZSQBENCH_PLUGINS)"
            )
        self._entries[name] = Entry(name, self.kind, obj, source, description)

    def freeze(self) -> None:
        self._frozen = True

    def get(self, name: str) -> T:
        return self.entry(name).obj

    def entry(self, name: str) -> Entry[T]:
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownNameError(self.unknown_message(name)) from None

    def unknown_message(self, name: str) -> str:
        known = sorted(self._entries)
        hint = difflib.get_close_matches(name, known, n=1)
        did_you_mean = f" Did you mean '{hint[0]}'?" if hint else ""
        listing = ", ".join(known) if known else "(none loaded)"
        return f"unknown {self.kind} '{name}'.{did_you_mean} Known {self.kind}s: {listing}"

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[Entry[T]]:
        return iter(self._entries[n] for n in sorted(self._entries))

    def __len__(self) -> int:
        return len(self._entries)
