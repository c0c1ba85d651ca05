"""`benchmarks/device_check.sh`: what a lent GPU should tell us, in one JSON file, within a time budget.

A GPU is lent by chance and briefly (15 minutes of device time, starting included), so the check is
prepared ahead, runs from a bare machine and spends a fixed budget: each section gets a share of it
and stops its remaining cases, with a note, when the share is spent; the JSON file is rewritten after
every section, so a check stopped from outside still leaves what it measured. Sections, in order:

* ``tests``: the CUDA-marked tests (tests/cuda), passed / failed / skipped, with failure messages;
* ``bench``: ``zsqbench bench`` eager for each method (adadfq+akt, gdfq+kd, hast+kd, synq+kd where
  registered) at batch 16 and 200: step_s, bare_s, overhead_method, kernels_per_step, peak memory;
* ``cell``: the AKT paper cell (adadfq+akt, W3A3, batch 200) for 200 iterations, and the whole
  cell's time extrapolated from them (its budget under ``paper``: 40,000 iterations and evaluations);
* ``concurrency``: 1, 2, 4 and 8 trials of that cell at once on the device: aggregate iterations/s;
* ``compiled``: the bench cases again with ``--compile`` as CUDA graphs (``mode="reduce-overhead"``),
  then compiled without graphs; last, because compilation takes the longest and varies the most.

``--quick`` runs the same code paths in about a minute on a CPU (tiny batches, one or two iterations,
two concurrent trials, compiled cases on a two-block toy teacher, CUDA graphs recorded as skipped),
so that CI keeps the check working between lent devices. Every measurement runs in a child process
(:mod:`zsqbench.perf.device_probe`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
SECTIONS = ("tests", "bench", "cell", "concurrency", "compiled")
#: Each section's share of the budget (at most; the compiled section takes whatever is left).
SHARES = {"tests": 0.28, "bench": 0.18, "cell": 0.08, "concurrency": 0.22, "compiled": 1.0}
CELL = {"generator": "adadfq", "loss": "akt", "bits": 3}
#: The one generator whose compiled case quick mode runs (GDFQ's: the shortest compilation).
QUICK_COMPILED = "gdfq"


class Check:
    """One run of the check: its settings, its clock and the JSON record it fills."""

    def __init__(self, device: str, quick: bool, budget_s: float, json_out: Path, logs: Path) -> None:
        self.device, self.quick, self.budget_s, self.json_out, self.logs = device, quick, budget_s, json_out, logs
        self.start = time.monotonic()
        self.children = 0
        self.record: dict[str, Any] = {"device_check": 1, "quick": quick, "device": device, "budget_s": budget_s,
                                       "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                                       "sections": {}, "notes": []}

    def remaining(self) -> float:
        return self.budget_s - (time.monotonic() - self.start)

    def deadline(self, section: str) -> float:
        """Seconds from now this section may take: its share of the budget, or what is left."""
        return max(0.0, min(SHARES[section] * self.budget_s, self.remaining()))

    def save(self) -> None:
        self.record["elapsed_s"] = round(time.monotonic() - self.start, 1)
        tmp = self.json_out.with_name(self.json_out.name + ".tmp")
        tmp.write_text(json.dumps(self.record, indent=1) + "\n")
        tmp.replace(self.json_out)

    # -- child processes
    def spawn(self, args: list[str], name: str) -> tuple[subprocess.Popen, Path]:
        self.children += 1
        log = self.logs / f"{self.children:02d}-{name}.log"
        with open(log, "w") as fh:
            proc = subprocess.Popen(args, stdout=fh, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True,
                                    env={**os.environ, "ZSQBENCH_OFFLINE": "1", "PYTHONUNBUFFERED": "1"})
        return proc, log

    @staticmethod
    def finish(proc: subprocess.Popen, timeout: float) -> bool:
        """Wait for ``proc``; False when it had to be stopped (its whole process group) at ``timeout``."""
        try:
            proc.wait(timeout=max(timeout, 0.1))
            return True
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
            return False

    def probe(self, task: str, config: dict[str, Any], timeout: float, name: str) -> dict[str, Any]:
        """Run one :mod:`device_probe` task: its JSON records, whether it finished, the log's end on failure."""
        out = self.logs / f"{self.children + 1:02d}-{name}.jsonl"
        proc, log = self.spawn([sys.executable, "-m", "zsqbench.perf.device_probe", task, json.dumps(config),
                                str(out)], name)
        finished = self.finish(proc, timeout)
        records = [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
        problem = None if finished and proc.returncode == 0 else (
            f"stopped after {timeout:.0f} s (time budget)" if not finished else f"exit code {proc.returncode}: "
            + log_tail(log))
        return {"records": records, "problem": problem, "finished": finished}


def log_tail(log: Path, lines: int = 6) -> str:
    text = log.read_text(errors="replace").strip().splitlines() if log.exists() else []
    return " | ".join(line.strip() for line in text[-lines:])[:1500]


# -- sections
def environment(check: Check) -> dict[str, Any]:
    import torch

    import zsqbench

    env: dict[str, Any] = {"python": platform.python_version(), "platform": platform.platform(),
                           "cpu_count": os.cpu_count(), "torch": torch.__version__, "cuda": torch.version.cuda,
                           "zsqbench": zsqbench.__version__}
    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    env["commit"] = git.stdout.strip() or None
    if check.device.startswith("cuda") and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(torch.device(check.device))
        env.update(gpu=props.name, capability=f"{props.major}.{props.minor}", sm_count=props.multi_processor_count,
                   gpu_memory_gib=round(props.total_memory / 2**30, 1), cudnn=torch.backends.cudnn.version())
        env["nvidia_smi"] = nvidia_smi("name,driver_version,clocks.max.sm")
    return env


def nvidia_smi(fields: str) -> str | None:
    try:
        done = subprocess.run(["nvidia-smi", f"--query-gpu={fields}", "--format=csv,noheader"], capture_output=True,
                              text=True, timeout=10)
        return done.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def run_tests(check: Check) -> dict[str, Any]:
    """pytest on tests/cuda (marker ``cuda``): counts from its JUnit XML, else from its verbose lines."""
    if not (REPO / "tests" / "cuda").is_dir():
        return {"skipped_section": "tests/cuda not found beside this zsqbench (an installed copy?)"}
    junit = check.logs / "tests-junit.xml"
    proc, log = check.spawn([sys.executable, "-m", "pytest", "tests/cuda", "-m", "cuda", "-v", "-rfEs",
                             "-p", "no:cacheprovider", f"--junitxml={junit}"], "tests")
    finished = check.finish(proc, check.deadline("tests"))
    summary: dict[str, Any] = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0, "failures": [],
                               "skip_reasons": {}, "finished": finished, "exit_code": proc.returncode}
    if finished and junit.exists():
        for case in ET.parse(junit).getroot().iter("testcase"):
            name = f"{case.get('classname', '').rsplit('.', 1)[-1]}::{case.get('name')}"
            outcome = next(iter(case), None)
            kind = outcome.tag if outcome is not None and outcome.tag in ("failure", "error", "skipped") else "passed"
            key = {"failure": "failed", "error": "errors", "skipped": "skipped", "passed": "passed"}[kind]
            summary[key] += 1
            if kind in ("failure", "error"):
                summary["failures"].append({"test": name, "message": (outcome.get("message") or "")[:500]})
            elif kind == "skipped":
                reason = (outcome.get("message") or "").strip()
                summary["skip_reasons"][reason] = summary["skip_reasons"].get(reason, 0) + 1
    else:  # stopped: what the verbose lines say so far
        for line in log.read_text(errors="replace").splitlines():
            for word, key in (("PASSED", "passed"), ("FAILED", "failed"), ("ERROR", "errors"), ("SKIPPED", "skipped")):
                if line.startswith("tests/cuda/") and f" {word}" in line:
                    summary[key] += 1
        summary["note"] = "stopped at the time budget; counts from pytest's verbose lines" if not finished else \
            f"no JUnit file: {log_tail(log)}"
    return summary


