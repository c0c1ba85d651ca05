"""The device check's measurements, each run in a process of its own by :mod:`zsqbench.perf.device_check`.

A process per measurement keeps them apart: a compiled iteration's caches (dynamo's per-function
cache, CUDA graph pools) never meet another case's, a crash or a hang costs one case, and the
parent can stop any of them when the time budget is spent. Each writes JSON lines to its output
file as it goes, so what finished before a stop is kept.

``python -m zsqbench.perf.device_probe TASK CONFIG_JSON OUTPUT_FILE``, TASK one of:

* ``bench``: :func:`zsqbench.perf.bench.run_bench` for each case (generator, loss, batch, mode:
  ``eager``, ``compile`` = torch.compile without CUDA graphs, ``cudagraphs`` = ``--compile`` on CUDA,
  ``mode="reduce-overhead"``); with compiled modes, dynamo's graph, break and CUDA-graph-skip counts.
* ``cell``: a run of training iterations of one cell, timed as a whole (a trial's pace, hiccups
  included), and one evaluation pass over the test set's size.
* ``worker``: one of several concurrent trials on one device: set up, say it is ready, wait for the
  start file, then train for a fixed time and report how many iterations it made.
"""

from __future__ import annotations

import json
import logging
import sys
import time
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from torch import nn

from zsqbench.api import Normalization, PretrainedWeights, TeacherModel, hookimpl
from zsqbench.api.plugins import Plugins, build_plugins, get_plugins
from zsqbench.perf import bench as bench_mod
from zsqbench.perf.bench import BenchConfig, BenchSession, run_bench
from zsqbench.perf.compute import ComputeSettings
from zsqbench.trial.step import compile_iteration

#: The quick mode's stand-in teacher for compiled cases: inductor compiles ResNet-20's iteration in
#: minutes on two CPU cores, these two blocks in seconds, through the same code.
TOY_MODEL = "toy_cifar10"


def _toy() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))


def plugins_for(model: str) -> Plugins:
    """The installed plugins, with the toy teacher registered when a case asks for it (its weights
    are never read: a benchmark's teacher is randomly initialized)."""
    if model != TOY_MODEL:
        return get_plugins()
    entry = TeacherModel(
        name=TOY_MODEL, description="two conv blocks (device check, quick mode)", arch="toy", dataset="cifar10",
        num_classes=10, build=_toy, weights=(PretrainedWeights("toy", "toy.pth", Normalization((0.5,) * 3, (0.25,) * 3),
                                                               None, sha256="0" * 64),),
        feature_taps={"default": ("2", "5")}, classifier="8", macs=1)

    class Toy:
        @hookimpl
        def register_models(self, register):
            register(entry)

    return build_plugins(extra={"device-check-toy": Toy()})


def bench_config(case: dict[str, Any], settings: dict[str, Any]) -> BenchConfig:
    """A case (generator, loss, batch_size, mode, model, bits) with the section's settings (device,
    threads, iters, warmup_iters, eval_images, calibration_iters)."""
    return BenchConfig(
        generator=case["generator"], loss=case["loss"], bits=case.get("bits", 4), batch_size=case["batch_size"],
        device=settings["device"], threads=settings.get("threads"), iters=settings["iters"],
        warmup_iters=settings["warmup_iters"], eval_images=settings["eval_images"],
        calibration_iters=settings.get("calibration_iters", 2), model=case.get("model", "resnet20_cifar10"),
        compute=ComputeSettings(compile=case.get("mode", "eager") != "eager"),
    )


@contextmanager
def _compile_mode(mode: str) -> Iterator[None]:
    """``compile`` on CUDA: torch.compile without graph capture (bench compiles with CUDA graphs there)."""
    if mode != "compile":
        yield
        return
    original = bench_mod.compile_iteration
    bench_mod.compile_iteration = lambda parts, device: compile_iteration(parts, device, cuda_graphs=False)
    try:
        yield
    finally:
        bench_mod.compile_iteration = original


