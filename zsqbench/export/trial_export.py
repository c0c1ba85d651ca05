"""A finished trial folder in, a verified ONNX model out (``zsqbench export``, ``run --export onnx``).

The student is rebuilt the way every later user of a trial rebuilds it (the trial's teacher by
:func:`~zsqbench.assets.teachers.trial_teacher`, the student by
:func:`~zsqbench.trial.build.build_student`) and given the final weights and frozen activation
ranges from ``checkpoint.pt`` (the state after the last epoch; its last snapshot when the checkpoint
is gone). Everything that can be wrong with the input is checked before anything is written.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

import zsqbench
from zsqbench.api.plugins import Plugins
from zsqbench.api.quantizer import IntegerWeight, Quantizer
from zsqbench.api.spec import TrialSpec
from zsqbench.assets.data import load_test_set
from zsqbench.assets.teachers import LoadedTeacher, trial_teacher
from zsqbench.assets.test_set import NormalizedImages, TestSet
from zsqbench.errors import UserError
from zsqbench.export.artifacts import (
    MODEL,
    WEIGHTS,
    fp_sizes,
    layer_entries,
    model_sizes,
    publish,
    stage_file,
    staging,
    weights_npz,
    write_record,
)
from zsqbench.export.deploy_check import INTEGER_MAX_TOP1_DIFF, headline, integer_failures, latency_grid
from zsqbench.export.graph import ExportedLayer, build_fp_onnx, build_onnx, describe_graph, integer_view
from zsqbench.export.integer_ops import (
    build_integer_onnx,
    integer_counts,
    integer_ops_view,
    integer_sizes,
    is_integer_program,
)
from zsqbench.export.runtime import (
    MAX_TOP1_DIFF,
    MIN_AGREEMENT,
    TYPICAL_LOGIT_TOL,
    Agreement,
    clear_disagreements,
    compare,
    latency,
    onnx_logits,
    runtime_kernels,
    session,
    torch_logits,
)
from zsqbench.export.ties import TIE_RELATIVE, code_tie_images
from zsqbench.files import file_digest
from zsqbench.runs.environment import Environment
from zsqbench.runs.folder import TrialFolder
from zsqbench.trial.build import build_student

CPU = torch.device("cpu")


class ExportMismatch(Exception):
    """The exported model does not reproduce the student within tolerance (nothing was written)."""


@dataclass(frozen=True)
class ExportSettings:
    out: Path | None = None  # default: <trial>/export/onnx
    fold_bn: bool = False
    npz: bool = False
    threads: int = 1  # ONNX Runtime threads, for verification and latency alike
    latency_batch: int = 100
    latency_runs: int = 20
    min_agreement: float = MIN_AGREEMENT


def resolve_trial(trial: str, results: Path) -> TrialFolder:
    """A trial folder (a path holding spec.json) or a trial id (or prefix) under ``results``."""
    path = Path(trial)
    if (path / TrialFolder.SPEC).is_file():
        return TrialFolder(path)
    if path.is_dir():
        raise UserError(f"{path} is not a trial folder (no {TrialFolder.SPEC}); pass a trial folder or a trial id")
    matches = [f for f in TrialFolder.find(results) if f.trial_id.startswith(trial)]
    if not matches:
        raise UserError(f"no trial '{trial}' under {results}; see `zsqbench status {results} --all` (or pass --results)")
    if len(matches) > 1:
        names = ", ".join(f"{f.run}/{f.trial_id}" for f in matches[:4])
        raise UserError(f"'{trial}' matches {len(matches)} trials under {results} ({names}); pass the trial folder")
    return matches[0]


def check_done(folder: TrialFolder) -> None:
    """Only a finished trial has a student to export."""
    state = folder.state
    if state == "done":
        return
    if state == "failed":
        error = folder.read_error()
        what = "diverged" if error.get("status") == "diverged" else "failed"
        reason = str(error.get("error", "")).splitlines()[0][:160] if error.get("error") else "see error.json"
        raise UserError(f"trial {folder.trial_id} {what} ({reason}); it has no finished student to export")
    raise UserError(f"trial {folder.trial_id} is not done ({state}); finish it with `zsqbench run` first")


def _final_weights(folder: TrialFolder, spec: TrialSpec) -> dict[str, torch.Tensor]:
    last = spec.budget.epochs - 1
    state = folder.load_checkpoint(spec.trial_id)  # a corrupt one: UserError
    if state is not None:
        if state.get("epoch") != last or "student" not in state:
            raise UserError(f"checkpoint of trial {folder.trial_id} holds epoch {state.get('epoch')}, not its last "
                            f"({last}); re-run the trial")
        return state["student"]
    if last not in folder.snapshot_epochs():
        raise UserError(f"trial {folder.trial_id} has neither {TrialFolder.CHECKPOINT} nor a snapshot of its last "
                        "epoch; its student is gone")
    return folder.load_snapshot(last, CPU)  # refused or corrupt: one line naming it


def load_student(folder: TrialFolder, spec: TrialSpec, plugins: Plugins, env: Environment
                 ) -> tuple[Quantizer, nn.Module, LoadedTeacher]:
    """The trial's final student on the CPU, activation ranges frozen, and its teacher."""
    weights = _final_weights(folder, spec)
    teacher = trial_teacher(folder, spec, plugins.models.get(spec.model), env)
    teacher.module.to(CPU).eval()
    quantizer, student = build_student(spec, plugins, teacher.module, CPU)
    try:
        student.load_state_dict(weights)
    except (RuntimeError, TypeError, KeyError) as exc:
        raise UserError(f"the student saved in trial {folder.trial_id} does not fit its spec "
                        f"({str(exc).splitlines()[0][:120]}); the folder is corrupt") from None
    quantizer.set_calibrating(student, False)
    for p in student.parameters():
        p.requires_grad_(False)
    return quantizer, student, teacher


