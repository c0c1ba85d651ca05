"""`zsqbench export` (issue 17): the grids of docs/methods/uniform.md#the-quantization-function as an
integer ONNX model, verified in ONNX Runtime.

What is checked, and the tolerances (zsqbench/export/runtime.py explains them):

- the mapping, exactly: integer codes are the fake quantizer's own, dequantize to its grid within one
  float32 ulp, stay inside the k-bit range, and every zero point fits its container (8-bit
  asymmetric weights included: lo = 0 and one-signed channels, which no 8-bit container holds);
- every activation quantizer in ONNX Runtime, on the very tensors ONNX Runtime feeds it: its codes
  equal the student's except within 1e-4 of a rounding tie (x/scale and S·x − Z are a few ulps apart),
  a check that does not depend on how one flipped code propagates;
- smoke trials W4A4, W3A3 and W8A8 end to end through `run --export onnx`: predictions agree on
  ≥ 99.9 % of the fixture's images (all of them), and the median image's logits agree to float
  rounding (1e-4 × (1 + max |logit|)); the largest difference is bounded by the same rounding unless
  a code flipped, which moves a logit by at most a grid step's effect (< 0.25 × max |logit| here);
- bad input: one line, exit 2, nothing written; a model that does not reproduce the student: exit 1,
  nothing written.

The smoke trials' teacher has random weights but BN statistics measured on its inputs, as a trained
network's are: with the fixture's random BN statistics activations grow ~30× through the network and
the network is chaotic (a one-ulp difference decides the class of images whose logits are nearly tied),
which says nothing about an export.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import onnx
import pandas as pd
import pytest
import torch
from conftest import make_spec, one_line_error, run_argv
from onnx import helper, numpy_helper
from support.data import export_grid_inputs, one_thread
from support.pickles import RunsCode
from torch import nn

from zsqbench.api.quantizer import IntegerGrid
from zsqbench.cli.main import main
from zsqbench.errors import UserError
from zsqbench.export import graph as graph_module
from zsqbench.export.graph import build_onnx, integer_view
from zsqbench.export.mapping import CONTAINERS, onnx_quant
from zsqbench.export.runtime import TYPICAL_LOGIT_TOL, session
from zsqbench.runs.folder import TrialFolder
from zsqbench_plugins.quantizers._fake_quant import fake_quantize, grid_of, quantize_weight, weight_grid
from zsqbench_plugins.quantizers._modules import QuantAct
from zsqbench_plugins.quantizers.uniform import UniformQuantizer

SMOKE = ("--generators", "gdfq", "--loss", "kd", "--epochs", "2", "--iters-per-epoch", "2", "--batch-size", "8",
         "--warmup-epochs", "1")


def _grid(lo: torch.Tensor, hi: torch.Tensor, bits: int) -> IntegerGrid:
    scale, zero = grid_of(lo, hi, bits)
    return IntegerGrid(bits, scale, zero)


# ------------------------------------------------------------------------------------------------
# The mapping, exactly


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 8])
def test_integer_weights_are_the_fake_quantizers_codes_and_dequantize_to_its_grid(bits):
    torch.manual_seed(bits)
    weight = torch.randn(16, 8, 3, 3) * torch.rand(16, 1, 1, 1)
    q, S, Z = weight_grid(weight, bits)
    shape = (-1, 1, 1, 1)
    assert torch.equal((q + Z.view(shape)) / S.view(shape), quantize_weight(weight, bits))  # bit for bit
    quant = onnx_quant(IntegerGrid(bits, S, Z), "w", weight=True)
    codes = quant.codes(q)
    assert codes.dtype in (np.int8, np.uint8) and quant.container in CONTAINERS
    lo, hi, _ = CONTAINERS[quant.container]
    assert codes.min() >= quant.code_min and codes.max() <= quant.code_max
    assert quant.code_max - quant.code_min == 2**bits - 1  # the k-bit range, in the container
    assert lo <= quant.zero_point.min() and quant.zero_point.max() <= hi
    onnx_value = (codes.astype(np.float64) - quant.zero_point.reshape(shape)) * quant.scale.reshape(shape)
    ours = quantize_weight(weight, bits).double().numpy()
    assert np.allclose(onnx_value, ours, rtol=2.0**-22, atol=0)  # 1/S rounded once: within an ulp


def test_eight_bit_zero_points_fit_where_the_naive_mapping_overflows():
    """At 8 bits Z = round(S·lo) + 128 reaches 128 when a range starts at 0: read as ONNX's zero point
    it overflows int8; ONNX's zero point is −Z (int8) or 128 − Z (uint8), which fit."""
    weight = torch.randn(4, 27)
    weight[1] = weight[1].abs()  # lo = 0 exactly: Z = 128
    weight[1, 0] = 0.0
    q, S, Z = weight_grid(weight, 8)
    assert Z.max() == 128  # the naive zero point: outside int8
    quant = onnx_quant(IntegerGrid(8, S, Z), "w", weight=True)
    assert quant.container == "int8" and np.array_equal(quant.zero_point, -Z.numpy().astype(np.int64))
    assert quant.zero_point.min() >= -128
    act = onnx_quant(_grid(torch.tensor(0.0), torch.tensor(6.0), 8), "a", weight=False)
    assert (act.container, int(act.zero_point), int(act.code_min), int(act.code_max)) == ("uint8", 0, 0, 255)
    assert not act.needs_clip  # 8 bits fill the container: plain QDQ
    assert onnx_quant(_grid(torch.tensor(0.0), torch.tensor(6.0), 4), "a", weight=False).needs_clip


