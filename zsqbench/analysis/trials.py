"""Hessian-trace analysis of finished or running trials, saved beside each trial.

For each chosen epoch, the student snapshot of that epoch is loaded into the trial's rebuilt
parts and the trace of its objective's Hessian is estimated on one fixed, seeded batch from
the trial's generator (its final state, from ``checkpoint.pt``): every epoch, and every trial
analysed with the same seed and batch size, is measured on the same images and probes.
Results go to ``<trial>/analysis/hessian.json`` and are merged with earlier ones, so listing
and re-plotting never recompute.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch

from zsqbench.analysis.hessian import fixed_generator_batch, trial_hessian_trace
from zsqbench.trial.checkpoint import load_checkpoint
from zsqbench.errors import UserError
from zsqbench.files import file_digest, write_json_atomic
from zsqbench.api.plugins import Plugins
from zsqbench.trial.spec import TrialSpec
from zsqbench.trial.teachers import load_teacher
from zsqbench.trial.train import SNAPSHOT_DIR, Environment, build_trial_parts, seed_everything

ANALYSIS_FILE = Path("analysis") / "hessian.json"
_SNAPSHOT = re.compile(r"epoch_(\d+)\.pt$")


def find_trials(results: Path, ids: list[str] | None, filters: dict[str, str]) -> list[Path]:
    """Trial folders under ``results`` whose id starts with one of ``ids`` and whose spec
    matches every filter (generator, loss, model, dataset, w_bits, a_bits, bits, seed, budget)."""
    if not results.is_dir():
        raise UserError(f"results folder not found: {results}; pass the --out folder of `zsqbench run`")
    chosen = []
    for spec_file in sorted(results.glob("*/*/spec.json")):
        folder = spec_file.parent
        if ids and not any(folder.name.startswith(i) for i in ids):
            continue
        spec = json.loads(spec_file.read_text())
        fields = {"generator": spec["generator"]["name"], "loss": spec["loss"]["name"], "model": spec["model"],
                  "dataset": spec["dataset"], "w_bits": str(spec["w_bits"]), "a_bits": str(spec["a_bits"]),
                  "bits": f"w{spec['w_bits']}a{spec['a_bits']}", "seed": str(spec["seed"]),
                  "budget": spec.get("budget_name", "")}
        unknown = set(filters) - set(fields)
        if unknown:
            raise UserError(f"unknown filter key(s) {sorted(unknown)}; use {', '.join(fields)}")
        if all(fields[k] == v for k, v in filters.items()):
            chosen.append(folder)
    if not chosen:
        raise UserError(f"no trial under {results} matches the given ids/filters; see `zsqbench status {results} --all`")
    return chosen


def snapshot_epochs(trial: Path) -> list[int]:
    return sorted(int(m.group(1)) for p in (trial / SNAPSHOT_DIR).glob("epoch_*.pt") if (m := _SNAPSHOT.search(p.name)))


def load_analysis(trial: Path) -> dict[str, Any] | None:
    path = trial / ANALYSIS_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        raise UserError(f"corrupt analysis file {path}; delete it and analyse again") from None


def _teacher_for(trial: Path, spec: TrialSpec, plugins: Plugins, env: Environment):
    entry = plugins.models.get(spec.model)
    result_file = trial / "result.json"
    if result_file.is_file():
        recorded = json.loads(result_file.read_text())["teacher"]
        path = Path(recorded["path"])
        if path.is_file() and file_digest(path) == recorded["sha256"]:
            return entry, load_teacher(entry, env.data_root, path if recorded["weights"] == "unpinned" else None)
    return entry, load_teacher(entry, env.data_root, env.teacher_weights, env.download)


def analyse_hessian(
    trial: Path,
    plugins: Plugins,
    env: Environment,
    epochs: list[int] | None,
    *,
    batch_size: int,
    seed: int,
    max_probes: int,
    min_probes: int,
    rtol: float,
    force: bool = False,
    report=lambda text: None,
) -> dict[str, Any]:
    spec = TrialSpec.model_validate_json((trial / "spec.json").read_text())
    available = snapshot_epochs(trial)
    if not available:
        raise UserError(f"trial {trial.name} has no student snapshots; re-run it with this zsqbench version")
    wanted = available if epochs is None else [e for e in epochs if e in available]
    missing = sorted(set(epochs or []) - set(available))
    if missing:
        raise UserError(f"trial {trial.name} has no snapshot for epoch(s) {missing}; available: {available}")
    settings = {"batch_size": batch_size, "seed": seed, "max_probes": max_probes, "min_probes": min_probes,
                "rtol": rtol}
    previous = load_analysis(trial)
    saved = previous if previous and previous.get("settings") == settings and not force else None
    by_epoch: dict[str, Any] = dict(saved["epochs"]) if saved else {}
    todo = [e for e in wanted if str(e) not in by_epoch]
    if todo:
        entry, loaded = _teacher_for(trial, spec, plugins, env)
        teacher = loaded.module.to(env.device).eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
        seed_everything(spec.seed)
        parts = build_trial_parts(spec, plugins, entry, teacher, env.device, env.cache_dir)
        parts.generator.prepare()
        checkpoint = load_checkpoint(trial, spec.trial_id)
        if checkpoint is not None:
            parts.generator.load_state_dict(checkpoint["generator"])
        batch = fixed_generator_batch(parts, batch_size, seed, epoch=spec.budget.warmup_epochs)
        for epoch in todo:
            state = torch.load(trial / SNAPSHOT_DIR / f"epoch_{epoch:04d}.pt", map_location=env.device,
                               weights_only=True)
            parts.ctx.student.load_state_dict(state)
            estimate = trial_hessian_trace(parts, batch=batch, seed=seed, max_probes=max_probes,
                                           min_probes=min_probes, rtol=rtol)
            by_epoch[str(epoch)] = estimate.to_dict()
            report(f"{trial.name} epoch {epoch}: tr(H) = {estimate.trace:.4g} ± {estimate.stderr:.2g} "
                   f"({estimate.num_probes} probes{'' if estimate.converged else ', not converged'})")
    payload = {
        "trial_id": spec.trial_id,
        "spec": {"generator": spec.generator.name, "loss": spec.loss.name, "w_bits": spec.w_bits,
                 "a_bits": spec.a_bits, "seed": spec.seed, "model": spec.model, "dataset": spec.dataset},
        "settings": settings,
        "note": "Hutchinson estimate of tr(H) of the student objective w.r.t. the latent student weights, "
                "with the STE making every quantizer an identity in second order; fixed generator batch",
        "epochs": dict(sorted(by_epoch.items(), key=lambda kv: int(kv[0]))),
    }
    write_json_atomic(trial / ANALYSIS_FILE, payload)
    return payload
