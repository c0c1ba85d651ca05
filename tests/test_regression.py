"""The numbers of the code before the plugin API v2 redesign, bit for bit.

``regression/api_v1_values.json`` holds the per-epoch top-1, loss terms and gradient norms of
four trials, recorded with the code at commit d18d179 (CPU, seed 0, one thread): smoke trials
gdfq+kd, adadfq+akt and hast+kd at W4A4, and adadfq+akt on a 3 x 5 x 16 custom budget with one
warm-up epoch; once on a fixture data root (random teacher, 200 random images; always run) and
once on the real CIFAR-10 test set with the chenyaofo teacher (``realdata``). A refactor of the
training loop, the step, the contracts or the plugins must reproduce them exactly: any change of
operation order, RNG use or dtype shows up here.

The four trials run in one process (each seeds everything itself; the test set and the FP
accuracy are loaded once), with one thread and the CPU kernels pinned to AVX2 (ATen, oneDNN and
MKL), so a machine with AVX-512 computes what the recording machine computed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fixtures_data import write_random_weights, write_test_set

RECORDED = json.loads((Path(__file__).parent / "regression" / "api_v1_values.json").read_text())

CASES: dict[str, list[str]] = {
    "smoke/gdfq+kd": ["--generators", "gdfq", "--loss", "kd", "--bits", "4", "--budget", "smoke"],
    "smoke/adadfq+akt": ["--generators", "adadfq", "--loss", "akt", "--bits", "4", "--budget", "smoke"],
    "smoke/hast+kd": ["--generators", "hast", "--loss", "kd", "--bits", "4", "--budget", "smoke"],
    "custom/adadfq+akt": ["--generators", "adadfq", "--loss", "akt", "--bits", "4", "--epochs", "3",
                          "--iters-per-epoch", "5", "--batch-size", "16", "--warmup-epochs", "1"],
}

pytestmark = pytest.mark.skipif(
    torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"),
    reason="the values were recorded with AVX2 kernels; this CPU cannot run them",
)


def _fixture_root(root: Path) -> tuple[Path, Path]:
    """The recording's fixture: seed 0 before the model is built, then 200 random images."""
    from pytorchcv.models.resnet_cifar import get_resnet_cifar

    torch.manual_seed(0)
    write_test_set(root, "cifar10", n=200, seed=0)
    model = get_resnet_cifar(num_classes=10, blocks=20, bottleneck=False, model_name=None)
    return root, write_random_weights(root / "teacher.pth", model, seed=0)


_DRIVER = """
import json, sys
from zsqbench.cli.main import main
cases, common = json.loads(sys.argv[1]), json.loads(sys.argv[2])
for name, argv in cases.items():
    out = common["out"] + "/" + name.replace("/", "_")
    code = main(["run", *argv, *common["argv"], "--out", out, "--cache-dir", out + "/cache", "-q"])
    if code:
        sys.exit(f"{name}: exit {code}")
"""


def _run_all(data_root: Path, weights: Path | None, out: Path) -> dict[str, dict]:
    """Every case's result.json, from one process running them one after another."""
    env = {**os.environ, **RECORDED["environment"], "ZSQBENCH_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    common = ["--device", "cpu", "--data-root", str(data_root)]
    if weights is not None:
        common += ["--teacher-weights", str(weights)]
    done = subprocess.run([sys.executable, "-c", _DRIVER, json.dumps(CASES), json.dumps({"out": str(out), "argv": common})],
                          env=env, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stderr[-2000:]
    results = {}
    for case in CASES:
        (path,) = (out / case.replace("/", "_")).glob("*/*/result.json")
        results[case] = json.loads(path.read_text())
    return results


def _measured(result: dict) -> dict:
    return {
        "fp_top1": result["fp_top1"], "ptq_top1": result["ptq_top1"],
        "epochs": [{"epoch": e["epoch"], "phase": e["phase"], "top1": e["top1"], "losses": e["losses"],
                    "grad_norm_mean": e["grad_norm_mean"]} for e in result["epochs"]],
    }


@pytest.mark.slow
def test_fixture_trials_reproduce_the_recorded_numbers(tmp_path):
    root, weights = _fixture_root(tmp_path / "data")
    for case, result in _run_all(root, weights, tmp_path / "results").items():
        assert _measured(result) == RECORDED["trials"][f"fixture/{case}"], case


@pytest.mark.slow
@pytest.mark.realdata
def test_real_data_trials_reproduce_the_recorded_numbers(data_root, tmp_path):
    for case, result in _run_all(data_root, None, tmp_path / "results").items():
        assert _measured(result) == RECORDED["trials"][f"real/{case}"], case
