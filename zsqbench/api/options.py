"""The base of every plugin's hyper-parameters, and the declarations that say which of them reach a
trial id (:class:`OmitAtDefault`, :class:`SpeedOnly`, :class:`Retired`)."""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any, ClassVar, Mapping

from pydantic import (
    BaseModel,
    ConfigDict,
    SerializerFunctionWrapHandler,
    ValidationError,
    model_serializer,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_core import to_jsonable_python

from zsqbench.errors import UserError


@dataclass(frozen=True)
class OmitAtDefault:
    """Field marker, ``Annotated[T, OmitAtDefault()]``: while the field holds its default it is left
    out of the dump, and so out of the trial id. A field added after trials were run keeps their ids
    this way. ``together_with``: fields that must be left out too (a setting that matters only
    through another, as the crop size of an augmentation that is off)."""

    together_with: tuple[str, ...] = ()


@dataclass(frozen=True)
class SpeedOnly:
    """Field marker, ``Annotated[T, SpeedOnly()]``: the option changes how fast a trial runs, never
    its numbers (the plugin's tests compare both forms), so it is never in the dump nor the trial id.
    A user still sets it with ``-o``; its value travels in the compute settings
    (:func:`speed_switches`, ``zsqbench.perf.compute.ComputeSettings.switches``) and is recorded
    with the result."""


_NOT_HASHED = object()


@dataclass(frozen=True)
class Retired:
    """An option a plugin no longer has (``PluginOptions.retired``). Spec files written before may
    still hold it: it is ignored when the options are built. With ``id_value`` the dump keeps it at
    that value, the one every trial had, so the ids of those trials stay. ``reason`` is the one-line
    answer to a user who still gives it."""

    reason: str
    id_value: Any = _NOT_HASHED


def _marker(field: FieldInfo, kind: type) -> Any:
    return next((m for m in field.metadata if isinstance(m, kind)), None)


class IdFields(BaseModel):
    """A model whose dump is hashed into trial ids: fields marked :class:`OmitAtDefault` stay out of
    the dump at their default, fields marked :class:`SpeedOnly` always. The one place that decides
    what of a declared option reaches an id (plugin options and the budget)."""

    retired: ClassVar[Mapping[str, Retired]] = {}

    @model_serializer(mode="wrap")
    def _id_view(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data = handler(self)
        fields = type(self).model_fields
        at_default = {name for name, f in fields.items() if _marker(f, OmitAtDefault) is not None
                      and getattr(self, name) == f.get_default(call_default_factory=True)}
        for name, f in fields.items():
            omit = _marker(f, OmitAtDefault)
            if _marker(f, SpeedOnly) is not None or (
                    name in at_default and all(other in at_default for other in omit.together_with)):
                data.pop(f.alias or name, None)
                data.pop(name, None)
        data.update({name: r.id_value for name, r in self.retired.items() if r.id_value is not _NOT_HASHED})
        return data

    @model_validator(mode="before")
    @classmethod
    def _ignore_retired(cls, data: Any) -> Any:
        """Options of old spec files that no longer exist are dropped before validation."""
        if isinstance(data, Mapping) and any(name in data for name in cls.retired):
            return {k: v for k, v in data.items() if k not in cls.retired}
        return data


class PluginOptions(IdFields):
    """A plugin's options: unknown keys are an error and values are validated, because the
    filled-in options become part of the trial id (a typo must not silently train a default).
    Which of them reach the id is declared per field (:class:`OmitAtDefault`, :class:`SpeedOnly`)
    and per removed option (:class:`Retired`)."""

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
        if key in plugin.Options.retired:
            raise UserError(f"{where}: '{key}' is no longer an option: {plugin.Options.retired[key].reason}")
        if key not in known:
            raise UserError(f"{where}: unknown key '{key}'.{close_match(key, known)} Its options are: {listing}")
    try:
        return plugin.Options(**values).model_dump(mode="json")
    except ValidationError as exc:
        raise UserError(f"{where}: {condensed_validation_error(exc)} (its options: `zsqbench plugins {name}`)") \
            from None


def speed_switches(plugin: type, values: Mapping[str, Any]) -> dict[str, Any]:
    """The :class:`SpeedOnly` options among ``values`` (checked by :func:`fill_options` first), as
    plain JSON values: what the compute settings carry for this plugin, outside the trial id."""
    fields = plugin.Options.model_fields
    given = {k: v for k, v in values.items() if k in fields and _marker(fields[k], SpeedOnly) is not None}
    if not given:
        return {}
    options = plugin.Options(**{k: v for k, v in values.items() if k in fields})
    return {k: to_jsonable_python(getattr(options, k)) for k in given}