def test_a_one_signed_eight_bit_channel_is_stored_in_int32_exactly():
    weight = torch.randn(3, 27)
    weight[2] = weight[2].abs() + 0.5  # all positive: −round(S·lo) < 0, no 8-bit container holds it
    q, S, Z = weight_grid(weight, 8)
    for name, (lo, hi, _) in CONTAINERS.items():
        offset = 0 if lo < 0 else 128
        assert not (lo <= offset - int(Z[2]) <= hi), name
    quant = onnx_quant(IntegerGrid(8, S, Z), "w", weight=True)
    assert quant.container == "int32" and not quant.zero_point.any()
    codes = quant.codes(q)
    assert np.array_equal(codes - quant.code_min.reshape(-1, 1), (q + 128).numpy())  # 256 codes per channel
    assert np.allclose(codes * quant.scale.reshape(-1, 1).astype(np.float64), quantize_weight(weight, 8).numpy(),
                       rtol=2.0**-22, atol=0)


def test_an_activation_range_without_zero_is_refused_by_name():
    with pytest.raises(UserError, match="act.quant.*excludes zero"):
        onnx_quant(_grid(torch.tensor(3.0), torch.tensor(6.0), 8), "activation quantizer act.quant", weight=False)


def _tiny_student(bits: int, positive_channel: bool) -> tuple[nn.Module, UniformQuantizer]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5)).eval()
    if positive_channel:
        with torch.no_grad():
            model[0].weight[1] = model[0].weight[1].abs() + 0.2
    quantizer = UniformQuantizer(UniformQuantizer.Options(range_tracking="ema"))
    student = quantizer.quantize(model, bits, bits).eval()
    with torch.no_grad():
        student(torch.randn(32, 3, 8, 8))
    quantizer.set_calibrating(student, False)
    return student, quantizer


def test_int32_weights_and_both_containers_run_in_onnx_runtime():
    student, quantizer = _tiny_student(8, positive_channel=True)
    view, layers = integer_view(student, quantizer.integer_layers(student))
    assert [layer.quant.container for layer in layers] == ["int32", "uint8", "int8"]
    model, _ = build_onnx(view, torch.randn(2, 3, 8, 8), {})
    x = torch.randn(64, 3, 8, 8)
    with torch.no_grad():
        expected = student(x).numpy()
    got = session(model, 1).run(None, {"input": x.numpy()})[0]
    assert np.abs(got - expected).max() < 1e-4 * (1 + np.abs(expected).max())


