"""Running a grid of trials into a results folder, through an executor plugin.

Layout: ``<out>/<run>/<trial_id>/`` holds ``spec.json``, ``metrics.jsonl`` (one line per
epoch), ``checkpoint.pt`` (atomic, every epoch) and finally ``result.json`` (the done marker,
atomic) or ``error.json`` (failed or diverged). ``<out>/leaderboard.csv`` gets one row per
done trial, written only by the coordinating process.

Re-running the same command skips done trials, resumes incomplete ones from their last
checkpoint, and leaves failed ones alone unless ``retry_failed``.
"""

from __future__ import annotations

import dataclasses
import json
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from zsqbench.trial.checkpoint import checkpoint_path, load_checkpoint
from zsqbench.errors import UserError
from zsqbench.files import write_json_atomic
from zsqbench.api.interfaces import JobOutcome, TrialJob
from zsqbench.api.plugins import Plugins, get_plugins
from zsqbench.leaderboard.results import build_result, read_result, result_row, upsert_leaderboard, write_result
from zsqbench.trial.spec import TrialSpec
from zsqbench.trial.teachers import load_teacher
from zsqbench.trial.train import Environment, NullProgress, ProgressSink, TrialDiverged, TrialResources, run_trial

STATES = ("done", "failed", "incomplete", "pending")


@dataclass
class GridReport:
    done: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (trial id, error)
    left_failed: list[str] = field(default_factory=list)  # failed earlier, not retried


def trial_dir(out: Path, run: str, spec: TrialSpec) -> Path:
    return out / run / spec.trial_id


def folder_state(folder: Path) -> str:
    if (folder / "result.json").is_file():
        return "done"
    if (folder / "error.json").is_file():
        return "failed"
    if folder.is_dir():
        return "incomplete"
    return "pending"


def trial_state(out: Path, run: str, spec: TrialSpec) -> str:
    return folder_state(trial_dir(out, run, spec))


# ------------------------------------------------------------------ inside a worker


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device '{name}': use cpu, cuda, cuda:N or auto") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name} given but no CUDA GPU is available; use --device cpu")
    return device


def environment_to_dict(env: Environment, device: str) -> dict[str, Any]:
    data = {f.name: getattr(env, f.name) for f in dataclasses.fields(env)}
    data.update(device=device, data_root=str(env.data_root), cache_dir=str(env.cache_dir),
                teacher_weights=str(env.teacher_weights) if env.teacher_weights else None)
    return data


def environment_from_dict(data: dict[str, Any]) -> Environment:
    return Environment(
        data_root=Path(data["data_root"]), device=resolve_device(data["device"]), cache_dir=Path(data["cache_dir"]),
        teacher_weights=Path(data["teacher_weights"]) if data.get("teacher_weights") else None,
        download=bool(data.get("download", False)), eval_batch_size=int(data.get("eval_batch_size", 500)),
        precision=str(data.get("precision", "fp32")), channels_last=data.get("channels_last"),
        compile=bool(data.get("compile", False)), tf32=data.get("tf32"),
    )


_RESOURCES = TrialResources()  # test sets and FP accuracies shared by the jobs of one process


def execute_job(job: TrialJob, progress: ProgressSink | None = None, plugins: Plugins | None = None) -> JobOutcome:
    """Run (or resume) one trial in its folder. Safe to call in any process or on any machine
    that sees the folder; never touches the leaderboard."""
    folder = Path(job.trial_dir)
    spec = TrialSpec.model_validate_json((folder / "spec.json").read_text())
    run_name = folder.parent.name
    try:
        env = environment_from_dict(job.env)
        outcome = run_trial(spec, plugins or get_plugins(), env, progress or NullProgress(), _RESOURCES, folder)
    except TrialDiverged as exc:
        write_json_atomic(folder / "error.json", {"status": "diverged", "error": str(exc)})
        return JobOutcome(job.trial_id, "diverged", str(exc))
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as exc:
        message = f"{type(exc).__name__}: {exc}"
        write_json_atomic(folder / "error.json",
                          {"status": "failed", "error": message, "traceback": traceback.format_exc()})
        return JobOutcome(job.trial_id, "failed", message)
    write_result(folder, build_result(spec, outcome, env, run_name))
    return JobOutcome(job.trial_id, "done")


# ------------------------------------------------------------------ the coordinator


def _precheck(specs: list[TrialSpec], plugins: Plugins, env: Environment) -> None:
    """Fail on missing data or weights before any folder is touched or any job dispatched."""
    seen: set[tuple[str, str]] = set()
    for spec in specs:
        key = (spec.model, spec.dataset)
        if key in seen:
            continue
        seen.add(key)
        _RESOURCES.test_set(spec.dataset, env)
        load_teacher(plugins.models.get(spec.model), env.data_root, env.teacher_weights, env.download)


def _refuse_other_precision(recorded: str, trial_id: str, env: Environment, folder: Path) -> None:
    """The trial id does not include the compute settings (most change rounding only), but
    the precision changes accuracy: a bf16 request must not be answered by an fp32 result,
    or resume an fp32 checkpoint (or the reverse), just because the spec is the same."""
    if recorded != env.precision:
        raise UserError(f"trial {trial_id} in {folder.parent} was run at precision {recorded}, this run asks "
                        f"for {env.precision}; write to another run folder (--run NAME or --out DIR) or pass "
                        "--force to start it again")


