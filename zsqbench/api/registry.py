"""Typed registries, one per plugin kind, filled by the plugin manager.

What is registered is checked at registration: the right base class, a name, no abstract
methods left (a broken plugin fails when it loads, not in the middle of a grid). Duplicate
names are an error naming both sources (silently shadowing a method would make a benchmark
lie); unknown names list the known ones with a close-match hint.
"""

from __future__ import annotations

import difflib
import inspect
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
    def __init__(self, kind: str, base: type | None = None, registers: str = "subclass") -> None:
        self.kind = kind
        self.base = base
        self.registers = registers
        self._entries: dict[str, Entry[T]] = {}
        self._frozen = False

    def check(self, obj: object, source: str) -> None:
        """Refuse an object that is not what this kind of plugin registers, in one line."""
        if self.base is None:
            return
        base = f"{self.base.__module__}.{self.base.__qualname__}"
        if self.registers == "subclass":
            if not (isinstance(obj, type) and issubclass(obj, self.base)):
                raise UserError(f"a {self.kind} plugin from {source} registered {obj!r}, which is not a subclass of "
                                f"{base}; register a subclass of it")
            if inspect.isabstract(obj):
                missing = ", ".join(sorted(getattr(obj, "__abstractmethods__", ())))
                raise UserError(f"{self.kind} '{getattr(obj, 'name', obj.__name__)}' from {source} does not implement "
                                f"{missing}; implement them before registering it")
            for attribute in ("name", "description"):
                if not isinstance(getattr(obj, attribute, None), str):
                    raise UserError(f"{self.kind} class {obj.__qualname__} from {source} has no '{attribute}' "
                                    "string; set it as a class attribute")
        elif not isinstance(obj, self.base):
            raise UserError(f"a {self.kind} plugin from {source} registered {obj!r}, which is not a {base}; "
                            "register an instance of it")

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