# ------------------------------------------------------------------------------------------------
# Every activation quantizer in ONNX Runtime, on ONNX Runtime's own inputs


def _probe_quantizers(model_bytes: bytes) -> tuple[bytes, list[tuple[str, str, str]]]:
    """The model with each QuantizeLinear's input and its DequantizeLinear's output as graph outputs."""
    model = onnx.load_from_string(model_bytes)
    reader = {name: n for n in model.graph.node for name in n.input}
    probes = []
    for node in [n for n in model.graph.node if n.op_type == "QuantizeLinear"]:
        after = reader[node.output[0]]
        if after.op_type == "Clip":
            after = reader[after.output[0]]
        assert after.op_type == "DequantizeLinear"
        probes.append((node.input[0], after.output[0], node.input[1]))
        for name in (node.input[0], after.output[0]):
            model.graph.output.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    return model.SerializeToString(), probes


@pytest.mark.parametrize("bits", [3, 4, 8])
def test_each_activation_quantizer_reproduces_the_students_codes_except_at_ties(tiny_parts, bits, one_thread):
    parts = tiny_parts(make_spec(bits=bits))
    student, quantizer = parts.ctx.student, parts.quantizer
    with torch.no_grad(), quantizer.calibrating(student, True):
        student(torch.randn(16, 3, 32, 32))
    quantizer.set_calibrating(student, False)
    view, _ = integer_view(student, quantizer.integer_layers(student))
    model_bytes, _ = build_onnx(view, torch.randn(2, 3, 32, 32), {})
    probed, probes = _probe_quantizers(model_bytes)
    acts = [m for m in student.modules() if isinstance(m, QuantAct)]
    assert len(probes) == len(acts) == 19
    sess = session(probed, 1, optimize=False)
    names = [o.name for o in sess.get_outputs()]
    outputs = dict(zip(names, sess.run(None, {"input": torch.randn(8, 3, 32, 32).numpy()})))
    scales = {t.name: numpy_helper.to_array(t) for t in onnx.load_from_string(probed).graph.initializer}
    checked = flips = 0
    for (x_name, y_name, scale_name), act in zip(probes, acts):
        S, Z = (v.double().item() for v in grid_of(act.x_min, act.x_max, bits))
        assert float(scales[scale_name]) == np.float32(1 / S)  # the probe is this quantizer
        x = torch.from_numpy(outputs[x_name])
        ours = fake_quantize(x, act.x_min, act.x_max, bits).numpy().astype(np.float64)
        theirs = outputs[y_name].astype(np.float64)
        flipped = np.abs(ours - theirs) > 0.5 / S
        t = S * x.double().numpy() - Z
        assert (np.abs(np.abs(t - np.floor(t) - 0.5))[flipped] < 1e-4).all(), "a code differs away from a tie"
        assert np.abs(ours - theirs)[~flipped].max() <= 2.0**-22 * (np.abs(ours).max() + 1)
        checked += x.numel()
        flips += int(flipped.sum())
    assert checked > 1_000_000 and flips <= 1e-4 * checked


# ------------------------------------------------------------------------------------------------
# Smoke trials end to end: `zsqbench run --export onnx`


@pytest.fixture(scope="module")
def grid(tmp_path_factory, plugins):
    """Three smoke trials (W4A4, W3A3, W8A8) run and exported by `zsqbench run --export onnx`."""
    base = tmp_path_factory.mktemp("export_grid")
    root, weights = export_grid_inputs(base, plugins.models.get("resnet20_cifar10").build)
    out = base / "results"
    with one_thread():
        assert main(run_argv(root, weights, out, "--bits", "4,3,8", *SMOKE, "--export", "onnx")) == 0
    folders = {f.read_spec().w_bits: f for f in TrialFolder.find(out)}
    assert sorted(folders) == [3, 4, 8]
    return root, weights, out, folders


