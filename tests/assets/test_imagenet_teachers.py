"""The ImageNet teachers on random-init weights (IMAGENET.md §1, §2, §7.1, §8.4): module counts,
parameters, MACs, tap paths and shapes, the uniform student's placement, and checkpoint pinning
(sha1 pins, the pytorchcv version trap, pretrained=True never called). No ImageNet, no weights."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from zsqbench.api import FeatureTaps
from zsqbench.assets.teachers import load_teacher, select_checkpoint
from zsqbench.errors import ChecksumError, DataNotFoundError, UserError
from zsqbench.files import file_digest
from zsqbench_plugins.quantizers._fake_quant import quantize_weight
from zsqbench_plugins.quantizers._modules import QuantAct, QuantConv2d, QuantizedActivation, QuantLinear

IMAGENET_NORM = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def _stages(*spec: tuple[int, tuple[int, int, int]]) -> list[tuple[int, int, int]]:
    """Shapes in forward order from (repeat, shape) pairs."""
    return [shape for n, shape in spec for _ in range(n)]


# IMAGENET.md §1.3 table, §1.4 shapes, §7.1 MMAC, parameter totals of pytorchcv's model_metainfos.csv.
EXPECTED = {
    "resnet18_imagenet": dict(
        arch="resnet18", convs=20, depthwise=0, bns=20, acts=17, act_type=nn.ReLU, quant_acts=17, quant_weights=21,
        params=11_689_512, mmac=1_814, top1=71.47, file="resnet18-0982-0126861b.pth", leaf="body",
        units=(2, 2, 2, 2), penultimate=512,
        shapes=_stages((2, (64, 56, 56)), (2, (128, 28, 28)), (2, (256, 14, 14)), (2, (512, 7, 7)))),
    "resnet50_imagenet": dict(
        arch="resnet50", convs=53, depthwise=0, bns=53, acts=49, act_type=nn.ReLU, quant_acts=49, quant_weights=54,
        params=25_557_032, mmac=3_858, top1=77.72, file="resnet50-0633-b00d1c8e.pth", leaf="body",
        units=(3, 4, 6, 3), penultimate=2048,
        shapes=_stages((3, (256, 56, 56)), (4, (512, 28, 28)), (6, (1024, 14, 14)), (3, (2048, 7, 7)))),
    "mobilenetv2_w1_imagenet": dict(
        arch="mobilenetv2_w1", convs=54, depthwise=17, bns=53, acts=36, act_type=nn.ReLU6, quant_acts=36,
        quant_weights=54, params=3_504_960, mmac=314, top1=73.03, file="mobilenetv2_w1-0887-13a021bc.pth",
        leaf="conv3", units=(1, 2, 3, 7, 4), penultimate=1280,
        shapes=_stages((1, (16, 112, 112)), (2, (24, 56, 56)), (3, (32, 28, 28)), (4, (64, 14, 14)),
                       (3, (96, 14, 14)), (3, (160, 7, 7)), (1, (320, 7, 7)))),
    "mobilenet_w1_imagenet": dict(
        arch="mobilenet_w1", convs=27, depthwise=13, bns=27, acts=27, act_type=nn.ReLU, quant_acts=27,
        quant_weights=28, params=4_231_976, mmac=569, top1=73.39, file="mobilenet_w1-0895-7e1d739f.pth",
        leaf="pw_conv", units=(1, 2, 2, 6, 2), penultimate=1024,
        shapes=_stages((1, (64, 112, 112)), (2, (128, 56, 56)), (2, (256, 28, 28)), (6, (512, 14, 14)),
                       (2, (1024, 7, 7)))),
}
NAMES = list(EXPECTED)


@pytest.fixture(scope="module")
def teachers(plugins) -> dict[str, nn.Module]:
    """Each random-init teacher, built once (eval mode, frozen)."""
    torch.manual_seed(0)
    built = {}
    for name in NAMES:
        model = plugins.models.get(name).build().eval()
        for p in model.parameters():
            p.requires_grad_(False)
        built[name] = model
    return built


@pytest.fixture(scope="module")
def students(plugins, teachers) -> dict[str, nn.Module]:
    """The registered ``uniform`` quantizer's W4A4 students, as trials build them."""
    cls = plugins.quantizers.get("uniform")
    return {name: cls(cls.Options()).quantize(copy.deepcopy(t), 4, 4).eval() for name, t in teachers.items()}


