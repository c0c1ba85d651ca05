"""The base of every plugin's hyper-parameters."""

from __future__ import annotations

import difflib
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from zsqbench.errors import UserError


class PluginOptions(BaseModel):
    """A plugin's options: unknown keys are an error and values are validated, because the
    filled-in options become part of the trial id (a typo must not silently train a default)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class NoOptions(PluginOptions):
    pass


def option_names(options: type[BaseModel]) -> list[str]:
    """The keys a plugin's options accept (field names, and aliases where a field has one)."""
    names = list(options.model_fields)
    names += [f.alias for f in options.model_fields.values() if f.alias and f.alias not in names]
    return names


def close_match(name: str, known: list[str]) -> str:
    """" Did you mean 'x'?" for the closest known name, else nothing: the hint a typo needs."""
    hint = difflib.get_close_matches(name, known, n=1)
    return f" Did you mean '{hint[0]}'?" if hint else ""


def condensed_validation_error(exc: ValidationError) -> str:
    """Every problem pydantic found, as "key: message (got VALUE)" on one line: a value error of
    a plugin's own validator may span lines, and a user fixing a flag needs all of them at once."""
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")  # a validator's own words need no label
        text = f"{where}: {msg}" if where else msg
        if where and "input" in err and not isinstance(err["input"], dict):
            text += f" (got {err['input']!r})"
        parts.append(" ".join(text.split()))
    return "; ".join(parts)


def fill_options(plugin: type, values: dict[str, Any], kind: str, name: str, origin: str = "") -> dict[str, Any]:
    """A plugin's options validated and completed with their defaults, as plain JSON values (the
    form a trial spec holds and hashes). A bad option is one line: an unknown key names the
    plugin's options and the closest one; a bad value gives pydantic's message. ``origin`` says
    where the values came from ("given with -o", "in grid.toml")."""
    where = f"bad option for {kind} '{name}'" + (f" {origin}" if origin else "")
    known = option_names(plugin.Options)
    listing = ", ".join(known) or "(none: it takes no options)"
    for key in values:
        if key not in known:
            raise UserError(f"{where}: unknown key '{key}'.{close_match(key, known)} Its options are: {listing}")
    try:
        return plugin.Options(**values).model_dump(mode="json")
    except ValidationError as exc:
        raise UserError(f"{where}: {condensed_validation_error(exc)} (its options: `zsqbench plugins {name}`)") \
            from None