def export_trial(folder: TrialFolder, plugins: Plugins, env: Environment, settings: ExportSettings,
                 report: Callable[[str], None] = lambda text: None) -> dict[str, Any]:
    """Export, verify and write one trial; returns quantization.json's content.

    Raises :class:`UserError` for bad input (nothing written) and :class:`ExportMismatch` when ONNX
    Runtime does not reproduce the student (the staged files are removed)."""
    check_done(folder)
    spec, result = folder.read_spec(), folder.read_result()
    quantizer, student, teacher = load_student(folder, spec, plugins, env)
    try:
        layers = quantizer.integer_layers(student)
    except NotImplementedError as exc:
        raise UserError(str(exc)) from None
    test = load_test_set(spec.dataset, env.data_root, offline=env.offline, cache_dir=env.cache_dir)
    inputs = test.inputs(teacher.normalization)  # normalized slice by slice as the batches are read
    metadata = {"zsqbench.trial_id": spec.trial_id, "zsqbench.bits": spec.bits_label,
                "zsqbench.teacher_sha256": teacher.sha256, "zsqbench.version": zsqbench.__version__}
    integer = is_integer_program(layers)  # a deployable profile: integer operators (integer_ops.py)
    if integer:
        if settings.fold_bn:
            raise UserError(f"trial {spec.trial_id} ran under a deployable profile, whose BN is folded already; "
                            "drop --fold-bn")
        view, exported, folded = integer_ops_view(student, layers)
        storage = next((x.storage_bits for x in layers if isinstance(x, IntegerWeight) and x.storage_bits), None)
        model_bytes = build_integer_onnx(view, inputs[:2], metadata, storage)
    else:
        view, exported = integer_view(student, layers)
        model_bytes, folded = build_onnx(view, inputs[:2], metadata, fold_bn=settings.fold_bn)
    fp_bytes = build_fp_onnx(teacher.module, inputs[:2])
    out_dir = Path(settings.out) if settings.out else folder.path / "export" / "onnx"
    batch = env.eval_batch_size
    with staging(out_dir) as stage:
        names = [MODEL]
        model_path = stage_file(stage, MODEL, model_bytes)
        if settings.npz:
            stage_file(stage, WEIGHTS, weights_npz(exported))
            names.append(WEIGHTS)
        report(f"verifying {spec.trial_id} ({spec.bits_label}) on {len(inputs)} test images in ONNX Runtime")
        sess = session(model_path, settings.threads)
        student_out = torch_logits(student, inputs, batch)
        check = _Check(model_bytes, exported, inputs, test, student_out, batch, settings.threads)
        agreement = check.run(sess, optimize=True, float_kernels=not (settings.fold_bn or integer))
        problems = (integer_failures(agreement, settings.min_agreement) if integer
                    else agreement.failures(settings.min_agreement, float_kernels=not settings.fold_bn))
        verification = agreement.to_dict()
        if settings.fold_bn:  # the folded graph itself, in float kernels: held to the default tolerance
            graph_only = check.run(session(model_path, settings.threads, optimize=False), optimize=False)
            problems += [f"without runtime fusions, {p}" for p in graph_only.failures(settings.min_agreement)]
            verification["graph_without_runtime_fusions"] = graph_only.to_dict()
        if problems:
            raise ExportMismatch(f"the ONNX model does not reproduce trial {spec.trial_id}'s student: "
                                 f"{'; '.join(problems)}; nothing was written")
        sample = inputs[: max(1, settings.latency_batch)].numpy()
        grid = None
        if integer:
            report(f"timing {spec.trial_id} against the FP32 teacher (batch 1 and 100, 1 and 2 threads)")
            grid = latency_grid(model_bytes, fp_bytes, inputs, settings.latency_runs)
        ms = _grid_ms(grid, len(sample), settings.threads) or latency(
            {"student": sess, "fp32_teacher": session(fp_bytes, settings.threads)}, sample, settings.latency_runs)
        document = _document(spec, result, folder, test, teacher, model_bytes, fp_bytes, exported, folded,
                             verification, settings, ms, len(sample))
        if grid is not None:
            deployable(document, model_bytes, exported, grid)
        publish(stage, out_dir, document, names)
    speed = document["latency"].get("headline") or document["latency"]
    write_record(folder.path, {
        "format": "onnx", "trial_id": spec.trial_id, "result_sha256": document["trial"]["result_sha256"],
        "out": str(out_dir.resolve()), "model_sha256": document["model"]["sha256"],
        "onnx_top1": agreement.onnx_top1, "student_top1": agreement.student_top1, "agreement": agreement.agreement,
        "agreement_beyond_rounding": agreement.agreement_beyond_rounding,
        "max_abs_logit_diff": agreement.max_abs_logit_diff, "fold_bn": settings.fold_bn,
        "exported_at": document["exported_at"], "profile": spec.quantizer.options.get("profile"),
        "integer_convs": document["model"].get("integer_convs"),
        "size_true_bits_bytes": document["size"]["true_bits_bytes"],
        "fp32_tensor_bytes": document["size"]["fp32_teacher_tensor_bytes"],
        "latency_ratio": speed["student_over_fp32"], "latency_batch": speed["batch"],
        "latency_threads": speed["threads"],
    })
    return document