class _SkipMessages(logging.Handler):
    """The reasons inductor gives for not capturing a graph ("skipping cudagraphs due to ...")."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if "skipping cudagraph" in text and text not in self.messages:
            self.messages.append(text.strip().splitlines()[0][:300])


def _dynamo_counts() -> dict[str, Any]:
    from torch._dynamo.utils import counters

    return {"unique_graphs": counters["stats"].get("unique_graphs", 0),
            "graph_breaks": sum(counters["graph_break"].values()),
            "cudagraph_skips": counters["inductor"].get("cudagraph_skips", 0)}


def _write(out: Path, record: dict[str, Any]) -> None:
    with open(out, "a") as fh:
        fh.write(json.dumps(record) + "\n")


def _error() -> str:
    lines = traceback.format_exc().strip().splitlines()
    return " | ".join([*lines[-1:], *[line.strip() for line in lines[-3:-1]]])[:1500]


def run_cases(config: dict[str, Any], out: Path) -> None:
    skips = _SkipMessages()
    logging.getLogger("torch").addHandler(skips)
    for case in config["cases"]:
        record: dict[str, Any] = {"case": case}
        t0 = time.perf_counter()
        try:
            with _compile_mode(case.get("mode", "eager")):
                record["result"] = run_bench(bench_config(case, config), plugins_for(case.get("model", "")))
            if case.get("mode", "eager") != "eager":
                record["dynamo"] = {**_dynamo_counts(), "cudagraph_skip_reasons": skips.messages[:5]}
        except Exception:
            record["error"] = _error()
        record["wall_s"] = round(time.perf_counter() - t0, 2)
        _write(out, record)


def run_cell(config: dict[str, Any], out: Path) -> None:
    """``iters`` training iterations of the cell, timed end to end (one synchronization at the end),
    and one evaluation pass over ``eval_images``."""
    case = {"generator": config["generator"], "loss": config["loss"], "bits": config["bits"],
            "batch_size": config["batch_size"]}
    cfg = bench_config(case, config)
    record: dict[str, Any] = {"case": case}
    try:
        with BenchSession(cfg) as session:
            with session.training():
                for _ in range(cfg.warmup_iters):
                    session.step()
                session.sync()
                t0 = time.perf_counter()
                for _ in range(cfg.iters):
                    session.step()
                session.sync()
                seconds = time.perf_counter() - t0
            session.eval_student(min(cfg.eval_batch_size, cfg.eval_images))
            eval_s = session.timed(session.eval_student)
            record.update(iters=cfg.iters, seconds=seconds, step_s=seconds / cfg.iters, eval_s=eval_s,
                          eval_images=cfg.eval_images, peak_mem_mb=session.peak_mem_mb())
    except Exception:
        record["error"] = _error()
    _write(out, record)


def run_worker(config: dict[str, Any], out: Path) -> None:
    """One of ``trials`` concurrent trials: ready file, wait for the start file, train ``seconds``."""
    case = {"generator": config["generator"], "loss": config["loss"], "bits": config["bits"],
            "batch_size": config["batch_size"]}
    cfg = bench_config(case, {**config, "iters": 1})
    with BenchSession(cfg) as session, session.training():
        for _ in range(cfg.warmup_iters):
            session.step()
        session.sync()
        Path(config["ready_file"]).touch()
        start = Path(config["start_file"])
        deadline = time.monotonic() + config.get("wait_s", 600)
        while not start.exists():
            if time.monotonic() > deadline:
                raise TimeoutError("no start signal")
            time.sleep(0.005)
        t0 = time.perf_counter()
        iterations = 0
        while time.perf_counter() - t0 < config["seconds"]:
            session.step()
            iterations += 1
        session.sync()
        seconds = time.perf_counter() - t0
        _write(out, {"iterations": iterations, "seconds": seconds, "its_per_s": iterations / seconds,
                     "peak_mem_mb": session.peak_mem_mb()})


TASKS = {"bench": run_cases, "cell": run_cell, "worker": run_worker}


def main(argv: list[str]) -> int:
    task, config, out = argv
    TASKS[task](json.loads(config), Path(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
