"""`zsqbench run`: expand a grid and run it (no arguments: the default run of registry.toml)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from pydantic import ValidationError

from zsqbench.api.budgets import BudgetFields, PartialBudget
from zsqbench.api.plugins import get_plugins
from zsqbench.api.spec import Budget
from zsqbench.assets.data import resolve_cache_dir, resolve_data_root
from zsqbench.assets.datasets import CHANCE_FLAG_FACTOR, dataset_info, near_chance
from zsqbench.bits import bits_label
from zsqbench.cli.compute_flags import add_compute_flags, compute_settings
from zsqbench.cli.console import RichProgress, out
from zsqbench.cli.lease_flag import add_lease_timeout, lease_timeout
from zsqbench.cli.tables import TextTable, show_table
from zsqbench.errors import UserError, first_validation_error
from zsqbench.grid.request import check_option_tables, expand, load_grid_file, make_request, switch_tables
from zsqbench.grid.runner import check_run_name, grid_states, run_grid, trial_folder
from zsqbench.perf.estimate import CONFIRM_SECONDS, device_label, duration, estimate_compute
from zsqbench.runs.environment import Environment, offline_from_env, resolve_device
from zsqbench.runs.folder import TrialFolder

DESCRIPTION = """\
Run generators x losses x bit-widths x seeds. With no grid flags, runs the default from
registry.toml (GDFQ + KD, ResNet-20 CIFAR-10, W3A3, CPU budget).
"""


def _csv(text: str) -> list[str]:
    return [p.strip() for p in text.split(",") if p.strip()]


def _seeds(text: str) -> list[int]:
    """--seeds as integers; none at all is refused, not a grid of 0 trials that "succeeds"."""
    try:
        seeds = [int(p) for p in _csv(text)]
    except ValueError:
        raise UserError(f"--seeds must be integers like '0,1,2', got '{text}'") from None
    if not seeds:
        raise UserError(f"--seeds '{text}' names no seed; give comma-separated integers, e.g. --seeds 0,1,2")
    if any(seed < 0 for seed in seeds):
        raise UserError(f"--seeds must be non-negative integers, got '{text}'")
    return seeds


def _epochs(text: str) -> list[int]:
    """--lr-milestones as epochs; '' is none (the learning rates never drop)."""
    try:
        return [int(p) for p in _csv(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated epochs like '100,200', got '{text}'") from None


#: How a budget field's flag value is read, by the field's type.
_FLAG_TYPES: dict[Any, Callable[[str], Any]] = {int: int, Optional[int]: int, list[int]: _epochs}


def add_budget_flags(p: argparse.ArgumentParser) -> None:
    """One flag per budget field (``--epochs``, ``--iters-per-epoch``, ...), its help the field's
    description: a field added to the budget is a flag without touching this command."""
    for name, field in BudgetFields.model_fields.items():
        p.add_argument("--" + name.replace("_", "-"), dest=name, type=_FLAG_TYPES[field.annotation],
                       help=f"override the preset's {field.description}")


def budget_flags(args: argparse.Namespace) -> PartialBudget:
    """The budget fields given as flags: the top layer of every trial's budget."""
    given = {name: value for name in BudgetFields.model_fields if (value := getattr(args, name)) is not None}
    try:
        return PartialBudget(**given)
    except ValidationError as exc:
        raise UserError(f"bad budget override: {first_validation_error(exc)}") from None


