"""Test sets and FP accuracies shared by the trials of one process, each loaded or measured once.

The inputs are a lazy, normalized view of the uint8 images (normalized per evaluation batch), so
nothing the size of the test set in float32 is ever held."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from zsqbench.assets.data import load_test_set
from zsqbench.assets.teachers import LoadedTeacher
from zsqbench.assets.test_set import NormalizedImages, TestSet
from zsqbench.progress import ProgressSink
from zsqbench.runs.environment import Environment
from zsqbench.trial.evaluate import top1


class TrialResources:
    def __init__(self) -> None:
        self._test_sets: dict[tuple[str, Path], TestSet] = {}
        self._inputs: dict[tuple, NormalizedImages] = {}
        self._fp_top1: dict[tuple, float] = {}

    def test_set(self, name: str, env: Environment, progress: ProgressSink | None = None) -> TestSet:
        key = (name, env.data_root)
        if key not in self._test_sets:
            self._test_sets[key] = load_test_set(name, env.data_root, offline=env.offline, progress=progress,
                                                     cache_dir=env.cache_dir)
        return self._test_sets[key]

    def inputs(self, test: TestSet, teacher: LoadedTeacher) -> NormalizedImages:
        key = (test.sha256, teacher.normalization)
        if key not in self._inputs:
            self._inputs[key] = test.inputs(teacher.normalization)
        return self._inputs[key]

    def fp_top1(self, test: TestSet, teacher: LoadedTeacher, model: nn.Module, env: Environment) -> float:
        key = (test.sha256, teacher.sha256, str(env.device))
        if key not in self._fp_top1:
            self._fp_top1[key] = top1(model, self.inputs(test, teacher), test.labels, env.device, env.eval_batch_size)
        return self._fp_top1[key]