def _document(folder: TrialFolder) -> dict:
    return json.loads((folder.path / "export" / "onnx" / "quantization.json").read_text())


@pytest.mark.parametrize("bits", [4, 3, 8])
def test_exported_smoke_trials_reproduce_their_students_in_onnx_runtime(grid, bits):
    *_, folders = grid
    doc = _document(folders[bits])
    v = doc["verification"]
    assert v["images"] == 24 and v["agreement"] >= 99.9 and v["onnx_top1"] == v["student_top1"]
    assert v["median_abs_logit_diff"] <= TYPICAL_LOGIT_TOL * (1 + v["logit_scale"])
    assert v["max_abs_logit_diff"] < 0.25 * v["logit_scale"]
    assert doc["trial"]["top1_last"] == pytest.approx(v["student_top1"])  # the trial ran on this CPU
    result = folders[bits].read_result()
    assert doc["trial"]["teacher"]["sha256"] == result["teacher"]["sha256"]
    assert doc["trial"]["spec_hash"] == folders[bits].trial_id and doc["model"]["opset"] == 17
    size = doc["size"]
    assert size["true_bits_bytes"] < size["stored_tensor_bytes"] or bits == 8  # 8 bits fill the containers
    assert size["true_bits_bytes"] <= size["stored_tensor_bytes"] < size["fp32_teacher_tensor_bytes"]
    assert set(doc["latency"]["ms_per_batch"]) == {"student", "fp32_teacher"}


@pytest.mark.parametrize("bits", [4, 3, 8])
def test_exported_weights_are_integers_in_the_k_bit_range_with_fitting_zero_points(grid, bits):
    *_, folders = grid
    folder = folders[bits]
    doc = _document(folder)
    model = onnx.load(folder.path / "export" / "onnx" / "model.onnx")
    assert hashlib_sha256(folder.path / "export" / "onnx" / "model.onnx") == doc["model"]["sha256"]
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    layers = {entry["name"]: entry for entry in doc["layers"]}
    weights = [n for n in model.graph.node if n.op_type == "DequantizeLinear" and inits.get(n.input[0]) is not None
               and inits[n.input[0]].ndim >= 2]
    assert len(weights) == 22  # 21 convolutions and the classifier
    for node in weights:
        codes, zero_point = inits[node.input[0]], inits[node.input[2]]  # 8-bit containers: a zero point
        entry = layers[node.input[0].removesuffix(".codes")]
        assert entry["bits"] == bits and codes.dtype == np.dtype(entry["container"])
        assert entry["code_min"] <= codes.min() and codes.max() <= entry["code_max"]
        assert entry["code_max"] - entry["code_min"] == 2**bits - 1
        lo, hi, _ = CONTAINERS[entry["container"]]
        assert zero_point.dtype == codes.dtype and lo <= zero_point.min() and zero_point.max() <= hi
    floats = [a for a in inits.values() if a.dtype == np.float32 and a.ndim >= 2]
    assert not floats, "a weight stored as floats"
    for node in [n for n in model.graph.node if n.op_type == "Clip"]:
        assert int(inits[node.input[2]]) - int(inits[node.input[1]]) == 2**bits - 1


def hashlib_sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_leaderboard_shows_onnx_top1_and_forgets_it_when_the_result_changes(grid, tmp_path):
    from zsqbench.leaderboard.results_folder import trial_rows
    from zsqbench.runs.result_file import read_export_record

    _, _, out, folders = grid
    board = pd.read_csv(out / "leaderboard.csv")
    for folder in folders.values():
        record = json.loads((folder.path / "export" / "onnx.json").read_text())
        row = board[board["trial_id"] == folder.trial_id].iloc[0]
        assert row["onnx_top1"] == pytest.approx(round(record["onnx_top1"], 2))
    rerun = tmp_path / "results" / "default" / folders[4].trial_id  # the same trial, run again since
    shutil.copytree(folders[4].path, rerun)
    result = json.loads((rerun / "result.json").read_text())
    result["finished_at"] = "2030-01-01T00:00:00+00:00"
    (rerun / "result.json").write_text(json.dumps(result))
    assert read_export_record(rerun) is None and read_export_record(folders[4].path) is not None
    assert trial_rows(tmp_path / "results")[0]["onnx_top1"] is None