def add_parser(sub) -> None:
    p = sub.add_parser(
        "run",
        help="run a grid of trials",
        description=DESCRIPTION,
    )
    p.add_argument("--generators", type=_csv, help="comma-separated generator plugins, e.g. gdfq,adadfq,hast")
    p.add_argument("--loss", "--losses", dest="losses", type=_csv, help="comma-separated loss plugins, e.g. kd,akt")
    p.add_argument("--bits", help="bit-widths: '3,4,5' means W3A3,W4A4,W5A5; '4/8' means W4A8")
    p.add_argument("--seeds", help="comma-separated seeds (default 0)")
    p.add_argument("--model", help="teacher architecture or name (default resnet20)")
    p.add_argument("--dataset", help="cifar10 or cifar100")
    p.add_argument("--budget", help="budget preset: smoke, cpu, paper (32-px CIFAR teachers), in1k-smoke, in1k-short, "
                   "in1k-paper (224-px ImageNet teachers only), ... (methods may override it: see --dry-run)")
    p.add_argument("--quantizer", help="quantizer plugin (default uniform)")
    p.add_argument("-o", "--option", action="append", default=[], metavar="PLUGIN.KEY=VALUE",
                   help="plugin option, e.g. -o gdfq.temperature=4 (repeatable; VALUE is JSON or a string)")
    p.add_argument("--config", type=Path, help="TOML file with the same keys as the flags (flags win)")
    p.add_argument("--data-root", help="folder with the test sets and weights/ (default: $ZSQBENCH_DATA)")
    p.add_argument("--teacher-weights", type=Path, help="use this weights file for the teacher")
    p.add_argument("--offline", action="store_true",
                   help="never download: missing test sets or teacher weights are an error (also ZSQBENCH_OFFLINE=1); "
                        "by default they are downloaded, checksums verified")
    p.add_argument("--cache-dir", type=Path, help="cache for synthesized data (default: $ZSQBENCH_CACHE or ~/.cache/zsqbench)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    add_compute_flags(p)
    p.add_argument("--out", type=Path, default=Path("results"), help="results directory (default ./results)")
    p.add_argument("--run", dest="run_name", default="default", help="run folder name under --out")
    add_budget_flags(p)
    p.add_argument("--executor", default="local", help="where trials run: local (default), multi-gpu, slurm, ray")
    p.add_argument("--max-parallel", type=int, help="at most this many trials at once (multi-gpu, slurm, ray)")
    p.add_argument("--retry-failed", action="store_true", help="run trials that failed earlier again")
    add_lease_timeout(p, "a trial whose worker sent no heartbeat for this long is taken over and resumed")
    p.add_argument("--yes", action="store_true",
                   help="start without asking: a grid estimated at over an hour on its device asks first, and "
                        "without a terminal to ask on is refused unless --yes is given")
    p.add_argument("--force", action="store_true", help="re-run trials that are already done (from scratch)")
    p.add_argument("--export", metavar="FORMAT",
                   help="export every finished trial (only 'onnx'), verified in ONNX Runtime, as `zsqbench export` "
                        "does; fills the leaderboard's onnx_top1 (needs pip install 'zsqbench[export]')")
    p.add_argument("--dry-run", action="store_true",
                   help="print the expanded grid and its compute estimate for --device, then exit")
    p.add_argument("--json", action="store_true", help="print results (or the dry-run grid) as JSON")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress display")
    p.set_defaults(execute=execute)


def _parse_options(items: list[str]) -> dict[str, dict[str, Any]]:
    options: dict[str, dict[str, Any]] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        plugin, dot, name = key.partition(".")
        if not sep or not dot or not plugin or not name:
            raise UserError(f"bad option '{item}': write PLUGIN.KEY=VALUE, e.g. -o gdfq.temperature=4")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        options.setdefault(plugin, {})[name] = value
    return options


def build_request(args: argparse.Namespace, plugins) -> tuple[dict[str, Any], str]:
    values: dict[str, Any] = plugins.config.default_run.model_dump()
    source = "registry.toml [default_run]"
    if args.config:
        config = load_grid_file(args.config)
        if isinstance(config.get("options"), dict):  # other shapes: make_request names the problem
            check_option_tables(config["options"], plugins, f"in {args.config}")
        values.update(config)
        source = str(args.config)
    flags = {
        "generators": args.generators, "losses": args.losses, "bits": args.bits,
        "seeds": None if args.seeds is None else _seeds(args.seeds),
        "model": args.model, "dataset": args.dataset, "budget": args.budget, "quantizer": args.quantizer,
    }
    given = {k: v for k, v in flags.items() if v is not None}
    if given:  # a problem in a flag's value is named where the user wrote it
        source = "the command line" if not args.config else f"{args.config} and the command line"
    values.update(given)
    cli_options = _parse_options(args.option)
    check_option_tables(cli_options, plugins, "given with -o")
    if cli_options:
        merged = dict(values.get("options", {}))
        for plugin, opts in cli_options.items():
            merged[plugin] = {**merged.get(plugin, {}), **opts}
        values["options"] = merged
    return values, source


def _split_executor_options(values: dict[str, Any], executors: list[str]) -> dict[str, dict[str, Any]]:
    options = values.get("options", {})
    taken = {name: options.pop(name) for name in list(options) if name in executors}
    return taken


def execute(args: argparse.Namespace) -> int:
    check_run_name(args.run_name)  # a run is one folder under --out: nothing is written outside it
    plugins = get_plugins()
    values, source = build_request(args, plugins)
    budget_layer = budget_flags(args)
    executor_options = _split_executor_options(values, plugins.executors.names())
    plugins.executors.get(args.executor)  # unknown executor: one-line error before anything else
    if args.max_parallel is not None and args.max_parallel < 1:
        raise UserError(f"--max-parallel must be at least 1, got {args.max_parallel}; "
                        "leave it out for the executor's default")
    if args.export is not None:  # a bad format or a missing extra: refused before any trial runs
        from zsqbench.export import check_format, require_export_extra

        check_format(args.export)
        require_export_extra()
    request = make_request(values, source)
    # A dry run plans on any machine (a login node has no GPU): only the data root and teacher matter.
    device = torch.device("cpu") if args.dry_run else resolve_device(args.device)
    device_type = planned_device_type(args.device) if args.dry_run else device.type
    env = Environment(
        data_root=resolve_data_root(args.data_root), device=device, cache_dir=resolve_cache_dir(args.cache_dir),
        teacher_weights=args.teacher_weights, offline=args.offline or offline_from_env(),
        lease_timeout_s=lease_timeout(args), **compute_settings(args).describe(),
        switches=switch_tables(request.options, plugins),  # speed-only -o options: compute settings, not ids
    )
    specs = expand(request, plugins, env, budget_layer)
    if args.dry_run:
        return _print_grid(specs, args, plugins, device_type)
    todo = [s for s in specs if trial_folder(args.out, args.run_name, s).state != "done" or args.force]
    estimate = estimate_compute(todo, plugins)
    if not (args.quiet or args.json):
        out.print(f"{len(specs)} trial(s), {len(todo)} to run: {estimate.describe(device_type)}", highlight=False)
    if not (args.yes or confirmed(estimate.seconds(device_type), device_type)):
        return 0
    with RichProgress(quiet=args.quiet or args.json) as progress:
        report = run_grid(
            specs, plugins, env, args.device, args.out, args.run_name, progress,
            executor_name=args.executor, executor_options=executor_options.get(args.executor, {}),
            max_parallel=args.max_parallel, force=args.force, retry_failed=args.retry_failed,
        )
    rows = report.done + report.skipped
    finished = {r["trial_id"] for r in rows}  # the folders come from the grid's own specs, never from result fields
    folders = [trial_folder(args.out, args.run_name, s) for s in specs if s.trial_id in finished]
    export_failed = _export(folders, args, env, plugins, progress_quiet=args.quiet or args.json) if args.export else []
    if args.json:
        print(json.dumps({
            "results": [{k: r[k] for k in ("trial_id", "fp_top1", "ptq_top1", "top1_last", "top1_oracle", "wall_s")}
                        | {"spec": r["spec"]} for r in rows],
            "failed": [{"trial_id": t, "error": e} for t, e in report.failed],
            "left_failed": report.left_failed,
            "elsewhere": [{"trial_id": t, "reason": why} for t, why in report.elsewhere],
            "export_failed": [{"trial_id": t, "error": e} for t, e in export_failed],
        }, indent=2))
    else:
        _print_results(rows, report, args.out)
    return 1 if report.failed or export_failed else 0


def planned_device_type(name: str) -> str:
    """The device type a run with ``--device name`` trains on, without needing it here: a dry run
    on a login node plans a GPU run (``--device cuda``) with the GPU's estimate; ``auto`` is what
    the run would resolve to on this machine."""
    if name == "auto":
        return resolve_device(name).type
    try:
        return torch.device(name).type
    except RuntimeError:
        return resolve_device(name).type  # its one-line error for a name torch does not parse


def confirmed(seconds: float, device_type: str) -> bool:
    """Ask before a grid estimated to take more than CONFIRM_SECONDS on its device (small grids,
    smoke ones, never ask). Without a terminal to ask on, refuse: a script or CI job must say
    --yes rather than start days of compute by accident."""
    if seconds <= CONFIRM_SECONDS:
        return True
    took = f"≈ {duration(seconds)} on {device_label(device_type)}"
    if not sys.stdin.isatty():
        raise UserError(f"this grid would take {took} and there is no terminal to confirm it on; "
                        "pass --yes to start it (or --dry-run to see it)")
    print(f"This grid would take {took}. Start? [y/N] ", end="", file=sys.stderr, flush=True)
    if sys.stdin.readline().strip().lower() in ("y", "yes"):
        return True
    print("not started", file=sys.stderr)
    return False


def _export(folders: list[TrialFolder], args: argparse.Namespace, env: Environment, plugins,
            progress_quiet: bool) -> list[tuple[str, str]]:
    """Export the finished trials (on the CPU, where ONNX Runtime verifies them), then rebuild the
    leaderboard so that it shows their onnx_top1. ``folders``: where the grid put its trials under
    --out (a trial's result file names its run and id too, but a file never decides a path)."""
    from zsqbench.export.trial_export import ExportSettings, export_all
    from zsqbench.leaderboard.results_folder import rebuild_leaderboard

    cpu_env = Environment(data_root=env.data_root, device=torch.device("cpu"), cache_dir=env.cache_dir,
                          teacher_weights=env.teacher_weights, offline=env.offline)
    failed = export_all(folders, plugins, cpu_env, ExportSettings(), force=args.force,
                        report=(lambda text: None) if progress_quiet else (lambda t: out.print(t, highlight=False)))
    if folders:
        rebuild_leaderboard(args.out)
    return failed


def _print_grid(specs, args, plugins, device_type: str) -> int:
    rows = grid_states(specs, args.out, args.run_name, lease_timeout(args))
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    todo = [s for s, r in zip(specs, rows) if r["state"] != "done"]
    shown = [c for c in rows[0] if c not in Budget.model_fields]
    shown.insert(shown.index("budget") + 1, "schedule")
    cells = [[str({**r, "schedule": spec.budget.describe()}[c]) for c in shown] for spec, r in zip(specs, rows)]
    show_table(TextTable(shown, cells, title=f"{len(specs)} trial(s), {len(todo)} to run, results in "
                                             f"{args.out / args.run_name}"))
    out.print("schedule: epochs x iterations x batch; `--json` lists every field", highlight=False)
    out.print(f"estimate: {estimate_compute(todo, plugins).describe(device_type)}", highlight=False)
    return 0


def is_smoke(budget_name: str) -> bool:
    """A trial of a smoke preset (smoke, in1k-smoke; with or without overrides)."""
    preset = budget_name.split("+")[0]
    return preset == "smoke" or preset.endswith("-smoke")


def _print_results(rows, report, out_dir: Path) -> None:
    if rows:
        at_chance, cells = 0, []
        for r in rows:
            s = r["spec"]
            chance = near_chance(r["top1_last"], dataset_info(s["dataset"]).num_classes)
            at_chance += chance
            cells.append([r["trial_id"], s["generator"]["name"], s["loss"]["name"], bits_label(s["w_bits"], s["a_bits"]),
                          str(s["seed"]), f"{r['fp_top1']:.2f}", f"{r['ptq_top1']:.2f}",
                          f"{r['top1_last']:.2f}" + (" †" if chance else ""), f"{r['top1_oracle']:.2f}"])
        show_table(TextTable(["trial", "generator", "loss", "bits", "seed", "FP", "PTQ", "top-1 last", "oracle*"],
                             cells, title=f"results (leaderboard: {out_dir / 'leaderboard.csv'})"))
        out.print("* oracle = best epoch selected on the test set; report 'top-1 last'.")
        if at_chance:
            out.print(f"† at chance: {at_chance} trial(s) ended within {CHANCE_FLAG_FACTOR}x of guessing "
                      "(100 / classes %); the trial ran, but its number says nothing about the method.",
                      highlight=False)
        if any(is_smoke(r["spec"].get("budget_name", "")) for r in rows):
            out.print("smoke-budget numbers are plumbing checks (does the grid run?), not results: "
                      "use --budget cpu or paper for numbers to compare.", highlight=False)
    for trial_id, error in report.failed:
        out.print(f"[red]failed[/red] {trial_id}: {error}", highlight=False)
    if report.elsewhere:
        out.print(f"{len(report.elsewhere)} trial(s) left to other workers sharing {out_dir} (see `zsqbench status "
                  f"{out_dir}`); they join the leaderboard when they finish", highlight=False)