def methods() -> list[tuple[str, str]]:
    from zsqbench.api.plugins import get_plugins

    found = [("adadfq", "akt"), ("gdfq", "kd"), ("hast", "kd")]
    return found + ([("synq", "kd")] if "synq" in get_plugins().generators.names() else [])


def bench_settings(check: Check, compiled: bool) -> dict[str, Any]:
    if check.quick:
        return {"device": check.device, "threads": 1, "iters": 1, "warmup_iters": 1, "eval_images": 8,
                "calibration_iters": 1}
    return {"device": check.device, "iters": 10, "warmup_iters": 8 if compiled else 3, "eval_images": 10000,
            "calibration_iters": 2}


def batches(check: Check) -> tuple[int, ...]:
    return (2,) if check.quick else (16, 200)


def _bench_row(case: dict[str, Any], record: dict[str, Any] | None, missing: str) -> dict[str, Any]:
    keep = ("step_s", "bare_s", "overhead", "bare_method_s", "overhead_method", "ops_per_step", "kernels_per_step",
            "outside_conv_share", "eval_s", "fp_eval_s", "eval_ratio", "peak_mem_mb", "device_name", "threads")
    if record is None:
        return {**case, "skipped": missing}
    row = {**case, "wall_s": record.get("wall_s")}
    if "error" in record:
        return {**row, "error": record["error"]}
    return {**row, **{k: record["result"][k] for k in keep}, **({"dynamo": record["dynamo"]} if "dynamo" in record
                                                                 else {})}


