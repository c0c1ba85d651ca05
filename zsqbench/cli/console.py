"""Rich console output shared by the subcommands: progress on stderr, tables on stdout."""

from __future__ import annotations

import sys

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

out = Console()
err = Console(stderr=True)


class RichProgress:
    """A progress bar per phase (epoch, synthesis) plus one-line messages; quiet when asked."""

    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet
        self._progress: Progress | None = None
        self._task = None

    def __enter__(self) -> "RichProgress":
        if not self.quiet and err.is_terminal:
            self._progress = Progress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                console=err, transient=True,
            )
            self._progress.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.stop()

    @property
    def shows_info(self) -> bool:
        """Whether a bar is displayed (the trainer reads the running loss only for one)."""
        return self._progress is not None

    def start(self, description: str, total: int) -> None:
        if self._progress is None:
            return
        if self._task is not None:
            self._progress.remove_task(self._task)
        self._task = self._progress.add_task(description, total=total, info="")

    def advance(self, completed: int, info: str = "") -> None:
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, completed=completed, info=info)

    def message(self, text: str) -> None:
        if not self.quiet or text.startswith("warning:"):  # -q silences progress, not warnings
            err.print(text, highlight=False, markup=False, soft_wrap=True)  # one line per message in logs
            sys.stderr.flush()