@pytest.fixture(scope="module")
def image() -> torch.Tensor:
    return torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))


# ----------------------------------------------------------------------------- declarations


@pytest.mark.parametrize("name", NAMES)
def test_teacher_declares_the_imagenet_protocol(plugins, monkeypatch, name):
    from zsqbench.grid import request

    e = EXPECTED[name]
    entry = plugins.models.get(name)
    assert (entry.dataset, entry.num_classes, entry.input_size, entry.classifier) == ("imagenet", 1000,
                                                                                    (3, 224, 224), "output")
    assert entry.arch == e["arch"]
    # `--model <arch> --dataset imagenet` selects it (the dataset itself is the data adapter's to register)
    monkeypatch.setattr(request, "dataset_info", lambda dataset: None)
    assert request.resolve_teacher(plugins, e["arch"], "imagenet") is entry
    (w,) = entry.weights
    assert (w.tag, w.filename, w.archive_member, w.expected_top1) == ("pytorchcv", e["file"], e["file"], e["top1"])
    assert (w.normalization.mean, w.normalization.std) == IMAGENET_NORM
    assert re.fullmatch(r"[0-9a-f]{40}", w.sha1) and w.filename.endswith(f"-{w.sha1[:8]}.pth") and w.sha256 is None
    assert re.fullmatch(rf"https://github\.com/osmr/imgclsmob/releases/download/v0\.0\.\d+/{w.filename}\.zip", w.url)
    assert w.digest == f"sha1:{w.sha1}" and w.note
    assert round(entry.macs / 1e6) == e["mmac"]  # §7.1, rounded to MMAC
    taps = entry.feature_taps
    assert taps["default"] == taps["all_units"] and len(taps["default"]) == len(e["shapes"])
    last = tuple(f"features.stage{s}.unit{n}.{e['leaf']}" for s, n in enumerate(e["units"], 1))
    assert taps["last_per_stage"] == last
    assert taps["penultimate"] == ("features.final_pool",)


def test_only_resnet18_refuses_pytorchcvs_later_files(plugins):
    refused = plugins.models.get("resnet18_imagenet").weights[0].refused
    assert {r.filename for r in refused} == {"resnet18-0896-77a56f15.pth", "resnet18-0941-8ef01e05.pth"}
    assert all(not plugins.models.get(n).weights[0].refused for n in NAMES if n != "resnet18_imagenet")


# ----------------------------------------------------------------------------- the FP networks