def run_bench(check: Check) -> dict[str, Any]:
    """The eager cases, in one child (nothing is compiled, so nothing of one case stays for the next)."""
    cases = [{"generator": g, "loss": loss, "batch_size": b, "mode": "eager"} for b in batches(check)
             for g, loss in methods()]
    done = check.probe("bench", {"cases": cases, **bench_settings(check, False)}, check.deadline("bench"), "bench")
    found = {json.dumps(r["case"], sort_keys=True): r for r in done["records"]}
    rows = [_bench_row(c, found.get(json.dumps(c, sort_keys=True)), done["problem"] or "not reached") for c in cases]
    return {"cases": rows, **({"problem": done["problem"]} if done["problem"] else {})}


def run_compiled(check: Check) -> dict[str, Any]:
    """Each compiled case in a child of its own: CUDA graphs first (the question no GPU has answered
    yet), batch 16 before 200, then torch.compile without graphs."""
    cuda = check.device.startswith("cuda")
    modes = ("cudagraphs", "compile") if cuda else ("compile",)
    model = {"model": "toy_cifar10"} if check.quick else {}
    cases = [{"generator": g, "loss": loss, "batch_size": b, "mode": m, **model} for m in modes for b in batches(check)
             for g, loss in methods()]
    rows: list[dict[str, Any]] = []
    if not cuda:
        rows += [{"generator": g, "loss": loss, "batch_size": b, "mode": "cudagraphs",
                  "skipped": "CUDA graphs need a CUDA device"} for b in batches(check) for g, loss in methods()]
    if check.quick:  # one case: inductor's C++ takes 15-40 s a case on two CPU cores, even on the toy
        rows += [{**c, "skipped": "quick mode compiles one case"} for c in cases if c["generator"] != QUICK_COMPILED]
        cases = [c for c in cases if c["generator"] == QUICK_COMPILED]
    per_case, least = (60.0, 5.0) if check.quick else (200.0, 30.0)
    end = time.monotonic() + check.deadline("compiled")
    for case in cases:
        left = end - time.monotonic()
        if left < least:
            rows.append({**case, "skipped": "time budget spent"})
            continue
        done = check.probe("bench", {"cases": [case], **bench_settings(check, True)}, min(per_case, left),
                           f"compiled-{case['generator']}-{case['batch_size']}-{case['mode']}")
        rows.append(_bench_row(case, done["records"][0] if done["records"] else None, done["problem"] or "no result"))
    return {"cases": rows}


