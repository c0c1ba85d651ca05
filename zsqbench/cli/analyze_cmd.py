"""`zsqbench analyze`: curvature (Hessian trace) of trials' student losses, saved beside each trial."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.table import Table

from zsqbench.api.plugins import get_plugins
from zsqbench.assets.data import resolve_cache_dir, resolve_data_root
from zsqbench.bits import bits_label
from zsqbench.cli.console import err, out
from zsqbench.errors import UserError
from zsqbench.runs.environment import Environment, offline_from_env, resolve_device
from zsqbench.runs.folder import TrialFolder


def add_parser(sub) -> None:
    p = sub.add_parser("analyze", help="curvature analysis of trials",
                       description="Analyse trials: Hessian-trace curvature of the student loss.")
    verbs = p.add_subparsers(dest="verb", metavar="VERB", required=True)

    h = verbs.add_parser("hessian", help="estimate tr(H) of the student loss at saved epochs (Hutchinson)",
                         description="Estimate the Hessian trace of each chosen trial's student objective at its "
                         "saved epochs, on one fixed seeded generator batch, and save it in <trial>/analysis/.")
    h.add_argument("results", nargs="?", type=Path, default=Path("results"), help="results folder (default ./results)")
    h.add_argument("--trials", help="comma-separated trial ids or id prefixes (default: all matching --filter)")
    h.add_argument("--filter", action="append", default=[], metavar="KEY=VALUE",
                   help="e.g. --filter loss=akt --filter bits=W3A3 (generator, loss, model, dataset, bits, w_bits, "
                   "a_bits, seed, budget)")
    h.add_argument("--epochs", default="all", help="'all' saved epochs (default), 'last', or e.g. '0,4,9'")
    h.add_argument("--batch-size", type=int, default=64, help="size of the fixed batch (default 64)")
    h.add_argument("--seed", type=int, default=0, help="seed of the batch and the probes (default 0)")
    h.add_argument("--probes", type=int, default=50, help="maximum Rademacher probes per epoch (default 50)")
    h.add_argument("--min-probes", type=int, default=10, help="minimum probes before stopping (default 10)")
    h.add_argument("--rtol", type=float, default=0.05,
                   help="stop when the standard error is below this fraction of |trace| (default 0.05)")
    h.add_argument("--data-root", help="data root with the teacher weights (default: $ZSQBENCH_DATA)")
    h.add_argument("--teacher-weights", type=Path,
                   help="teacher weights file, if the trial's recorded one is not available")
    h.add_argument("--cache-dir", type=Path, help="cache of synthesized data (default: $ZSQBENCH_CACHE)")
    h.add_argument("--device", default="auto", help="cpu, cuda or auto")
    h.add_argument("--force", action="store_true", help="recompute epochs already analysed")
    h.add_argument("--json", action="store_true", help="print the analyses as JSON")
    h.set_defaults(execute=execute_hessian)

    ls = verbs.add_parser("list", help="list saved analyses", description="List saved Hessian analyses.")
    ls.add_argument("results", nargs="?", type=Path, default=Path("results"))
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(execute=execute_list)


def _filters(items: list[str]) -> dict[str, str]:
    result = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"bad filter '{item}': write KEY=VALUE, e.g. --filter loss=akt")
        result[key.strip()] = value.strip()
    return result


def _epochs(text: str, trial: TrialFolder) -> list[int] | None:
    if text == "all":
        return None
    if text == "last":
        available = trial.snapshot_epochs()
        return available[-1:] if available else []
    try:
        return [int(e) for e in text.split(",") if e.strip()]
    except ValueError:
        raise UserError(f"bad --epochs '{text}': use all, last or integers like 0,4,9") from None


def execute_hessian(args: argparse.Namespace) -> int:
    from zsqbench.analysis.trials import analyse_hessian, find_trials

    if args.probes < 2 or args.min_probes < 2 or args.min_probes > args.probes:
        raise UserError("need 2 <= --min-probes <= --probes")
    trials = find_trials(args.results, [t.strip() for t in args.trials.split(",")] if args.trials else None,
                         _filters(args.filter))
    env = Environment(data_root=resolve_data_root(args.data_root), device=resolve_device(args.device),
                      cache_dir=resolve_cache_dir(args.cache_dir), teacher_weights=args.teacher_weights,
                      offline=offline_from_env())
    plugins = get_plugins()
    analyses = []
    for trial in trials:
        analyses.append(analyse_hessian(
            trial, plugins, env, _epochs(args.epochs, trial), batch_size=args.batch_size, seed=args.seed,
            max_probes=args.probes, min_probes=args.min_probes, rtol=args.rtol, force=args.force,
            report=(lambda text: None) if args.json else (lambda text: err.print(text, highlight=False)),
        ))
    if args.json:
        print(json.dumps(analyses, indent=2))
    else:
        _print(analyses)
    return 0


def execute_list(args: argparse.Namespace) -> int:
    from zsqbench.analysis.trials import ANALYSIS

    analyses = [a for f in TrialFolder.find(args.results) if (a := f.read_analysis(ANALYSIS))]
    if args.json:
        print(json.dumps(analyses, indent=2))
    else:
        _print(analyses)
    return 0


def _print(analyses: list[dict]) -> None:
    table = Table(title="Hessian trace of the student loss (Hutchinson; mean ± standard error)")
    for col in ("trial", "generator", "loss", "bits", "seed", "epoch", "tr(H)", "± s.e.", "probes"):
        table.add_column(col)
    for a in analyses:
        s = a["spec"]
        for epoch, e in a["epochs"].items():
            table.add_row(a["trial_id"], s["generator"], s["loss"], bits_label(s["w_bits"], s["a_bits"]), str(s["seed"]),
                          epoch, f"{e['trace']:.4g}", f"{e['stderr']:.2g}",
                          f"{e['num_probes']}{'' if e['converged'] else '*'}")
    out.print(table)
    out.print("* not converged within the probe limit")
