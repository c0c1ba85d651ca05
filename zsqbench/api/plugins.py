"""The plugin manager: bundled plugins from registry.toml plus installed entry points.

Bundled plugins get no special path: they register through the same hooks a third-party
package uses. ``ZSQBENCH_PLUGINS`` (comma-separated plugin names, bundled keys or entry
point names) restricts what loads; unset means everything.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from functools import lru_cache
from importlib import metadata
from typing import Any, Callable, Iterator

import pluggy

from zsqbench.api import hookspecs
from zsqbench.api.config import RegistryConfig, load_registry_config
from zsqbench.api.hookspecs import PLUGIN_KINDS, PluginKind
from zsqbench.api.registry import Entry, Registry
from zsqbench.errors import UserError

ENTRY_POINT_GROUP = "zsqbench"
PLUGINS_ENV = "ZSQBENCH_PLUGINS"
_BY_PLURAL = {k.plural: k for k in PLUGIN_KINDS}


@dataclass
class Plugins:
    """Everything loaded: the pluggy manager and one frozen registry per plugin kind, reachable
    as ``plugins.<kinds>`` (``plugins.generators``, ``plugins.budget_overrides``, ...)."""

    manager: pluggy.PluginManager
    config: RegistryConfig
    registries: dict[str, Registry[Any]]  # by PluginKind.plural
    sources: dict[str, str]  # plugin module name -> "bundled" / "dist version"

    def __getattr__(self, plural: str) -> Registry[Any]:
        registries = self.__dict__.get("registries", {})
        if plural in registries:
            return registries[plural]
        raise AttributeError(plural)

    def registry(self, kind: str) -> Registry[Any]:
        """A registry by the kind's singular name ("generator")."""
        return next(r for k, r in self.registries.items() if _BY_PLURAL[k].name == kind)

    def all_entries(self) -> Iterator[Entry[Any]]:
        for registry in self.registries.values():
            yield from registry


def _allowed() -> set[str] | None:
    raw = os.environ.get(PLUGINS_ENV)
    if raw is None:
        return None
    return {p.strip() for p in raw.split(",") if p.strip()}


def _describe(obj: Any) -> str:
    text = getattr(obj, "description", None) or (obj.__doc__ or "").strip()
    return text.splitlines()[0] if text else ""


def build_plugins(config: RegistryConfig | None = None, extra: dict[str, object] | None = None) -> Plugins:
    """Load every plugin afresh (plus ``extra`` plugin objects by name, as tests do).

    The CLI uses the cached :func:`get_plugins`."""
    config = config or load_registry_config()
    pm = pluggy.PluginManager("zsqbench")
    pm.add_hookspecs(hookspecs)
    allowed = _allowed()
    sources: dict[str, str] = {}

    for name, module_name in config.bundled.items():
        if allowed is not None and name not in allowed:
            continue
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise UserError(
                f"bundled plugin '{name}' ({module_name}) failed to import: {exc}; "
                "fix registry.toml or reinstall zsqbench"
            ) from None
        pm.register(module, name=name)
        sources[name] = "bundled"

    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        if allowed is not None and ep.name not in allowed:
            continue
        if ep.name in sources:
            raise UserError(
                f"duplicate plugin '{ep.name}': bundled and from {ep.dist.name if ep.dist else '?'}; "
                "rename the entry point"
            )
        try:
            module = ep.load()
        except Exception as exc:  # a broken third-party plugin must not hide the others' names
            raise UserError(f"plugin '{ep.name}' failed to load: {exc}; fix or uninstall it") from None
        pm.register(module, name=ep.name)
        sources[ep.name] = f"{ep.dist.name} {ep.dist.version}" if ep.dist else "entry point"

    for name, obj in (extra or {}).items():
        _check_extra(pm, sources, name, obj)
        pm.register(obj, name=name)
        sources[name] = name

    registries = {k.plural: Registry(k.name, k.base, k.registers) for k in PLUGIN_KINDS}
    for kind in PLUGIN_KINDS:
        registry = registries[kind.plural]
        for impl in getattr(pm.hook, kind.hook_name).get_hookimpls():
            source = sources.get(impl.plugin_name, impl.plugin_name)
            impl.function(register=_registrar(registry, kind, source))
        if kind.plural == "budget_overrides":
            _register_declared_overrides(registries, registry, kind)
        registry.freeze()
    _check_budget_overrides(registries["budget_overrides"], config)
    return Plugins(manager=pm, config=config, registries=registries, sources=sources)


def _check_extra(pm: pluggy.PluginManager, sources: dict[str, str], name: str, obj: object) -> None:
    """An ``extra`` plugin that is already loaded (typically: a test of a plugin that is also
    installed, so its entry point loaded it) would register twice; pluggy refuses with a bare
    ValueError, this names the plugin, where it came from and what to do instead."""
    same = pm.is_registered(obj)
    taken = pm.get_name(obj) if same else name if pm.has_plugin(name) else None
    if taken is None:
        return
    source = sources.get(taken, "")
    installed = source not in ("bundled", taken)  # extra plugins' source is their own name
    where = f"installed: {source}" if installed else "bundled" if source == "bundled" else "given in extra="
    clash = f"build_plugins(extra=...): '{name}' is already loaded as plugin '{taken}' ({where})"
    if same:
        fix = "leave it out of extra=, build_plugins() loads it"
    elif not installed:
        fix = "give the extra plugin another name"
    else:
        fix = (f"call build_plugins() without extra= to test the installed one, or pip uninstall "
               f"{source.split()[0] if ' ' in source else 'its package'} to test another copy")
    raise UserError(f"{clash}; {fix}")


def _registrar(registry: Registry[Any], kind: PluginKind, source: str) -> Callable[[Any], None]:
    def register(obj: Any) -> None:
        registry.check(obj, source)
        name = getattr(obj, "name", None)
        if not isinstance(name, str) or not name:
            raise UserError(f"a {kind.name} plugin from {source} registered an object without a name")
        registry.add(name, obj, source, _describe(obj))

    return register


def _register_declared_overrides(registries: dict[str, Registry[Any]], overrides: Registry[Any],
                                 kind: PluginKind) -> None:
    """Registers the ``budget_overrides`` each generator and loss class declares, under the class's
    source; an override that selects another method is refused (it would silently change that one)."""
    for plural, field in (("generators", "generator"), ("losses", "loss")):
        for entry in registries[plural]:
            for override in entry.obj.budget_overrides:
                if getattr(override, field) != entry.name:
                    raise UserError(f"{field} '{entry.name}' from {entry.source} declares the budget override "
                                    f"{override.name}, which is not for {field} '{entry.name}'; set "
                                    f"{field}=\"{entry.name}\" in it or register it through register_budget_overrides")
                _registrar(overrides, kind, entry.source)(override)


def _check_budget_overrides(overrides: Registry[Any], config: RegistryConfig) -> None:
    for entry in overrides:
        if entry.obj.preset not in config.budgets:
            raise UserError(f"budget override {entry.name} from {entry.source} changes preset "
                            f"'{entry.obj.preset}', which registry.toml does not define; known presets: "
                            f"{', '.join(sorted(config.budgets))}")


@lru_cache(maxsize=1)
def get_plugins() -> Plugins:
    return build_plugins()