def run_cell(check: Check) -> dict[str, Any]:
    from zsqbench.api.plugins import get_plugins
    from zsqbench.grid.budgets import resolve_budget

    q = check.quick
    config = {**CELL, "batch_size": 2 if q else 200, "iters": 3 if q else 200, "warmup_iters": 1 if q else 3,
              "eval_images": 8 if q else 10000, "calibration_iters": 1 if q else 2, "device": check.device,
              **({"threads": 1} if q else {})}
    done = check.probe("cell", config, check.deadline("cell"), "cell")
    if not done["records"] or "error" in done["records"][0]:
        return {**config, "error": done["records"][0]["error"] if done["records"] else done["problem"]}
    r = done["records"][0]
    budget = resolve_budget(get_plugins(), "paper", CELL["generator"], CELL["loss"]).budget
    iterations = budget.epochs * budget.iters_per_epoch
    evaluations = sum(1 for e in range(budget.epochs) if budget.evaluates(e))
    eval_full_s = r["eval_s"] * 10000 / r["eval_images"]  # CIFAR's 10,000 test images
    train_s = iterations * r["step_s"]
    return {**config, **{k: r[k] for k in ("seconds", "step_s", "eval_s", "peak_mem_mb")},
            "paper_budget": {"iterations": iterations, "batch_size": budget.batch_size, "evaluations": evaluations},
            "extrapolated": {"train_s": train_s, "eval_s": evaluations * eval_full_s,
                             "total_s": train_s + evaluations * eval_full_s,
                             "total_h": (train_s + evaluations * eval_full_s) / 3600,
                             "note": "every iteration at the training step's pace (calibration iterations are "
                                     "cheaper); quick mode: a tiny batch, not a forecast" if q else
                             "every iteration at the training step's pace (the 800 calibration iterations are "
                             "cheaper)"}}


def run_concurrency(check: Check) -> dict[str, Any]:
    """1, 2, 4, 8 concurrent trials of the cell on the device (quick: 1, 2), each for the same time."""
    q = check.quick
    levels, seconds, setup_s = ((1, 2), 1.5, 60.0) if q else ((1, 2, 4, 8), 6.0, 60.0)
    end = time.monotonic() + check.deadline("concurrency")
    results: list[dict[str, Any]] = []
    for n in levels:
        if end - time.monotonic() < seconds + 15:
            results.append({"trials": n, "skipped": "time budget spent"})
            continue
        results.append(_concurrent(check, n, seconds, min(setup_s, end - time.monotonic() - seconds - 5)))
    one = next((r["aggregate_its_per_s"] for r in results if r.get("trials") == 1 and "aggregate_its_per_s" in r), None)
    for r in results:
        if one and "aggregate_its_per_s" in r:
            r["speedup_vs_one"] = r["aggregate_its_per_s"] / one
    return {**CELL, "batch_size": 2 if q else 200, "seconds_each": seconds, "levels": results}


