"""Issue 16's acceptance runs: ImageNet grids from the command line, end to end, on the tiny
ImageFolder fixture with random-init teachers at 224 px and batch 2 (budget ``in1k-smoke``)."""

from __future__ import annotations

import csv

import pytest
import torch
from support.data import write_random_weights
from support.imagenet import write_imagefolder

from zsqbench.api.plugins import get_plugins

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]


def _run(tmp_path, arch: str, *grids: tuple[str, str]) -> list[dict[str, str]]:
    """Each (generators, losses) grid run into one results folder; its leaderboard's rows."""
    from zsqbench.cli.main import main

    root = tmp_path / "data"
    write_imagefolder(root / "val")
    entry = get_plugins().models.get(f"{arch}_imagenet")
    weights = write_random_weights(tmp_path / f"{arch}-random.pth", entry.build())
    out = tmp_path / "results"
    for generators, losses in grids:
        code = main(["run", "--model", arch, "--dataset", "imagenet", "--generators", generators, "--loss", losses,
                     "--bits", "4", "--budget", "in1k-smoke", "--teacher-weights", str(weights),
                     "--data-root", str(root), "--cache-dir", str(tmp_path / "cache"), "--out", str(out),
                     "--device", "cpu", "--offline", "-q"])
        assert code == 0
    with (out / "leaderboard.csv").open() as f:
        return list(csv.DictReader(f))


def test_a_resnet18_imagenet_grid_runs_each_generator_and_loss(tmp_path):
    """GDFQ's and AdaDFQ's online generators and HAST's, each at 224 px; KD and AKT's feature terms on
    ResNet-18's taps. (Every pair was run here once: 143 s of CI for the same code paths as these three.)"""
    rows = _run(tmp_path, "resnet18", ("gdfq", "kd"), ("adadfq,hast", "akt"))
    assert sorted((r["generator"], r["loss"]) for r in rows) == [("adadfq", "akt"), ("gdfq", "kd"), ("hast", "akt")]
    for r in rows:
        assert r["model"] == "resnet18_imagenet" and r["dataset"] == "imagenet" and (r["w_bits"], r["a_bits"]) == ("4", "4")
        assert 0.0 <= float(r["top1_last"]) <= 100.0


@pytest.mark.parametrize("arch", ["mobilenetv2_w1", "resnet50"])
def test_mobilenetv2_and_resnet50_run_gdfq_with_kd(tmp_path, arch):
    (row,) = _run(tmp_path, arch, ("gdfq", "kd"))
    assert row["model"] == f"{arch}_imagenet" and torch.isfinite(torch.tensor(float(row["top1_last"])))


@pytest.mark.parametrize("arch", ["resnet18", "mobilenetv2_w1"])
def test_synq_runs_on_resnet18_and_mobilenetv2(tmp_path, arch):
    """SynQ's CAM layer on MobileNetV2 is its final-block conv (tests/plugins/test_synq_imagenet.py)."""
    (row,) = _run(tmp_path, arch, ("synq", "kd"))
    assert (row["generator"], row["model"]) == ("synq", f"{arch}_imagenet")
    assert torch.isfinite(torch.tensor(float(row["top1_last"])))