def test_export_from_the_last_snapshot_with_weights_npz_elsewhere(grid, tmp_path, capsys):
    root, weights, _, folders = grid
    trial = tmp_path / "run" / folders[4].trial_id
    shutil.copytree(folders[4].path, trial)
    shutil.rmtree(trial / "export")
    (trial / "checkpoint.pt").unlink()  # the last epoch's snapshot holds the same student
    out = tmp_path / "deploy"
    argv = ["export", str(trial), "--out", str(out), "--npz", "--json", "--data-root", str(root),
            "--teacher-weights", str(weights), "--latency-runs", "2"]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["agreement"] >= 99.9 and summary["onnx_top1"] == _document(folders[4])["verification"]["onnx_top1"]
    assert sorted(p.name for p in out.iterdir()) == ["model.onnx", "quantization.json", "weights.npz"]
    npz = np.load(out / "weights.npz")
    codes = [npz[k] for k in npz.files if k.endswith(".codes")]
    assert len(codes) == 22 and all(c.dtype == np.int8 and -8 <= c.min() and c.max() <= 7 for c in codes)
    assert json.loads((trial / "export" / "onnx.json").read_text())["out"] == str(out.resolve())


def test_export_refuses_a_last_snapshot_that_would_run_code_in_one_line(grid, tmp_path, capsys):
    """The export read the snapshot through the same guard as the analysis, but reported a refused
    pickle global as a bare 'corrupt snapshot (UnpicklingError)'."""
    root, weights, _, folders = grid
    trial = tmp_path / "run" / folders[4].trial_id
    shutil.copytree(folders[4].path, trial)
    (trial / "checkpoint.pt").unlink()
    snapshot = TrialFolder(trial).snapshot_path(TrialFolder(trial).read_spec().budget.epochs - 1)
    marker = tmp_path / "code-ran"
    torch.save({"weight": RunsCode(str(marker))}, snapshot)
    argv = ["export", str(trial), "--out", str(tmp_path / "deploy"), "--data-root", str(root),
            "--teacher-weights", str(weights), "--latency-runs", "2"]
    err = one_line_error(capsys, argv)
    assert f"snapshot {snapshot} holds more than tensors" in err and "could run code" in err
    assert f"re-run trial {folders[4].trial_id}" in err and not marker.exists()
    assert not (tmp_path / "deploy").exists()


def test_folded_batchnorm_gives_integer_kernels_with_the_same_codes(grid, tmp_path, capsys):
    """At W8A8 with BN folded into the weight scales, ONNX Runtime runs QLinearConv (integer kernels);
    they round the bias, so agreement is checked loosely here (docs/deployment.md has the numbers)."""
    root, weights, _, folders = grid
    out = tmp_path / "folded"
    trial = _copy_trial(folders[8], tmp_path / "r" / folders[8].trial_id)
    argv = ["export", str(trial), "--out", str(out), "--fold-bn", "--min-agreement", "50", "--json",
            "--data-root", str(root), "--teacher-weights", str(weights), "--latency-runs", "2"]
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out)["integer_convs"] > 0
    graph_only = json.loads((out / "quantization.json").read_text())["verification"]["graph_without_runtime_fusions"]
    assert graph_only["agreement"] >= 99.9  # the folded graph itself reproduces the student
    assert graph_only["median_abs_logit_diff"] <= TYPICAL_LOGIT_TOL * (1 + graph_only["logit_scale"])
    folded = {t.name: numpy_helper.to_array(t) for t in onnx.load(out / "model.onnx").graph.initializer}
    kept = {t.name: numpy_helper.to_array(t)
            for t in onnx.load(folders[8].path / "export" / "onnx" / "model.onnx").graph.initializer}
    codes = [name for name in kept if name.endswith(".codes")]
    assert codes and all(np.array_equal(folded[name], kept[name]) for name in codes)
    assert not any(n.op_type == "BatchNormalization" for n in onnx.load(out / "model.onnx").graph.node)


