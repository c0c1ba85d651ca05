"""Test sets and FP accuracies shared by the trials of one process, each loaded or measured once."""

from __future__ import annotations

from pathlib import Path

from torch import Tensor, nn

from zsqbench.trial.data import TestSet, load_test_set
from zsqbench.trial.environment import Environment
from zsqbench.trial.evaluate import top1
from zsqbench.trial.progress import ProgressSink
from zsqbench.trial.teachers import LoadedTeacher


class TrialResources:
    def __init__(self) -> None:
        self._test_sets: dict[tuple[str, Path], TestSet] = {}
        self._inputs: dict[tuple, Tensor] = {}
        self._fp_top1: dict[tuple, float] = {}

    def test_set(self, name: str, env: Environment, progress: ProgressSink | None = None) -> TestSet:
        key = (name, env.data_root)
        if key not in self._test_sets:
            self._test_sets[key] = load_test_set(name, env.data_root, offline=env.offline, progress=progress)
        return self._test_sets[key]

    def inputs(self, test: TestSet, teacher: LoadedTeacher) -> Tensor:
        key = (test.sha256, teacher.normalization)
        if key not in self._inputs:
            self._inputs[key] = test.normalized(teacher.normalization)
        return self._inputs[key]

    def fp_top1(self, test: TestSet, teacher: LoadedTeacher, model: nn.Module, env: Environment) -> float:
        key = (test.sha256, teacher.sha256, str(env.device))
        if key not in self._fp_top1:
            self._fp_top1[key] = top1(model, self.inputs(test, teacher), test.labels, env.device, env.eval_batch_size)
        return self._fp_top1[key]