@dataclass(frozen=True)
class _Check:
    """ONNX Runtime's logits against the student's, each clear disagreement then asked whether activation
    codes rounded at ties explain it (runtime.py, ties.py). Not asked for integer kernels (probing every
    activation stops ONNX Runtime's fusions, so the probe would not see what they compute), nor when the
    median image already differs (the export fails anyway)."""

    model_bytes: bytes
    exported: list[ExportedLayer]
    inputs: NormalizedImages
    test: TestSet
    student_out: np.ndarray
    batch: int
    threads: int

    def run(self, sess: ort.InferenceSession, optimize: bool, float_kernels: bool = True) -> Agreement:
        onnx_out = onnx_logits(sess, self.inputs, self.batch)
        agreement = compare(onnx_out, self.student_out, self.test.labels)
        if not float_kernels or agreement.systematic or not agreement.unexplained_disagreements:
            return agreement
        clear = clear_disagreements(onnx_out, self.student_out)
        ties = code_tie_images(self.model_bytes, self.exported, clear, self.inputs, onnx_out, agreement.rounding_tol,
                               self.threads, optimize)
        return compare(onnx_out, self.student_out, self.test.labels, ties)


def _document(spec: TrialSpec, result: dict[str, Any], folder: TrialFolder, test: TestSet, teacher: LoadedTeacher,
              model_bytes: bytes, fp_bytes: bytes, exported: list[ExportedLayer], folded: int,
              verification: dict[str, Any],
              settings: ExportSettings, ms: dict[str, float], batch: int) -> dict[str, Any]:
    """quantization.json: the model, its provenance, its verification, size, speed and every quantizer."""
    sizes = model_sizes(model_bytes, exported)
    fp = fp_sizes(fp_bytes)
    return {
        "format": "onnx",
        "model": {
            "file": MODEL, "sha256": hashlib.sha256(model_bytes).hexdigest(), **describe_graph(model_bytes),
            "input": "normalized images, NCHW float32 (mean/std below), any batch size",
            "normalization": {"mean": teacher.normalization.mean, "std": teacher.normalization.std},
            "batchnorm": (f"{folded} BN layers folded into their convolution's DequantizeLinear scale (times "
                          "gamma/sqrt(var+eps); the codes are unchanged) and bias" if settings.fold_bn
                          else "kept as separate BatchNormalization nodes, as the student computes them"),
            "mapping": "x_hat = (q + Z)/S (docs/methods/uniform.md#the-quantization-function) "
                       "= (c - zero_point)*scale with scale = 1/S, c = q + offset, "
                       "zero_point = offset - Z (zsqbench/export/mapping.py)",
        },
        "trial": {
            "trial_id": spec.trial_id, "spec_hash": spec.trial_id, "run": folder.run, "spec": result["spec"],
            "teacher": {"weights": result["teacher"]["weights"], "sha256": result["teacher"]["sha256"]},
            "data_sha256": result["data"]["sha256"], "fp_top1": result["fp_top1"], "ptq_top1": result["ptq_top1"],
            "top1_last": result["top1_last"], "device": result["device"],
            "result_sha256": file_digest(folder.file(TrialFolder.RESULT)),
        },
        "verification": {
            **verification, "runtime": f"onnxruntime {ort.__version__} CPUExecutionProvider",
            "threads": settings.threads, "test_set": {"path": str(test.path), "sha256": test.sha256,
                                                      "same_as_trial": test.sha256 == result["data"]["sha256"]},
            "tolerance": _tolerance(settings, verification),
        },
        "size": {**sizes, "fp32_teacher_tensor_bytes": fp["tensor_bytes"], "fp32_teacher_file_bytes": fp["file_bytes"],
                 "compression_at_bits": round(fp["tensor_bytes"] / sizes["true_bits_bytes"], 2),
                 "compression_stored": round(fp["file_bytes"] / sizes["file_bytes"], 2)},
        "latency": {"batch": batch, "runs": settings.latency_runs, "threads": settings.threads,
                    "ms_per_batch": ms, "student_over_fp32": round(ms["student"] / ms["fp32_teacher"], 3),
                    "note": "median of interleaved runs in one process, same session options"},
        "runtime_kernels": {"student": runtime_kernels(model_bytes, settings.threads),
                            "fp32_teacher": runtime_kernels(fp_bytes, settings.threads)},
        "layers": layer_entries(exported),
        "versions": {"zsqbench": zsqbench.__version__, "torch": torch.__version__, "onnx": onnx.__version__,
                     "onnxruntime": ort.__version__},
        "exported_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }


def _grid_ms(grid: list[dict[str, Any]] | None, batch: int, threads: int) -> dict[str, float] | None:
    """The export's own latency setting when the integer grid already timed it (the same runs, the same
    interleaving), so an integer export does not time the student twice at batch 100."""
    row = next((r for r in grid or [] if r["batch"] == batch and r["threads"] == threads), None)
    return None if row is None else {"student": row["student_ms"], "fp32_teacher": row["fp32_teacher_ms"]}


def deployable(document: dict[str, Any], model_bytes: bytes, exported: list[ExportedLayer],
               grid: list[dict[str, Any]]) -> None:
    """An integer export's document: its sizes (INT4 packed), operator counts, gate and latency grid."""
    fp = document["size"]
    sizes = integer_sizes(model_bytes, exported)
    document["size"] = {**sizes, **{k: v for k, v in fp.items() if k.startswith("fp32_")},
                        "compression_at_bits": round(fp["fp32_teacher_tensor_bytes"] / sizes["true_bits_bytes"], 2),
                        "compression_stored": round(fp["fp32_teacher_file_bytes"] / sizes["file_bytes"], 2)}
    document["model"].update(integer_counts(model_bytes))
    document["model"]["batchnorm"] = "folded into the integer weights and int32 biases while training (the profile)"
    document["verification"]["tolerance"] = {
        "rule": "fail when median_abs_logit_diff > rounding_tol, when agreement_beyond_rounding < "
                "min_agreement_percent (every clear-margin disagreement counts), or when |onnx_top1 - student_top1| "
                f"> {INTEGER_MAX_TOP1_DIFF}", "rounding_tol": document["verification"]["rounding_tol"],
        "why": "zsqbench/export/deploy_check.py: integer kernels compute the student's codes except within a few "
               "ulps of a rounding tie"}
    document["latency"].update(grid=grid, headline=headline(grid))


def _tolerance(settings: ExportSettings, verification: dict[str, Any]) -> dict[str, Any]:
    """The gate, with the numbers it compared (zsqbench/export/runtime.py derives it)."""
    integer = "not applied to integer kernels (fold_bn); applied to graph_without_runtime_fusions"
    tol = verification["rounding_tol"]
    return {
        "rule": "fail when agreement_beyond_rounding < min_agreement_percent, median_abs_logit_diff > rounding_tol, "
                "or |top1_diff_beyond_rounding| > max_top1_diff_points; a disagreement is rounding (not counted) "
                "when the student's margin over ONNX's class is at most tie_margin (a logit tie) or when ONNX "
                "Runtime's activation codes for that image differ from the student's quantizers only at rounding "
                "ties (a code tie, zsqbench/export/ties.py)",
        "rounding_tol_formula": f"{TYPICAL_LOGIT_TOL} * (1 + logit_scale) = {tol:.6g}",
        "tie_margin": 2 * tol,
        "min_agreement_percent": settings.min_agreement,
        "median_logit_diff_max": integer if settings.fold_bn else tol,
        "max_top1_diff_points": integer if settings.fold_bn else MAX_TOP1_DIFF,
        "code_tie_relative": TIE_RELATIVE,
        "why": "see zsqbench/export/runtime.py: rounding moves a few images (by codes rounded at ties) and "
               "decides logit ties either way; a wrong export moves all of them, moves codes away from ties "
               "and costs accuracy",
    }


def export_all(folders: list[TrialFolder], plugins: Plugins, env: Environment, settings: ExportSettings,
               report: Callable[[str], None] = lambda text: None, force: bool = False) -> list[tuple[str, str]]:
    """``run --export onnx``: export each finished trial that has no verified export of its current
    result yet (``force``: all of them). A trial that cannot be exported or fails verification is
    reported and the others go on; returns (trial id, why) of those."""
    from zsqbench.runs.result_file import read_export_record

    failed = []
    for folder in folders:
        if not force and read_export_record(folder.path) is not None:
            continue
        try:
            document = export_trial(folder, plugins, env, settings, report)
        except (UserError, ExportMismatch) as exc:
            failed.append((folder.trial_id, str(exc)))
            report(f"export of {folder.trial_id} failed: {exc}")
            continue
        v = document["verification"]
        report(f"exported {folder.trial_id}: ONNX top-1 {v['onnx_top1']:.2f} % (student {v['student_top1']:.2f} %, "
               f"agreement {v['agreement']:.2f} %, {v['agreement_beyond_rounding']:.2f} % beyond rounding)")
    return failed
