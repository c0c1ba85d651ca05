"""Rows from different machine kinds are said to be so: the per-trial ``machine`` column (the
result's ``machine.kind``, else its device), the aggregated ``machines``, and a note in every view."""

from __future__ import annotations

import pandas as pd
from support.leaderboard import fake_result, trial_row, write_trials

from zsqbench.cli.main import main
from zsqbench.leaderboard.aggregate import aggregate
from zsqbench.leaderboard.rows import result_row
from zsqbench.leaderboard.schema import machine_kinds
from zsqbench.leaderboard.table import read_table

AMD, INTEL = "AMD EPYC 7B13 (AVX512)", "Intel(R) Xeon(R) Processor (AVX512)"


def test_the_machine_kind_comes_from_the_result_or_its_device():
    result = fake_result("a" * 16)
    assert result_row(result)["machine"] == "cpu (x86_64, 2 threads)"  # recorded before machine kinds
    result["machine"] = {"kind": INTEL, "cpu": "Intel(R) Xeon(R) Processor", "cpu_capability": "AVX512"}
    assert result_row(result)["machine"] == INTEL


def test_rows_of_two_machine_kinds_bring_a_note(tmp_path, capsys):
    rows = [trial_row(seed=0, machine=AMD), trial_row(seed=1, top1_last=72.0, machine=INTEL)]
    path = write_trials(tmp_path / "trials.csv", rows)
    frame, _ = read_table(path)
    assert machine_kinds(frame) == [AMD, INTEL]
    assert aggregate(frame)["machines"].tolist() == [f"{AMD};{INTEL}"]
    for flags in ([], ["--per-trial"], ["--pivot"]):
        assert main(["leaderboard", str(path), *flags]) == 0
        out = " ".join(capsys.readouterr().out.split())
        assert "ran on 2 machine kinds" in out and AMD in out, flags


def test_one_machine_kind_and_old_tables_bring_none(tmp_path, capsys):
    path = write_trials(tmp_path / "old.csv", [trial_row(seed=0), trial_row(seed=1)])
    frame, _ = read_table(path)
    assert machine_kinds(frame) == ["cpu (x86_64, 2 threads)"]  # the device, as old tables say it
    assert main(["leaderboard", str(path)]) == 0
    assert "machine kinds" not in capsys.readouterr().out
    assert machine_kinds(pd.DataFrame({"device": ["cpu", "NVIDIA H100"]})) == ["NVIDIA H100", "cpu"]