def _concurrent(check: Check, n: int, seconds: float, setup_s: float) -> dict[str, Any]:
    threads = 1 if check.quick else max(1, (os.cpu_count() or 1) // n)
    signals = Path(tempfile.mkdtemp(prefix=f"trials{n}-", dir=check.logs))
    start = signals / "start"
    config = {**CELL, "batch_size": 2 if check.quick else 200, "device": check.device, "threads": threads,
              "warmup_iters": 1 if check.quick else 3, "eval_images": 1, "calibration_iters": 1 if check.quick else 2,
              "seconds": seconds, "start_file": str(start), "wait_s": setup_s + 30}
    workers = []
    for i in range(n):
        out = signals / f"{i}.jsonl"
        cfg = {**config, "ready_file": str(signals / f"{i}.ready")}
        workers.append((*check.spawn([sys.executable, "-m", "zsqbench.perf.device_probe", "worker", json.dumps(cfg),
                                      str(out)], f"trials{n}-{i}"), out, signals / f"{i}.ready"))
    deadline = time.monotonic() + setup_s
    while not all(ready.exists() for *_, ready in workers):
        if time.monotonic() > deadline or any(p.poll() is not None for p, *_ in workers):
            for p, *_ in workers:
                check.finish(p, 0.1)
            died = [log_tail(log) for p, log, *_ in workers if p.returncode not in (None, -signal.SIGKILL)]
            return {"trials": n, "error": died[0] if died else f"not ready within {setup_s:.0f} s"}
        time.sleep(0.05)
    start.touch()
    utilization = None
    if check.device.startswith("cuda"):
        time.sleep(seconds / 2)
        utilization = nvidia_smi("utilization.gpu,memory.used")
    finished = [check.finish(p, seconds + 60) for p, *_ in workers]
    per = [json.loads(out.read_text().splitlines()[0]) if out.exists() and out.read_text() else None
           for _, _, out, _ in workers]
    if not all(finished) or None in per:
        return {"trials": n, "error": next((log_tail(log) for (p, log, *_), r in zip(workers, per) if r is None),
                                           "stopped")}
    return {"trials": n, "threads_each": threads, "aggregate_its_per_s": sum(r["its_per_s"] for r in per),
            "its_per_s_each": [round(r["its_per_s"], 3) for r in per],
            "peak_mem_mb_each": [round(r["peak_mem_mb"]) for r in per], "nvidia_smi_mid_run": utilization}


RUNNERS = {"tests": run_tests, "bench": run_bench, "cell": run_cell, "concurrency": run_concurrency,
           "compiled": run_compiled}


def problems(record: dict[str, Any]) -> list[str]:
    """Errors and failed tests anywhere in the record (quick mode exits non-zero on any)."""
    found = []
    for name, section in record["sections"].items():
        if section.get("failed") or section.get("errors"):
            found.append(f"{name}: {section.get('failed', 0)} failed, {section.get('errors', 0)} errors")
        for item in [section, *section.get("cases", []), *section.get("levels", [])]:
            if "error" in item:
                found.append(f"{name}: {str(item['error'])[:300]}")
    return found


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="device_check", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto", help="cuda, cuda:N, cpu or auto (default)")
    p.add_argument("--quick", action="store_true", help="tiny batches and few iterations: the code paths in a minute")
    p.add_argument("--json-out", type=Path, required=True, help="the JSON file to write")
    p.add_argument("--budget-s", type=float, help="seconds for all sections (default 420; quick 240)")
    p.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated, from {','.join(SECTIONS)}")
    p.add_argument("--logs", type=Path, help="keep the child processes' logs here (default: a temporary folder)")
    args = p.parse_args(argv)
    sections = [s for s in args.sections.split(",") if s]
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        p.error(f"unknown sections {unknown}; choose from {', '.join(SECTIONS)}")
    import torch

    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        p.error(f"--device {device}: CUDA is not available here; use --device cpu --quick")
    budget = args.budget_s or (240.0 if args.quick else 420.0)
    logs = args.logs or Path(tempfile.mkdtemp(prefix="zsqbench-device-check-"))
    logs.mkdir(parents=True, exist_ok=True)
    check = Check(device, args.quick, budget, args.json_out, logs)
    check.record["environment"] = environment(check)
    check.save()
    for name in (s for s in SECTIONS if s in sections):
        t0 = time.monotonic()
        print(f"device check: {name} ({check.remaining():.0f} s of the budget left)", flush=True)
        try:
            section = RUNNERS[name](check)
        except Exception as exc:  # one section's bug must not lose the others' figures
            section = {"error": f"{type(exc).__name__}: {exc}"}
        section["elapsed_s"] = round(time.monotonic() - t0, 1)
        check.record["sections"][name] = section
        check.save()
    found = problems(check.record)
    check.record["problems"] = found
    check.save()
    print(f"device check: wrote {args.json_out} in {check.record['elapsed_s']:.0f} s"
          + (f"; problems: {'; '.join(found)}" if found else ""), flush=True)
    return 1 if found and args.quick else 0


if __name__ == "__main__":
    sys.exit(main())
