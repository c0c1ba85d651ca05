"""Grid requests (what a user asks for) and their expansion into trial specs.

A request is validated against the loaded plugins before anything runs: unknown names,
bad bit-widths and malformed plugin options fail here, before a single epoch is spent. Each
spec names the teacher checkpoint the trial will use (:func:`zsqbench.assets.teachers.select_checkpoint`)
and the budget its methods resolve to (:func:`zsqbench.grid.budgets.resolve_budget`).
"""

from __future__ import annotations

import itertools
import tomllib
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from zsqbench.api.budgets import BudgetPreset, PartialBudget
from zsqbench.api.models import TeacherModel
from zsqbench.api.options import PluginOptions, close_match, fill_options, speed_switches
from zsqbench.api.plugins import Plugins
from zsqbench.api.spec import PluginChoice, TrialSpec
from zsqbench.assets.datasets import dataset_info
from zsqbench.assets.teachers import select_checkpoint
from zsqbench.bits import bits_label, parse_bits
from zsqbench.errors import UnknownNameError, UserError, first_validation_error
from zsqbench.grid.budgets import budget_label, resolve_budget
from zsqbench.runs.environment import Environment
from zsqbench.trial.build import check_budget


class GridRequest(BaseModel):
    """A grid as a user writes it (CLI flags or a TOML file with the same keys)."""

    model_config = ConfigDict(extra="forbid")

    model: str = "resnet20"
    dataset: str = "cifar10"
    generators: list[str]
    losses: list[str]
    bits: str = Field(description="e.g. '3,4,5' or '4/8'")
    seeds: list[int] = Field(default_factory=lambda: [0])
    budget: str = "cpu"
    quantizer: str = "uniform"
    options: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="per-plugin option overrides: {plugin name: {key: value}}"
    )
    optim: dict[str, Any] = Field(default_factory=dict, description="student/generator optimizer overrides")
    budget_overrides: PartialBudget = Field(
        default_factory=PartialBudget,
        description="budget fields that replace the preset's and the methods' (epochs, batch_size, ...); flags win",
    )

    @field_validator("generators", "losses", "seeds")
    @classmethod
    def _each_once(cls, values: list[Any]) -> list[Any]:
        """A value listed twice would put the same trial in the grid twice (one id, run twice or raced
        for by two workers); refused rather than silently dropped, since it is usually a typo."""
        seen: set[Any] = set()
        for value in values:
            if value in seen:
                raise ValueError(f"'{value}' is listed twice; give each value once")
            seen.add(value)
        return values


