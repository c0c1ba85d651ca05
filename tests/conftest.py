"""Shared fixtures: loaded plugins, tiny trial parts on a randomly initialized ResNet-20,
and the real data root (tests that need it are marked ``realdata`` and skip without it).

Tests run offline (``ZSQBENCH_OFFLINE=1``): nothing is downloaded, a missing file is an error."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from support.data import one_thread as single_thread

from zsqbench.api.plugins import build_plugins
from zsqbench.testing import make_parts, make_spec  # noqa: F401  (the tests import them from here too)

os.environ.setdefault("ZSQBENCH_OFFLINE", "1")
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def plugins():
    return build_plugins()


@pytest.fixture
def tiny_parts(plugins, tmp_path):
    """Factory: ``tiny_parts(make_spec(...))`` -> TrialParts on CPU."""
    return lambda spec, seed=0: make_parts(plugins, spec, tmp_path / "cache", seed)


@pytest.fixture(scope="session")
def data_root() -> Path:
    root = os.environ.get("ZSQBENCH_DATA")
    if not root or not (Path(root) / "cifar-10-batches-py" / "test_batch").is_file():
        pytest.skip("ZSQBENCH_DATA does not point at a folder with the CIFAR-10 test set and weights/")
    return Path(root)


@pytest.fixture
def one_thread():
    """Batches of 4 gain nothing from a second thread, and OpenMP's barriers stall badly
    (100x here) when another process keeps the cores busy."""
    with single_thread():
        yield


@pytest.fixture
def tiny(tmp_path, plugins) -> tuple[Path, Path]:
    """A 24-image CIFAR-10 test set and a random-init ResNet-20 checkpoint: (data root, weights)."""
    from support.data import write_random_weights, write_test_set

    root = tmp_path / "data"
    write_test_set(root, "cifar10", n=24)
    weights = write_random_weights(tmp_path / "teacher.pth", plugins.models.get("resnet20_cifar10").build())
    return root, weights


def run_argv(root: Path, weights: Path, out: Path, *extra: str) -> list[str]:
    """`zsqbench run` on the ``tiny`` data and teacher into ``out``, on CPU, quietly."""
    return ["run", "--data-root", str(root), "--teacher-weights", str(weights), "--out", str(out),
            "--device", "cpu", "-q", *extra]


class CountingCalls:
    """Replaces ``module.name`` by a wrapper that counts its calls and, at call ``fail_at``, raises
    KeyboardInterrupt (an interrupted synthesis); otherwise calls the real function."""

    def __init__(self, monkeypatch, module, name: str, fail_at: int | None = None) -> None:
        self.calls = 0
        self.fail_at = fail_at
        self.real = getattr(module, name)
        monkeypatch.setattr(module, name, self)

    def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.fail_at is not None and self.calls == self.fail_at:
            raise KeyboardInterrupt("interrupted synthesis")
        return self.real(*args, **kwargs)


def one_line_error(capsys, argv: list[str]) -> str:
    """Run the CLI expecting a user error: exit 2, exactly one 'zsqbench: error:' line, no traceback."""
    from zsqbench.cli.main import main

    code = main(argv)
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("zsqbench: error:"), err
    assert "Traceback" not in err + captured.out
    return err