def _macs_hook(total: list[int]):
    """Conv2d + Linear multiply-accumulates of one image (the batch's first), added to ``total``."""

    def hook(module: nn.Module, inputs, output: torch.Tensor) -> None:
        if isinstance(module, nn.Conv2d):
            k = module.kernel_size[0] * module.kernel_size[1]
            total[0] += output[0].numel() * (module.in_channels // module.groups) * k
        elif isinstance(module, nn.Linear):
            total[0] += output[0].numel() * module.in_features

    return hook


@pytest.mark.parametrize("name", NAMES)
def test_module_counts_parameters_macs_and_taps(plugins, teachers, image, name):
    e, model, entry = EXPECTED[name], teachers[name], plugins.models.get(name)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == e["convs"]
    assert sum(c.groups > 1 and c.groups == c.in_channels for c in convs) == e["depthwise"]
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == e["bns"]
    acts = [m for m in model.modules() if isinstance(m, (nn.ReLU, nn.ReLU6))]
    assert len(acts) == e["acts"] and all(type(a) is e["act_type"] for a in acts)
    assert sum(p.numel() for p in model.parameters()) == e["params"]

    calls = {id(a): 0 for a in acts}
    macs = [0]
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    handles = [m.register_forward_hook(_macs_hook(macs)) for m in layers]
    handles += [a.register_forward_hook(lambda m, i, o: calls.__setitem__(id(m), calls[id(m)] + 1)) for a in acts]
    paths = entry.feature_taps["default"] + entry.feature_taps["penultimate"]
    taps = FeatureTaps(model, paths)
    try:
        with torch.no_grad(), taps.active():
            logits = model(image)
            maps = taps.take(detach=True)
    finally:
        for h in handles:
            h.remove()
    assert logits.shape == (1, 1000)
    assert set(calls.values()) == {1}  # one module per ReLU site, so one activation quantizer per tensor
    assert macs[0] == pytest.approx(entry.macs, rel=0.01) and macs[0] == pytest.approx(e["mmac"] * 1e6, rel=0.01)
    assert [tuple(maps[p].shape[1:]) for p in entry.feature_taps["default"]] == e["shapes"]
    assert tuple(maps["features.final_pool"].shape[1:]) == (e["penultimate"], 1, 1)
    assert set(entry.feature_taps["last_per_stage"]) <= set(entry.feature_taps["default"])


def test_pretrained_true_is_never_called(plugins, monkeypatch):
    from pytorchcv.models.common import model_store

    def refuse(*args, **kwargs):
        raise AssertionError("pytorchcv's model store was asked for pretrained weights")

    monkeypatch.setattr(model_store, "download_model", refuse)
    monkeypatch.setattr(model_store, "get_model_file", refuse)
    for name in ("resnet18_imagenet", "mobilenet_w1_imagenet"):
        plugins.models.get(name).build()


# ----------------------------------------------------------------------------- the uniform student (§2)


@pytest.mark.parametrize("name", NAMES)
def test_student_quantizer_counts_and_fp_names(teachers, students, image, name):
    e, teacher, student = EXPECTED[name], teachers[name], students[name]
    assert sum(isinstance(m, QuantAct) for m in student.modules()) == e["quant_acts"]
    assert sum(isinstance(m, (QuantConv2d, QuantLinear)) for m in student.modules()) == e["quant_weights"]
    assert not any(type(m) in (nn.Conv2d, nn.Linear) for m in student.modules())  # every weight layer quantized
    fp = dict(teacher.named_modules())
    q = dict(student.named_modules())
    for path, module in fp.items():  # same paths; convs, linears and BNs keep their type family
        assert path in q, path
        if isinstance(module, (nn.Conv2d, nn.Linear, nn.BatchNorm2d)):
            assert isinstance(q[path], type(module)), path
        if isinstance(module, (nn.ReLU, nn.ReLU6)):
            assert isinstance(q[path], QuantizedActivation) and type(q[path].act) is type(module), path


def test_mobilenetv2_student_placement(plugins, teachers, image):
    """Per-output-channel weights for depthwise convs and the 1x1 conv classifier; activations
    quantized after every ReLU6; the linear-bottleneck output (conv3) stays FP."""
    cls = plugins.quantizers.get("uniform")
    student = cls(cls.Options()).quantize(copy.deepcopy(teachers["mobilenetv2_w1_imagenet"]), 2, 4).eval()
    for path in ("features.stage2.unit1.conv2.conv", "features.stage4.unit3.conv2.conv", "output"):
        conv = dict(student.named_modules())[path]
        assert isinstance(conv, QuantConv2d) and conv.w_bits == 2
        if path != "output":
            assert conv.groups == conv.in_channels == conv.out_channels > 1
        with torch.no_grad():  # channels of different magnitudes (random init draws them alike)
            conv.weight.mul_(torch.linspace(0.1, 2.0, conv.out_channels).view(-1, 1, 1, 1))
        qw = quantize_weight(conv.weight.detach(), conv.w_bits)
        x = torch.randn(1, conv.in_channels, 9, 9)
        with torch.no_grad():  # the forward uses exactly these fake-quantized weights
            torch.testing.assert_close(conv(x), F.conv2d(x, qw, None, conv.stride, conv.padding, 1, conv.groups))
        w, qflat = conv.weight.detach().flatten(1), qw.flatten(1)
        assert all(row.unique().numel() <= 4 for row in qflat)
        # each channel's grid spans its own [min, max] (ends rounded to the grid: within half a step),
        # not the tensor's
        half_step = (w.amax(1) - w.amin(1)) / (2**conv.w_bits - 1) / 2 + 1e-6
        assert ((qflat.amin(1) - w.amin(1)).abs() <= half_step).all()
        assert ((qflat.amax(1) - w.amax(1)).abs() <= half_step).all()
        assert ((w.amax(1) - w.amax()).abs() > half_step).any()  # a per-tensor grid would fail the above
    cls(cls.Options()).set_calibrating(student, True)
    conv3, act = "features.stage3.unit2.conv3", "features.stage3.unit2.conv1.activ"
    taps = FeatureTaps(student, (conv3, act))
    with torch.no_grad(), taps.active():
        student(image)
        maps = taps.take(detach=True)
    assert maps[act].unique().numel() <= 16  # 4-bit activation grid
    assert maps[conv3].unique().numel() > 1000  # FP: no quantizer after the linear bottleneck
    unit = dict(student.named_modules())[conv3]
    assert not any(isinstance(m, (QuantAct, QuantizedActivation)) for m in unit.modules())


# ----------------------------------------------------------------------------- pinning (§1.2, §8.2)


def _one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message, message
    return message


def _load(entry, root, weights_file=None):
    """Select then load, as a trial does."""
    return load_teacher(entry, select_checkpoint(entry, root, weights_file), root, weights_file)


def _state_file(path, model: nn.Module, extra: dict | None = None, drop: str | None = None):
    """``model``'s state dict as pytorchcv's 2019 files hold it (no num_batches_tracked)."""
    state = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    state.update(extra or {})
    if drop:
        del state[drop]
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return path


def _with_pin(entry, **changes):
    """``entry`` whose (only) pinned checkpoint has these fields replaced."""
    return dataclasses.replace(entry, weights=(dataclasses.replace(entry.weights[0], **changes),))


def test_a_wrong_sha1_under_the_pinned_name_is_refused_in_one_line(plugins, tmp_path):
    entry = plugins.models.get("mobilenetv2_w1_imagenet")
    pin = entry.weights[0]
    path = tmp_path / "weights" / pin.filename
    path.parent.mkdir()
    path.write_bytes(b"\0" * 1000)
    assert select_checkpoint(entry, tmp_path).tag == "pytorchcv"
    with pytest.raises(ChecksumError) as exc:
        _load(entry, tmp_path)
    message = _one_line(exc)
    found = hashlib.sha1(path.read_bytes()).hexdigest()
    for part in (str(path), f"sha1 {found}", f"expected {pin.sha1}", "fetch it again", pin.url):
        assert part in message, part


def test_pytorchcvs_later_resnet18_file_is_refused_by_name(plugins, tmp_path):
    entry = plugins.models.get("resnet18_imagenet")
    later = tmp_path / "resnet18-0896-77a56f15.pth"
    later.write_bytes(b"pretrained=True from pytorchcv 0.0.74")
    with pytest.raises(ChecksumError) as exc:  # not even as unpinned weights of this teacher
        select_checkpoint(entry, tmp_path, later)
    message = _one_line(exc)
    for part in ("pytorchcv >= 0.0.61", "73.06 %", "not the papers' 71.47 % teacher", "resnet18-0982-0126861b.pth",
                 entry.weights[0].url):
        assert part in message, part
    # sitting in weights/ where the pinned file should be, it is named instead of "no weights"
    (tmp_path / "weights").mkdir()
    later.rename(tmp_path / "weights" / later.name)
    with pytest.raises(ChecksumError, match="73.06 %"):
        select_checkpoint(entry, tmp_path)
    # other teachers do not care what ResNet-18 files are called
    other = plugins.models.get("mobilenet_w1_imagenet")
    assert select_checkpoint(other, tmp_path, tmp_path / "weights" / later.name).tag == "unpinned"


def test_pytorchcvs_later_resnet18_file_is_refused_by_content(plugins, tmp_path):
    """Renamed to the pinned name or passed under any name, the file is known by its sha1 prefix
    (the test makes the prefix match its fake file, as no real file is here)."""
    entry = plugins.models.get("resnet18_imagenet")
    pin = entry.weights[0]
    blob = b"a renamed resnet18-0896-77a56f15.pth"
    trap = dataclasses.replace(pin.refused[0], sha1_prefix=hashlib.sha1(blob).hexdigest()[:8])
    entry = _with_pin(entry, refused=(trap, *pin.refused[1:]))
    renamed = tmp_path / "weights" / pin.filename
    renamed.parent.mkdir()
    renamed.write_bytes(blob)
    with pytest.raises(ChecksumError) as exc:
        _load(entry, tmp_path)
    message = _one_line(exc)
    assert str(renamed) in message and "73.06 %" in message and pin.url in message
    mine = tmp_path / "mine.pth"
    mine.write_bytes(blob)
    with pytest.raises(ChecksumError, match="73.06 %"):
        select_checkpoint(entry, tmp_path, mine)


def test_an_explicit_file_matching_a_sha1_pin_is_that_checkpoint(plugins, teachers, tmp_path):
    entry = plugins.models.get("resnet18_imagenet")
    path = _state_file(tmp_path / "downloaded.pth", teachers["resnet18_imagenet"])
    sha1 = file_digest(path, "sha1")
    assert select_checkpoint(entry, tmp_path, path).tag == "unpinned"  # the real pin: a different file
    entry = _with_pin(entry, sha1=sha1)
    ref = select_checkpoint(entry, tmp_path, path)
    assert (ref.tag, ref.digest) == ("pytorchcv", f"sha1:{sha1}")
    loaded = load_teacher(entry, ref, tmp_path, path)  # strict load of a file without num_batches_tracked
    assert (loaded.weights_tag, loaded.expected_top1) == ("pytorchcv", 71.47)
    assert loaded.normalization == entry.weights[0].normalization
    assert loaded.sha256 == file_digest(path)  # what result.json's teacher record carries
    for a, b in zip(loaded.module.state_dict().values(), teachers["resnet18_imagenet"].state_dict().values()):
        assert torch.equal(a, b)
    # a sha256 pin is never satisfied by a sha1 match
    assert select_checkpoint(_with_pin(entry, sha256="0" * 64), tmp_path, path).tag == "unpinned"


def test_checkpoints_that_do_not_fit_are_one_line_errors(plugins, teachers, tmp_path):
    entry = plugins.models.get("mobilenet_w1_imagenet")
    model = teachers["mobilenet_w1_imagenet"]
    cases = {
        "extra.pth": ({"features.extra.weight": torch.zeros(1)}, None, "1 unexpected"),
        "missing.pth": (None, "output.bias", "1 missing"),
        "resized.pth": ({"output.weight": torch.zeros(10, 1024)}, None, "size mismatch"),
    }
    for file, (extra, drop, expected) in cases.items():
        path = _state_file(tmp_path / file, model, extra, drop)
        with pytest.raises(UserError) as exc:
            _load(entry, tmp_path, path)
        assert expected in _one_line(exc) and str(path) in str(exc.value)


def test_missing_imagenet_weights_say_where_they_come_from(plugins, tmp_path):
    entry = plugins.models.get("resnet50_imagenet")
    with pytest.raises(DataNotFoundError, match="resnet50-0633-b00d1c8e.pth"):
        select_checkpoint(entry, tmp_path, offline=True)
    assert select_checkpoint(entry, tmp_path, offline=False).digest == f"sha1:{entry.weights[0].sha1}"


# ----------------------------------------------------------------------------- the CLI


def test_cli_lists_the_imagenet_teachers(capsys):
    from zsqbench.cli.main import main

    assert main(["plugins", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    models = {r["name"] for r in rows if r["kind"] == "model"}
    assert set(NAMES) <= models


def test_cli_plans_an_imagenet_grid(capsys, tmp_path):
    """`zsqbench run --model resnet18 --dataset imagenet ... --dry-run` plans one trial on the pinned
    checkpoint; until the ImageNet data adapter registers the dataset, it is refused for that alone."""
    from zsqbench.assets.datasets import DATASETS
    from zsqbench.cli.main import main

    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "resnet18-0982-0126861b.pth").write_bytes(b"planned, not loaded")
    argv = ["run", "--model", "resnet18", "--dataset", "imagenet", "--generators", "gdfq", "--loss", "kd",
            "--bits", "4", "--budget", "smoke", "--dry-run", "--json", "--data-root", str(tmp_path),
            "--out", str(tmp_path / "out")]
    code = main(argv)
    captured = capsys.readouterr()
    assert "imagenet" in DATASETS
    assert code == 0, captured.err
    (row,) = json.loads(captured.out)
    assert row["teacher"] == "pytorchcv (sha1 0126861b)" and row["state"] == "pending"


# ----------------------------------------------------------------------------- torchvision's ResNet-18 (§1.5)


def test_torchvision_resnet18_is_a_separate_teacher_with_one_relu_per_site(plugins, image, tmp_path):
    from torchvision.models import resnet18

    entry = plugins.models.get("resnet18_tv_imagenet")
    assert (entry.arch, entry.dataset, entry.classifier, entry.input_size) == ("resnet18_tv", "imagenet", "fc",
                                                                               (3, 224, 224))
    (w,) = entry.weights
    assert (w.tag, w.filename, w.expected_top1, w.sha256, w.sha1, w.sha256_prefix) == (
        "torchvision", "resnet18-f37072fd.pth", 69.758, None, None, "f37072fd")
    torch.manual_seed(0)
    original = resnet18(weights=None).eval()  # never downloads: weights=None
    path = _state_file(tmp_path / "tv.pth", original)
    entry_pinned = _with_pin(entry, sha256_prefix=file_digest(path)[:8])
    ref = select_checkpoint(entry_pinned, tmp_path, path)
    assert (ref.tag, ref.digest) == ("torchvision", f"sha256:{file_digest(path)[:8]}")
    loaded = load_teacher(entry_pinned, ref, tmp_path, path)  # torchvision's keys load strictly
    model = loaded.module.eval()
    acts = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    assert len(acts) == 17 and sum(isinstance(m, nn.Conv2d) for m in model.modules()) == 20
    assert loaded.sha256 == file_digest(path)
    calls = {id(a): 0 for a in acts}
    handles = [a.register_forward_hook(lambda m, i, o: calls.__setitem__(id(m), calls[id(m)] + 1)) for a in acts]
    taps = FeatureTaps(loaded.module, entry.feature_taps["default"] + entry.feature_taps["penultimate"])
    with torch.no_grad(), taps.active():
        out = loaded.module(image)
        maps = taps.take(detach=True)
    for h in handles:
        h.remove()
    with torch.no_grad():
        torch.testing.assert_close(out, original(image))  # the same function as torchvision's network
    assert set(calls.values()) == {1}
    assert [tuple(maps[p].shape[1:]) for p in entry.feature_taps["default"]] == EXPECTED["resnet18_imagenet"]["shapes"]
    assert tuple(maps["avgpool"].shape[1:]) == (512, 1, 1)

    cls = plugins.quantizers.get("uniform")
    student = cls(cls.Options()).quantize(copy.deepcopy(loaded.module), 4, 4)
    assert sum(isinstance(m, QuantAct) for m in student.modules()) == 17  # not 9 shared ones
    assert sum(isinstance(m, (QuantConv2d, QuantLinear)) for m in student.modules()) == 21

    # a file under the pinned name whose sha256 does not start with the name's prefix is refused
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / w.filename).write_bytes(path.read_bytes())
    with pytest.raises(ChecksumError) as exc:
        _load(entry, tmp_path)
    assert "expected one starting f37072fd" in _one_line(exc)


# ----------------------------------------------------------------------------- labelled placements (§2)


def test_linear_bottleneck_outputs_can_be_quantized_as_a_labelled_option(teachers):
    from zsqbench.errors import UserError
    from zsqbench_plugins.quantizers.uniform import UniformOptions, UniformQuantizer

    assert "quantize_outputs" not in UniformOptions().model_dump()  # the default keeps trial ids
    teacher = teachers["mobilenetv2_w1_imagenet"]
    options = UniformOptions(quantize_outputs=("features.stage*.unit*.conv3",))
    student = UniformQuantizer(options).quantize(copy.deepcopy(teacher), 4, 4)
    outputs = [m for p, m in student.named_modules() if p.endswith(".output_quant")]
    assert len(outputs) == 17  # one per linear bottleneck, beside the 36 ReLU6 quantizers
    assert sum(isinstance(m, QuantAct) for m in student.modules()) == 36 + 17
    assert set(teacher.state_dict()) <= set(student.state_dict())  # FP names kept
    seen = {}
    unit = dict(student.named_modules())["features.stage2.unit1.conv3"]
    unit.register_forward_hook(lambda m, i, o: seen.setdefault("out", o))
    with torch.no_grad():
        student(torch.randn(2, 3, 224, 224))  # calibrating: ranges tracked
        UniformQuantizer(options).set_calibrating(student, False)
        seen.clear()
        student(torch.randn(2, 3, 224, 224))
    assert seen["out"].unique().numel() <= 2**4  # the bottleneck output is on a 4-bit grid
    with pytest.raises(UserError, match="match no module"):
        UniformQuantizer(UniformOptions(quantize_outputs=("features.nowhere",))).quantize(copy.deepcopy(teacher), 4, 4)
