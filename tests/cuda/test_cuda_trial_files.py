"""A smoke trial trained on the GPU, then read back by what reads trial folders: its student evaluated
on the GPU and on the CPU from the saved checkpoint, exported to ONNX (verified in ONNX Runtime on the
CPU) and its saved epochs analysed for Hessian traces on both devices. A checkpoint of device tensors
must load wherever a later command runs."""

from __future__ import annotations

import json

import pytest
import torch
from cuda_setup import DEVICE, NEEDS_DEVICE
from support.data import write_normalized_teacher, write_test_set

from zsqbench.api.plugins import get_plugins
from zsqbench.assets.data import load_test_set
from zsqbench.cli.main import main
from zsqbench.export.trial_export import load_student
from zsqbench.runs.environment import Environment
from zsqbench.runs.folder import TrialFolder
from zsqbench.trial.evaluate import top1

pytestmark = [*NEEDS_DEVICE, pytest.mark.slow]

IMAGES = 24


@pytest.fixture(scope="module")
def device_trial(tmp_path_factory):
    """One GDFQ + KD W4A4 smoke trial run with ``--device`` the test device: (data root, teacher
    weights, results folder, its trial folder)."""
    get_plugins.cache_clear()
    base = tmp_path_factory.mktemp("device_trial")
    root = base / "data"
    write_test_set(root, "cifar10", n=IMAGES)
    weights = write_normalized_teacher(base / "teacher.pth", get_plugins().models.get("resnet20_cifar10").build())
    out = base / "results"
    argv = ["run", "--data-root", str(root), "--teacher-weights", str(weights), "--out", str(out),
            "--device", str(DEVICE), "-q", "--generators", "gdfq", "--loss", "kd", "--bits", "4", "--budget", "smoke"]
    assert main(argv) == 0
    (folder,) = TrialFolder.find(out)
    return root, weights, out, folder


def _common(root, weights) -> list[str]:
    return ["--data-root", str(root), "--teacher-weights", str(weights)]


def test_the_saved_student_evaluates_alike_on_the_device_and_the_cpu(device_trial):
    root, weights, _, folder = device_trial
    result = folder.read_result()
    assert result["compute"]["compile"] is False and result["top1_last"] is not None
    spec = folder.read_spec()
    env = Environment(data_root=root, device=torch.device("cpu"), cache_dir=root / "cache", teacher_weights=weights,
                      offline=True)
    _, student, teacher = load_student(folder, spec, get_plugins(), env)  # from the checkpoint, on the CPU
    test = load_test_set("cifar10", root)
    inputs = test.inputs(teacher.normalization)
    on_cpu = top1(student, inputs, test.labels, torch.device("cpu"))
    on_device = top1(student.to(DEVICE), inputs, test.labels, DEVICE)
    one_image = 100.0 / IMAGES
    assert abs(on_device - result["top1_last"]) <= one_image
    assert abs(on_cpu - result["top1_last"]) <= one_image


def test_the_device_trained_trial_exports_and_its_onnx_model_reproduces_the_student(device_trial, capsys):
    pytest.importorskip("onnxruntime", reason="the export extra is not installed")
    root, weights, _, folder = device_trial
    capsys.readouterr()
    assert main(["export", str(folder.path), "--json", "--latency-runs", "2", "--latency-batch", "8", "-q",
                 *_common(root, weights)]) == 0
    doc = json.loads((folder.path / "export" / "onnx" / "quantization.json").read_text())
    v = doc["verification"]
    assert v["images"] == IMAGES and v["agreement"] >= 99.9
    assert abs(doc["trial"]["top1_last"] - v["student_top1"]) <= 100.0 / IMAGES  # trained on the device, checked on the CPU


@pytest.mark.parametrize("where", ["device", "cpu"])
def test_hessian_traces_of_the_device_trained_epochs(device_trial, capsys, where):
    root, weights, out, _ = device_trial
    device = str(DEVICE) if where == "device" else "cpu"
    capsys.readouterr()
    assert main(["analyze", "hessian", str(out), "--batch-size", "4", "--probes", "3", "--min-probes", "2", "--json",
                 "--force", "--device", device, *_common(root, weights)]) == 0
    (analysis,) = json.loads(capsys.readouterr().out)
    assert set(analysis["epochs"]) == {"0", "1"}
    for epoch in analysis["epochs"].values():
        assert epoch["num_probes"] >= 2 and epoch["trace"] == epoch["trace"]  # computed, not NaN
