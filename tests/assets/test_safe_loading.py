"""Nothing zsqbench reads from a data root or a results folder may run code."""

from __future__ import annotations

import io
import json
import pickle
import random

import numpy as np
import pytest
import torch
from conftest import make_spec, one_line_error, run_argv
from support.leaderboard import fake_result
from support.pickles import RunsCode

from zsqbench.cli.main import main
from zsqbench.errors import UserError
from zsqbench.runs import checkpoint
from zsqbench.runs.folder import TrialFolder


def _args(root, weights, out, *extra):
    return run_argv(root, weights, out, "--generators", "gdfq", "--loss", "kd", "--bits", "4", "--budget", "smoke",
                    *extra)


def test_a_checkpoint_that_would_run_code_is_refused_in_one_line(tiny, tmp_path, capsys):
    root, weights = tiny
    out = tmp_path / "out"
    assert main(_args(root, weights, out, "--dry-run", "--json")) == 0
    (trial_id,) = [r["trial_id"] for r in json.loads(capsys.readouterr().out)]
    folder = TrialFolder.of(out, "default", trial_id)
    folder.path.mkdir(parents=True)
    folder.write_spec(make_spec())  # any spec: the checkpoint is read first
    marker = tmp_path / "pwned"
    buf = io.BytesIO()
    torch.save({"format": checkpoint.FORMAT, "epoch": 0, "trial_id": trial_id, "rng": RunsCode(marker)}, buf)
    folder.file(folder.CHECKPOINT).write_bytes(buf.getvalue())

    err = one_line_error(capsys, _args(root, weights, out))
    assert "holds more than tensors and plain values" in err and "posix.system" in err
    assert "delete it to restart that trial" in err
    assert not marker.exists()
    with pytest.raises(UserError):
        folder.load_checkpoint(trial_id)
    assert not marker.exists()


def test_a_test_batch_that_would_run_code_is_refused_in_one_line(tiny, tmp_path, capsys):
    root, weights = tiny
    marker = tmp_path / "pwned"
    batch = root / "cifar-10-batches-py" / "test_batch"
    batch.write_bytes(pickle.dumps({"data": RunsCode(marker), "labels": [0]}, protocol=2))
    err = one_line_error(capsys, _args(root, weights, tmp_path / "out"))
    assert f"{batch} is not a plain CIFAR pickle: it asks to import posix.system" in err
    assert not marker.exists()


def test_the_cifar_layout_pickles_still_load(tmp_path):
    """Protocol 2 with Python 3 bytes (``_codecs.encode``) and protocol 5 (``_frombuffer``) both pass."""
    from zsqbench.assets.data import load_test_set

    for protocol in (2, 5):
        root = tmp_path / f"p{protocol}"
        data = np.arange(2 * 3072, dtype=np.uint8).reshape(2, 3072)
        payload = {b"batch_label": b"testing batch 1 of 1", "labels": [1, 2], "data": data,
                   "filenames": [b"a.png", b"b.png"]}
        path = root / "cifar-10-batches-py" / "test_batch"
        path.parent.mkdir(parents=True)
        path.write_bytes(pickle.dumps(payload, protocol=protocol))
        test = load_test_set("cifar10", root)
        assert test.labels.tolist() == [1, 2] and test.images.flatten()[:3].tolist() == [0, 1, 2]


def test_checkpoints_hold_only_what_weights_only_loading_accepts(tmp_path):
    """Including the RNG streams, restored exactly; checkpoints of the first format still load."""
    np.random.seed(3)
    random.seed(3)
    torch.manual_seed(3)
    state = {"trial_id": "t", "epoch": 0, "rng": checkpoint.rng_state()}
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(checkpoint.encode(state))
    expected = (np.random.rand(3), random.random(), torch.rand(3))
    checkpoint.set_rng_state(checkpoint.decode(path, "t")["rng"])
    again = (np.random.rand(3), random.random(), torch.rand(3))
    assert np.array_equal(expected[0], again[0]) and expected[1] == again[1] and torch.equal(expected[2], again[2])

    old = {"format": 1, "trial_id": "t", "epoch": 0, "rng": {"numpy": np.random.get_state(), "python": random.getstate(),
                                                              "torch": torch.get_rng_state()}}
    torch.save(old, path)
    numpy_state = checkpoint.decode(path, "t")["rng"]["numpy"]
    assert numpy_state[0] == "MT19937" and np.array_equal(numpy_state[1], old["rng"]["numpy"][1])


def test_a_result_file_missing_fields_is_a_one_line_error(tmp_path, capsys):
    result = fake_result("abc")
    del result["spec"]["budget"]["epochs"]
    path = tmp_path / "run1" / "abc" / "result.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(result))
    err = one_line_error(capsys, ["leaderboard", str(tmp_path)])
    assert f"corrupt result file {path} (spec.budget.epochs: Field required)" in err
