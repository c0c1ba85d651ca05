"""The base of every plugin's hyper-parameters."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from zsqbench.errors import UserError, first_validation_error


class PluginOptions(BaseModel):
    """A plugin's options: unknown keys are an error and values are validated, because the
    filled-in options become part of the trial id (a typo must not silently train a default)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class NoOptions(PluginOptions):
    pass


def fill_options(plugin: type, values: dict[str, Any], kind: str, name: str) -> dict[str, Any]:
    """A plugin's options validated and completed with their defaults, as plain JSON values (the
    form a trial spec holds and hashes); a bad option is a one-line error listing the valid ones."""
    try:
        return plugin.Options(**values).model_dump(mode="json")
    except ValidationError as exc:
        fields = ", ".join(plugin.Options.model_fields) or "(none)"
        raise UserError(f"bad option for {kind} '{name}': {first_validation_error(exc)}; "
                        f"its options are: {fields}") from None