def load_grid_file(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"config file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"malformed config file {path}: {exc}; fix the TOML syntax") from None


def make_request(values: dict[str, Any], source: str) -> GridRequest:
    try:
        return GridRequest.model_validate(values)
    except ValidationError as exc:
        raise UserError(f"invalid grid in {source}: {first_validation_error(exc)}") from None


def resolve_teacher(plugins: Plugins, model: str, dataset: str) -> TeacherModel:
    dataset_info(dataset)
    if model in plugins.models:
        entry = plugins.models.get(model)
        if entry.dataset != dataset:
            raise UserError(
                f"model '{model}' is trained on {entry.dataset}, not {dataset}; pass --dataset {entry.dataset}"
            )
        return entry
    of_arch = [e.obj for e in plugins.models if e.obj.arch == model]
    matches = [t for t in of_arch if t.dataset == dataset]
    if matches:
        return matches[0]
    if of_arch:
        trained_on = sorted({t.dataset for t in of_arch})
        raise UnknownNameError(f"architecture '{model}' has no teacher for {dataset}, only for {', '.join(trained_on)}; "
                               f"pass --dataset {trained_on[0]} or another --model (`zsqbench plugins` lists them)")
    raise UnknownNameError(plugins.models.unknown_message(model))


def _option_owners(plugins: Plugins) -> dict[str, list[tuple[str, type]]]:
    """The plugins that take options, by name (a name may be a plugin of several kinds)."""
    owners: dict[str, list[tuple[str, type]]] = {}
    for entry in plugins.all_entries():  # every kind whose plugins are classes with Options
        model = getattr(entry.obj, "Options", None) if isinstance(entry.obj, type) else None
        if isinstance(model, type) and issubclass(model, PluginOptions):
            owners.setdefault(entry.name, []).append((entry.kind, entry.obj))
    return owners


def switch_tables(options: dict[str, Any], plugins: Plugins) -> dict[str, dict[str, Any]]:
    """The speed-only options among the option tables (checked by :func:`check_option_tables`),
    by plugin name: they go to the compute settings, not into trial ids."""
    owners = _option_owners(plugins)
    tables = {name: {k: v for _, cls in owners.get(name, []) for k, v in speed_switches(cls, values).items()}
              for name, values in options.items() if isinstance(values, dict)}
    return {name: table for name, table in tables.items() if table}


def check_option_tables(options: dict[str, Any], plugins: Plugins, origin: str = "") -> None:
    """Every plugin's option table checked against the plugin it names, whether the grid uses it
    or not: a typo in a name or key must not be ignored because the plugin is not in this grid
    (the next grid that uses it would then train a default). One line, with the closest match."""
    owners = _option_owners(plugins)
    given = f"options {origin} " if origin else "options "
    for name, values in options.items():
        if name not in owners:
            known = sorted(owners)
            raise UserError(f"{given}for unknown plugin '{name}'.{close_match(name, known)} "
                            f"Plugins that take options: {', '.join(known)}")
        if not isinstance(values, dict):
            raise UserError(f"{given}for '{name}' must be a table of KEY = VALUE, got {values!r}")
        for kind, cls in owners[name]:
            fill_options(cls, values, kind, name, origin)


def check_preset_fits(preset: BudgetPreset, name: str, teacher: TeacherModel) -> None:
    """A preset made for one input size (the ImageNet ones: 224 px; ``paper``: CIFAR's 32 px) is
    refused for teachers of another, in one line: its schedule, batch and synthesis sizes were
    chosen for that protocol."""
    size = teacher.input_size[-1]
    if preset.input_size is not None and preset.input_size != size:
        fitting = "in1k-smoke, in1k-short, in1k-paper" if size == 224 else "smoke, cpu, paper"
        raise UserError(f"budget '{name}' is for {preset.input_size}-px teachers, but model '{teacher.name}' takes "
                        f"{size}-px inputs; use {fitting} (or smoke/cpu with overrides)")


def check_quantizer_fits(quant_cls: type, options: dict[str, Any], teacher: TeacherModel,
                         bits: list[tuple[int, int]]) -> None:
    """Quantize the teacher's architecture once per bit-width on the meta device (no memory, no
    weights, no random draws), so that what a quantizer refuses for this model (an option naming no
    module of it, say) is refused while planning rather than when each trial starts. Only the
    quantizer's own one-line refusals count: a quantizer or model that cannot be built on the meta
    device is left to the trial."""
    for w_bits, a_bits in sorted(set(bits)):
        try:
            with torch.device("meta"):
                network = teacher.build()
            quantizer = quant_cls(quant_cls.Options(**options))
        except Exception:
            return
        try:
            with torch.device("meta"):
                quantizer.quantize(network, w_bits, a_bits)
        except UserError as exc:
            raise UserError(f"quantizer '{quant_cls.name}' refuses model {teacher.name} ({bits_label(w_bits, a_bits)}): "
                            f"{exc}") from None
        except Exception:
            return


def expand(request: GridRequest, plugins: Plugins, env: Environment,
           budget_flags: PartialBudget | None = None) -> list[TrialSpec]:
    """Cross product generators × losses × bits × seeds, in that nesting order. ``budget_flags``:
    the budget fields given as flags (they win over the request's ``budget_overrides``)."""
    teacher = resolve_teacher(plugins, request.model, request.dataset)
    check_preset_fits(plugins.config.budget(request.budget), request.budget, teacher)  # unknown presets fail first
    bits = parse_bits(request.bits)
    if not request.generators or not request.losses:
        raise UserError("empty grid: give at least one --generators and one --loss")
    quant_cls = plugins.quantizers.get(request.quantizer)
    for name in request.generators:
        plugins.generators.get(name)  # unknown names first: they say more than an option would
    for name in request.losses:
        plugins.losses.get(name).check_quantizer(quant_cls)  # e.g. AIT needs integer weight codes
    check_option_tables(request.options, plugins)  # the user's own options before any file is looked at
    checkpoint = select_checkpoint(teacher, env.data_root, env.teacher_weights, env.offline)
    quant = PluginChoice(name=request.quantizer, options=fill_options(
        quant_cls, request.options.get(request.quantizer, {}), "quantizer", request.quantizer))
    check_quantizer_fits(quant_cls, quant.options, teacher, bits)
    specs: list[TrialSpec] = []
    for gen_name, loss_name, (w, a), seed in itertools.product(request.generators, request.losses, bits, request.seeds):
        gen_cls = plugins.generators.get(gen_name)
        loss_cls = plugins.losses.get(loss_name)
        resolved = resolve_budget(plugins, request.budget, gen_name, loss_name,
                                  config=request.budget_overrides, flags=budget_flags)
        budget, optim = resolved.budget, resolved.optim
        gen_options = {**resolved.generator_options, **request.options.get(gen_name, {})}
        if request.optim:
            try:
                optim = type(optim).model_validate({**optim.model_dump(), **request.optim})
            except ValidationError as exc:
                raise UserError(f"bad optimizer override: {first_validation_error(exc)}") from None
        try:
            spec = TrialSpec(
                model=teacher.name,
                dataset=request.dataset,
                generator=PluginChoice(name=gen_name, options=fill_options(gen_cls, gen_options, "generator", gen_name)),
                loss=PluginChoice(name=loss_name,
                                  options=fill_options(loss_cls, request.options.get(loss_name, {}), "loss", loss_name)),
                quantizer=quant,
                w_bits=w,
                a_bits=a,
                seed=seed,
                budget=budget,
                optim=optim,
                teacher=checkpoint,
                budget_name=budget_label(request.budget, resolved),
            )
        except ValidationError as exc:
            raise UserError(f"invalid trial: {first_validation_error(exc)}") from None
        check_budget(gen_cls, spec)
        specs.append(spec)
    return specs
