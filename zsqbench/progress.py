"""Progress reporting of long work (epochs, synthesis, downloads) without knowing the display."""

from __future__ import annotations

from typing import Protocol


class ProgressSink(Protocol):
    #: False when nothing is displayed: the trainer then never reads the running loss (a
    #: host-device synchronization) for it.
    shows_info: bool

    def start(self, description: str, total: int) -> None: ...
    def advance(self, completed: int, info: str = "") -> None: ...
    def message(self, text: str) -> None: ...


class NullProgress:
    shows_info = False

    def start(self, description: str, total: int) -> None:
        pass

    def advance(self, completed: int, info: str = "") -> None:
        pass

    def message(self, text: str) -> None:
        pass
