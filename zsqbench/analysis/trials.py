"""Hessian-trace analysis of finished or running trials, saved beside each trial.

For each chosen epoch, the student snapshot of that epoch is loaded into the trial's rebuilt
parts and the trace of its objective's Hessian is estimated on one fixed, seeded batch from
the trial's generator (its final state, from ``checkpoint.pt``): every epoch, and every trial
analysed with the same seed and batch size, is measured on the same images and probes.
Results go to ``<trial>/analysis/hessian.json`` and are merged with earlier ones, so listing
and re-plotting never recompute.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from zsqbench.analysis.hessian import fixed_generator_batch, trial_hessian_trace
from zsqbench.api.plugins import Plugins
from zsqbench.api.spec import TrialSpec
from zsqbench.assets.teachers import trial_teacher
from zsqbench.bits import bits_label
from zsqbench.errors import UserError
from zsqbench.runs.environment import Environment
from zsqbench.runs.folder import TrialFolder
from zsqbench.trial.build import build_trial_parts
from zsqbench.trial.trainer import seed_everything

ANALYSIS = "hessian"
FILTER_KEYS = ("generator", "loss", "model", "dataset", "w_bits", "a_bits", "bits", "seed", "budget")


def _fields(spec: TrialSpec) -> dict[str, str]:
    return {"generator": spec.generator.name, "loss": spec.loss.name, "model": spec.model, "dataset": spec.dataset,
            "w_bits": str(spec.w_bits), "a_bits": str(spec.a_bits), "bits": spec.bits_label, "seed": str(spec.seed),
            "budget": spec.budget_name}


def find_trials(results: Path, ids: list[str] | None, filters: dict[str, str]) -> list[TrialFolder]:
    """Trial folders under ``results`` whose id starts with one of ``ids`` and whose spec matches
    every filter (``bits`` in either case, e.g. w3a3 or W3A3)."""
    unknown = set(filters) - set(FILTER_KEYS)
    if unknown:
        raise UserError(f"unknown filter key(s) {sorted(unknown)}; use {', '.join(FILTER_KEYS)}")
    wanted = {k: (v.upper() if k == "bits" else v) for k, v in filters.items()}
    chosen = []
    for folder in TrialFolder.find(results):
        if ids and not any(folder.trial_id.startswith(i) for i in ids):
            continue
        fields = _fields(folder.read_spec())
        if all(fields[k] == v for k, v in wanted.items()):
            chosen.append(folder)
    if not chosen:
        raise UserError(f"no trial under {results} matches the given ids/filters; see `zsqbench status {results} --all`")
    return chosen


def analyse_hessian(
    folder: TrialFolder,
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
    spec = folder.read_spec()
    if not spec.budget.trains:
        raise UserError(f"trial {folder.trial_id} is post-training only (no student objective was ever minimized, "
                        "no training batch exists); analyse trials with training epochs")
    available = folder.snapshot_epochs()
    if not available:
        raise UserError(f"trial {folder.trial_id} has no student snapshots; re-run it with this zsqbench version")
    wanted = available if epochs is None else [e for e in epochs if e in available]
    missing = sorted(set(epochs or []) - set(available))
    if missing:
        raise UserError(f"trial {folder.trial_id} has no snapshot for epoch(s) {missing}; available: {available}")
    settings = {"batch_size": batch_size, "seed": seed, "max_probes": max_probes, "min_probes": min_probes,
                "rtol": rtol}
    previous = folder.read_analysis(ANALYSIS)
    saved = previous if previous and previous.get("settings") == settings and not force else None
    by_epoch: dict[str, Any] = dict(saved["epochs"]) if saved else {}
    todo = [e for e in wanted if str(e) not in by_epoch]
    for epoch in todo:  # a refused or corrupt snapshot is named before minutes go into the teacher and parts
        folder.load_snapshot(epoch, torch.device("cpu"))
    if todo:
        entry = plugins.models.get(spec.model)
        teacher = trial_teacher(folder, spec, entry, env).module.to(env.device).eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
        seed_everything(spec.seed)
        parts = build_trial_parts(spec, plugins, entry, teacher, env.device, env.cache_dir)
        parts.generator.prepare()
        checkpoint = folder.load_checkpoint(spec.trial_id)
        if checkpoint is not None:
            parts.generator.load_state_dict(checkpoint["generator"])
        batch = fixed_generator_batch(parts, batch_size, seed, phase=spec.budget.first_training_phase)
        for epoch in todo:
            try:
                parts.ctx.student.load_state_dict(folder.load_snapshot(epoch, env.device))
            except (RuntimeError, TypeError, KeyError) as exc:
                raise UserError(f"snapshot {folder.snapshot_path(epoch)} does not fit trial {folder.trial_id}'s student "
                                f"({str(exc).splitlines()[0][:120]}); delete it or re-run the trial") from None
            estimate = trial_hessian_trace(parts, batch=batch, seed=seed, max_probes=max_probes,
                                           min_probes=min_probes, rtol=rtol)
            by_epoch[str(epoch)] = estimate.to_dict()
            report(f"{folder.trial_id} epoch {epoch}: tr(H) = {estimate.trace:.4g} ± {estimate.stderr:.2g} "
                   f"({estimate.num_probes} probes{'' if estimate.converged else ', not converged'})")
    payload = {
        "trial_id": spec.trial_id,
        "spec": {"generator": spec.generator.name, "loss": spec.loss.name, "w_bits": spec.w_bits,
                 "a_bits": spec.a_bits, "bits": bits_label(spec.w_bits, spec.a_bits), "seed": spec.seed,
                 "model": spec.model, "dataset": spec.dataset},
        "settings": settings,
        "note": "Hutchinson estimate of tr(H) of the student objective w.r.t. the latent student weights, "
                "with the STE making every quantizer an identity in second order; fixed generator batch",
        "epochs": dict(sorted(by_epoch.items(), key=lambda kv: int(kv[0]))),
    }
    folder.write_analysis(ANALYSIS, payload)
    return payload
