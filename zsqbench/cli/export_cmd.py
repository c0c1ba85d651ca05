"""`zsqbench export`: a finished trial's student as an integer ONNX model, verified in ONNX Runtime."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from zsqbench.cli.console import err, out
from zsqbench.errors import UserError

DESCRIPTION = """\
Write a finished trial's student as model.onnx (integer weights, QuantizeLinear -> Clip ->
DequantizeLinear activations) with quantization.json, check it on the full test set in ONNX Runtime
against the student in PyTorch, and measure its size and latency against the FP32 teacher. Needs the
export extra: pip install 'zsqbench[export]'.
"""


def add_parser(sub) -> None:
    p = sub.add_parser(
        "export", help="export a finished trial's student to ONNX, verified in ONNX Runtime",
        description=DESCRIPTION,
    )
    p.add_argument("trial", help="a trial folder, or a trial id (or a unique prefix) under --results")
    p.add_argument("--format", default="onnx", help="export format (only 'onnx')")
    p.add_argument("--out", type=Path, help="output folder (default: <trial>/export/onnx)")
    p.add_argument("--results", type=Path, default=Path("results"), help="results folder for trial ids (default ./results)")
    p.add_argument("--fold-bn", action="store_true",
                   help="fold BN into the weights' scales so ONNX Runtime can fuse 8-bit convolutions into integer "
                        "kernels (QLinearConv); those round the bias, so pass a lower --min-agreement (README, Deployment)")
    p.add_argument("--npz", action="store_true", help="also write weights.npz (integer weights, scales, zero points)")
    p.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads for verification and latency (default 1)")
    p.add_argument("--latency-batch", type=int, default=100, help="images per batch in the latency measurement (default 100)")
    p.add_argument("--latency-runs", type=int, default=20, help="timed runs per model (default 20)")
    p.add_argument("--min-agreement", type=float, default=None,
                   help="percent of predictions that must agree with the student, a disagreement that float "
                        "rounding explains (a tie) counting as agreement (default 99.5)")
    p.add_argument("--data-root", help="folder with the test sets and weights/ (default: $ZSQBENCH_DATA)")
    p.add_argument("--teacher-weights", type=Path, help="teacher weights file, if the trial's recorded one is not available")
    p.add_argument("--json", action="store_true", help="print quantization.json's summary as JSON")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress messages")
    p.set_defaults(execute=execute)


def _check_numbers(args: argparse.Namespace) -> None:
    for flag in ("threads", "latency_batch", "latency_runs"):
        if getattr(args, flag) < 1:
            raise UserError(f"--{flag.replace('_', '-')} must be at least 1")
    if args.min_agreement is not None and not 0 <= args.min_agreement <= 100:
        raise UserError("--min-agreement is a percentage between 0 and 100")


def execute(args: argparse.Namespace) -> int:
    from zsqbench.export import check_format, require_export_extra

    check_format(args.format)
    _check_numbers(args)
    require_export_extra()
    from zsqbench.api.plugins import get_plugins
    from zsqbench.assets.data import resolve_cache_dir, resolve_data_root
    from zsqbench.export.runtime import MIN_AGREEMENT
    from zsqbench.export.trial_export import ExportMismatch, ExportSettings, export_trial, resolve_trial
    from zsqbench.runs.environment import Environment, offline_from_env, resolve_device

    folder = resolve_trial(args.trial, args.results)
    env = Environment(data_root=resolve_data_root(args.data_root), device=resolve_device("cpu"),
                      cache_dir=resolve_cache_dir(None), teacher_weights=args.teacher_weights,
                      offline=offline_from_env())
    settings = ExportSettings(out=args.out, fold_bn=args.fold_bn, npz=args.npz, threads=args.threads,
                              latency_batch=args.latency_batch, latency_runs=args.latency_runs,
                              min_agreement=MIN_AGREEMENT if args.min_agreement is None else args.min_agreement)
    quiet = args.quiet or args.json
    try:
        document = export_trial(folder, get_plugins(), env, settings,
                                report=(lambda text: None) if quiet else (lambda text: err.print(text, highlight=False)))
    except ExportMismatch as exc:
        print(f"zsqbench: export failed: {exc}", file=sys.stderr)
        return 1
    where = args.out or folder.path / "export" / "onnx"
    if args.json:
        print(json.dumps(summary(document, where), indent=2))
    else:
        print_summary(document, where)
    return 0


def summary(document: dict[str, Any], where: Path) -> dict[str, Any]:
    """The numbers a user looks at first (quantization.json holds everything)."""
    v, size, lat = document["verification"], document["size"], document["latency"]
    return {
        "trial_id": document["trial"]["trial_id"], "out": str(where),
        "top1_last": document["trial"]["top1_last"], "student_top1": v["student_top1"], "onnx_top1": v["onnx_top1"],
        "agreement": v["agreement"], "disagreements": v["disagreements"], "images": v["images"],
        "agreement_beyond_rounding": v["agreement_beyond_rounding"],
        "rounding_disagreements": v["tied_disagreements"] + v["code_tie_disagreements"],
        "top1_diff_beyond_rounding": v["top1_diff_beyond_rounding"],
        "max_abs_logit_diff": v["max_abs_logit_diff"], "median_abs_logit_diff": v["median_abs_logit_diff"],
        "bytes_at_bits": size["true_bits_bytes"], "bytes_stored": size["file_bytes"],
        "fp32_bytes": size["fp32_teacher_tensor_bytes"], "ms_per_batch": lat["ms_per_batch"], "batch": lat["batch"],
        "threads": lat["threads"], "integer_convs": document["runtime_kernels"]["student"].get("QLinearConv", 0),
        "latency_grid": lat.get("grid"),
    }


def print_summary(document: dict[str, Any], where: Path) -> None:
    s = summary(document, where)
    bits = document["trial"]["spec"]
    out.print(f"exported trial {s['trial_id']} (W{bits['w_bits']}A{bits['a_bits']}) to {where}", highlight=False)
    out.print(f"  top-1: student {s['student_top1']:.2f} % in PyTorch (result.json: {s['top1_last']:.2f} %), "
              f"ONNX Runtime {s['onnx_top1']:.2f} %; predictions agree on {s['agreement']:.2f} % of {s['images']} "
              f"images, max |logit diff| {s['max_abs_logit_diff']:.3g} (median image {s['median_abs_logit_diff']:.2g})",
              highlight=False)
    if s["rounding_disagreements"]:
        out.print(f"  {s['rounding_disagreements']} of the differing predictions are rounding (ties in the logits or in "
                  f"activation codes, decided differently by the two runtimes): {s['agreement_beyond_rounding']:.2f} % "
                  f"agree beyond rounding", highlight=False)
    out.print(f"  size: {s['bytes_at_bits'] / 1024:.1f} KiB at the true bit-widths, {s['bytes_stored'] / 1024:.1f} KiB "
              f"stored, FP32 teacher {s['fp32_bytes'] / 1024:.1f} KiB", highlight=False)
    ms = s["ms_per_batch"]
    out.print(f"  ONNX Runtime, batch {s['batch']}, {s['threads']} thread(s): {ms['student']:.1f} ms (student, "
              f"{s['integer_convs']} integer convolutions) vs {ms['fp32_teacher']:.1f} ms (FP32 teacher)",
              highlight=False)
    for row in s["latency_grid"] or []:  # a deployable profile's integer model: every batch and thread count
        out.print(f"  batch {row['batch']:>3}, {row['threads']} thread(s): {row['student_ms']:.2f} ms integer vs "
                  f"{row['fp32_teacher_ms']:.2f} ms FP32 ({row['fp32_teacher_ms'] / row['student_ms']:.2f}x)",
                  highlight=False)