# ------------------------------------------------------------------------------------------------
# Bad input: one line, exit 2, nothing written; a wrong model: exit 1, nothing written


def _export_argv(trial: Path, root: Path, weights: Path, *extra: str) -> list[str]:
    return ["export", str(trial), "--data-root", str(root), "--teacher-weights", str(weights), *extra]


def _copy_trial(folder: TrialFolder, dest: Path) -> Path:
    shutil.copytree(folder.path, dest)
    shutil.rmtree(dest / "export")
    return dest


def test_bad_input_is_one_line_and_writes_nothing(grid, tmp_path, capsys, monkeypatch):
    root, weights, _, folders = grid
    pending = tmp_path / "r" / "pending"
    pending.mkdir(parents=True)
    shutil.copy(folders[4].path / "spec.json", pending / "spec.json")
    diverged = _copy_trial(folders[4], tmp_path / "r" / "diverged")
    (diverged / "result.json").unlink()
    (diverged / "error.json").write_text(json.dumps({"status": "diverged", "error": "top-1 collapsed to 10.00%"}))
    corrupt = _copy_trial(folders[4], tmp_path / "r" / "corrupt")
    data = (corrupt / "checkpoint.pt").read_bytes()
    (corrupt / "checkpoint.pt").write_bytes(data[: len(data) // 2])  # cut short
    out = tmp_path / "out"
    cases = [
        (pending, (), "is not done"),
        (diverged, (), "diverged (top-1 collapsed"),
        (corrupt, (), "corrupt checkpoint"),
        (_copy_trial(folders[4], tmp_path / "r" / "done"), ("--format", "nope"), "unknown export format 'nope'"),
    ]
    for trial, extra, needle in cases:
        assert needle in one_line_error(capsys, _export_argv(trial, root, weights, "--out", str(out), *extra))
        assert not out.exists() and not (trial / "export" / "onnx.json").exists()
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # the extra not installed
    message = one_line_error(capsys, _export_argv(folders[4].path, root, weights, "--out", str(out)))
    assert "pip install 'zsqbench[export]'" in message and not out.exists()
    assert "pip install" in one_line_error(capsys, run_argv(root, weights, tmp_path / "res", "--export", "onnx"))
    assert not (tmp_path / "res").exists()


def test_a_model_that_does_not_reproduce_the_student_fails_and_is_not_written(grid, tmp_path, capsys, monkeypatch):
    """The tempting mistake of reading Z as ONNX's zero point (instead of −Z) moves every weight of a
    channel with Z ≠ 0 by 2Z/S: the verification must catch it, exit 1, and leave nothing behind."""
    root, weights, _, folders = grid
    trial = _copy_trial(folders[4], tmp_path / "r" / "trial")
    use_naive_zero_points(monkeypatch)
    out = tmp_path / "out"
    assert main(_export_argv(trial, root, weights, "--out", str(out))) == 1
    err = capsys.readouterr().err
    assert "does not reproduce" in err and "nothing was written" in err and "systematic" in err
    assert not out.exists() and not (trial / "export").exists()


def use_naive_zero_points(monkeypatch) -> None:
    """Export weights with Z read as ONNX's zero point (the tempting mistake) instead of −Z."""
    real = graph_module.onnx_quant

    def naive_zero_point(grid_: IntegerGrid, what: str, *, weight: bool):
        quant = real(grid_, what, weight=weight)
        if not weight:
            return quant
        assert quant.container == "int8"
        return type(quant)(quant.bits, quant.container, quant.scale, -quant.zero_point, quant.offset, quant.S, quant.Z)

    monkeypatch.setattr(graph_module, "onnx_quant", naive_zero_point)