def run_grid(
    specs: list[TrialSpec],
    plugins: Plugins,
    env: Environment,
    device: str,
    out: Path,
    run: str,
    progress: ProgressSink,
    executor_name: str = "local",
    executor_options: dict[str, Any] | None = None,
    max_parallel: int | None = None,
    force: bool = False,
    retry_failed: bool = False,
) -> GridReport:
    executor_cls = plugins.executors.get(executor_name)
    try:
        executor = executor_cls(executor_cls.Options(**(executor_options or {})), max_parallel)
    except Exception as exc:  # pydantic ValidationError and friends
        raise UserError(f"bad option for executor '{executor_name}': {str(exc).splitlines()[0]}") from None
    report = GridReport()
    plan: list[tuple[TrialSpec, Path, str]] = []
    for spec in specs:
        folder = trial_dir(out, run, spec)
        state = folder_state(folder)
        if state == "done" and not force:
            done = read_result(folder / "result.json")
            _refuse_other_precision((done.get("compute") or {}).get("precision", "fp32"), spec.trial_id, env, folder)
            report.skipped.append(done)
            continue
        if state == "failed" and not (retry_failed or force):
            report.left_failed.append(spec.trial_id)
            continue
        if state == "incomplete" and not force:
            saved = load_checkpoint(folder, spec.trial_id)  # a corrupt checkpoint stops the grid before anything changes
            if saved is not None:
                _refuse_other_precision(saved.get("precision", "fp32"), spec.trial_id, env, folder)
        plan.append((spec, folder, state))
    if plan:
        _precheck([s for s, _, _ in plan], plugins, env)

    jobs: list[TrialJob] = []
    for index, (spec, folder, state) in enumerate(plan, 1):
        folder.mkdir(parents=True, exist_ok=True)
        if force or state == "failed":
            for name in ("result.json", "error.json", "metrics.jsonl", checkpoint_path(folder).name):
                (folder / name).unlink(missing_ok=True)
        write_json_atomic(folder / "spec.json", spec.model_dump(mode="json"))
        label = f"[{index}/{len(plan)}] {spec.generator.name}+{spec.loss.name} {spec.bits_label} seed {spec.seed}"
        jobs.append(TrialJob(spec.trial_id, str(folder), label, environment_to_dict(env, device)))
    for tid in report.left_failed:
        progress.message(f"trial {tid} failed earlier; skipped (use --retry-failed)")
    if report.skipped:
        progress.message(f"{len(report.skipped)} trial(s) already done, skipped")

    leaderboard = out / "leaderboard.csv"

    def on_done(job: TrialJob, outcome: JobOutcome) -> None:
        if outcome.status == "done":
            result = read_result(Path(job.trial_dir) / "result.json")
            upsert_leaderboard(leaderboard, result_row(result))
            report.done.append(result)
            progress.message(
                f"{job.label}: FP {result['fp_top1']:.2f}  PTQ {result['ptq_top1']:.2f}  "
                f"last {result['top1_last']:.2f}  ({result['wall_s']:.0f} s)"
            )
        else:
            report.failed.append((job.trial_id, f"{outcome.status}: {outcome.error}"))
            progress.message(f"{job.label}: {outcome.status}: {outcome.error}")

    if jobs:
        executor.run(jobs, on_done, progress)
    return report


def grid_states(specs: list[TrialSpec], out: Path, run: str) -> list[dict[str, Any]]:
    return [
        {"trial_id": s.trial_id, "generator": s.generator.name, "loss": s.loss.name, "bits": s.bits_label,
         "seed": s.seed, "budget": s.budget_name, "state": trial_state(out, run, s)}
        for s in specs
    ]


def folder_summary(out: Path) -> list[dict[str, Any]]:
    """Every trial folder under a results directory with its state (for `zsqbench status`)."""
    rows = []
    for spec_file in sorted(out.glob("*/*/spec.json")):
        folder = spec_file.parent
        try:
            spec = json.loads(spec_file.read_text())
        except (OSError, json.JSONDecodeError):
            raise UserError(f"corrupt spec file {spec_file}; delete its trial folder") from None
        state = folder_state(folder)
        row = {"run": folder.parent.name, "trial_id": folder.name, "generator": spec["generator"]["name"],
               "loss": spec["loss"]["name"], "bits": f"w{spec['w_bits']}a{spec['a_bits']}", "seed": spec["seed"],
               "budget": spec.get("budget_name", "?"), "state": state, "epochs_done": 0,
               "epochs": spec["budget"]["epochs"], "error": ""}
        metrics = folder / "metrics.jsonl"
        if metrics.is_file():
            row["epochs_done"] = sum(1 for line in metrics.read_text().splitlines() if line.strip())
        if state == "failed":
            try:
                row["error"] = json.loads((folder / "error.json").read_text()).get("error", "")
            except (OSError, json.JSONDecodeError):
                row["error"] = "unreadable error.json"
        rows.append(row)
    return rows
