"""A pickle that would run code: what every loader of user-handed files must refuse."""

from __future__ import annotations

import os
from pathlib import Path


class RunsCode:
    """Unpickling this calls os.system, which would create ``marker``: its existence after a load
    means the loader ran code from the file."""

    def __init__(self, marker: str | Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)
