"""`zsqbench teacher-eval`: the FP teacher's top-1 on the test set against its pinned expectation.

Every trial measures its teacher first; this runs that step alone, so a user can check a new
machine, data copy or weights file (IMAGENET.md §8.2: the pinned ImageNet checkpoints must
reproduce 71.47 / 77.72 / 73.03 within ±0.15 on the cached validation set) before starting a
grid. The teacher is selected and loaded exactly as a trial does (pinned files verified), the
test set is the trial's (for ImageNet: decoded into the cache on first use). Exit 0 when the
measurement is within the tolerance or nothing can be compared (unpinned weights without an
expected accuracy, or a subset of the test set: the expectation holds for the full set only);
exit 1 when it is outside; 2 for user errors.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from zsqbench.cli.console import RichProgress, out
from zsqbench.errors import UnknownNameError, UserError

DEFAULT_TOLERANCE = 0.15  # = zsqbench.assets.teachers.FP_TOLERANCE (not imported: `--help` stays free of torch)


def add_parser(sub) -> None:
    p = sub.add_parser(
        "teacher-eval", help="measure a teacher's FP top-1 and compare it with its pinned expectation",
        description="Load a teacher as a trial does (pinned checkpoint, verified), measure its FP top-1 on the "
                    "test set with a progress bar, and compare it with the checkpoint's expected accuracy. "
                    "Exit 0 within the tolerance (or when nothing can be compared, which it says), 1 outside.",
    )
    p.add_argument("--model", required=True, help="teacher name or architecture, e.g. resnet18 or resnet20")
    p.add_argument("--dataset", help="cifar10, cifar100 or imagenet (default: the teacher's own)")
    p.add_argument("--data-root", help="folder with the test sets and weights/ (default: $ZSQBENCH_DATA)")
    p.add_argument("--teacher-weights", type=Path, help="use this weights file for the teacher")
    p.add_argument("--cache-dir", type=Path,
                   help="cache for decoded ImageNet images (default: $ZSQBENCH_CACHE or ~/.cache/zsqbench)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    p.add_argument("--offline", action="store_true",
                   help="never download: missing test sets or teacher weights are an error (also ZSQBENCH_OFFLINE=1)")
    p.add_argument("--batch-size", type=int, default=500, help="evaluation batch size (default 500)")
    p.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                   help=f"allowed |measured - expected| in points (default {DEFAULT_TOLERANCE})")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar or messages")
    p.set_defaults(execute=execute)



def evaluate_teacher(args: argparse.Namespace, progress: Any) -> dict[str, Any]:
    import torch

    from zsqbench.api.plugins import get_plugins
    from zsqbench.assets.data import load_test_set, resolve_cache_dir, resolve_data_root
    from zsqbench.assets.teachers import fp_verdict, load_teacher, select_checkpoint
    from zsqbench.grid.request import resolve_teacher
    from zsqbench.runs.environment import offline_from_env, resolve_device
    from zsqbench.runs.provenance import device_name
    from zsqbench.trial.evaluate import top1

    plugins = get_plugins()
    dataset = args.dataset
    if dataset is None:
        if args.model not in plugins.models:
            datasets = sorted(e.obj.dataset for e in plugins.models if e.obj.arch == args.model)
            if not datasets:
                raise UnknownNameError(plugins.models.unknown_message(args.model))
            raise UserError(f"'{args.model}' is an architecture, not a teacher name: give --dataset too "
                            f"(one of {', '.join(datasets)})")
        dataset = plugins.models.get(args.model).dataset
    entry = resolve_teacher(plugins, args.model, dataset)
    root, device = resolve_data_root(args.data_root), resolve_device(args.device)
    offline = args.offline or offline_from_env()
    started = time.perf_counter()
    test = load_test_set(dataset, root, offline=offline, progress=progress, cache_dir=resolve_cache_dir(args.cache_dir))
    ref = select_checkpoint(entry, root, args.teacher_weights, offline)
    loaded = load_teacher(entry, ref, root, args.teacher_weights, offline, progress)
    model = loaded.module.to(device).eval()
    measured = top1(model, test.inputs(loaded.normalization), test.labels, device, args.batch_size,
                    progress=progress, what=f"{entry.name} on {len(test):,} {dataset} test images")
    verdict, passed = fp_verdict(measured, loaded.expected_top1, test.complete, args.tolerance)
    diff = None if loaded.expected_top1 is None else measured - loaded.expected_top1
    return {
        "model": entry.name, "dataset": dataset, "weights": loaded.weights_tag, "weights_path": str(loaded.weights_path),
        "weights_sha256": loaded.sha256, "images": len(test), "complete_test_set": test.complete,
        "data_sha256": test.sha256, "top1": measured, "expected_top1": loaded.expected_top1, "difference": diff,
        "tolerance": args.tolerance, "verdict": verdict, "passed": passed, "device": device_name(device),
        "wall_s": time.perf_counter() - started, "torch": torch.__version__,
    }


def describe(r: dict[str, Any]) -> str:
    """The one-line verdict."""
    head = f"{r['model']} ({r['weights']}) on {r['images']:,} {r['dataset']} test images: top-1 {r['top1']:.2f} %"
    if r["verdict"] == "no-expectation":
        return f"{head}; no expected accuracy for these weights, so nothing is compared"
    exp, diff = r["expected_top1"], r["difference"]
    if r["verdict"] == "subset":
        return (f"{head}; not the full test set, so not compared with the expected {exp:.2f} % (which holds for "
                "the full set)")
    word = "OK, within" if r["passed"] else "FAILED, outside"
    return f"{head}, expected {exp:.2f} % ({diff:+.2f} points): {word} ±{r['tolerance']:.2f}"


def execute(args: argparse.Namespace) -> int:
    if args.batch_size < 1:
        raise UserError("--batch-size must be at least 1")
    if args.tolerance < 0:
        raise UserError("--tolerance is a number of points, at least 0")
    with RichProgress(quiet=args.quiet or args.json) as progress:
        result = evaluate_teacher(args, progress)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        out.print(describe(result), highlight=False, markup=False, soft_wrap=True)
    return 0 if result["passed"] else 1
