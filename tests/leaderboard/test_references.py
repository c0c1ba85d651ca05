"""The published reference tables shipped as package data: what they hold, and the Table 3 layout."""

from __future__ import annotations

import json

from conftest import one_line_error

from zsqbench.cli.main import main
from zsqbench.leaderboard.references import reference_path
from zsqbench.leaderboard.table import read_table

TABLE_3_METHODS = {("gdfq", "kd"), ("gdfq", "ait"), ("qimera", "ait"), ("hast", "kd"), ("adadfq", "kd"),
                   ("texq", "kd"), ("ris", "kd"), ("adadfq", "akt")}


def test_published_table_holds_table_3_and_the_compared_methods_with_sources():
    frame, kind = read_table(reference_path("published"))
    assert kind == "aggregated"
    methods = set(zip(frame["generator"], frame["loss"]))
    assert TABLE_3_METHODS | {("qimera", "kd"), ("zeroq", "kd"), ("intraq", "kd")} == methods
    assert (frame["source"] == "reference").all() and frame["note"].str.len().gt(20).all()
    # one row per cell (the pivot refuses duplicates) and the AKT paper's numbers where it has them
    assert not frame.duplicated(["generator", "loss", "dataset", "w_bits"]).any()
    row = frame[(frame.generator == "texq") & (frame.dataset == "cifar100") & (frame.w_bits == 3)]
    assert row["top1_last_mean"].tolist() == [55.87] and "no public code" in row["note"].item()


def test_pivot_by_method_lays_out_table_3(capsys):
    assert main(["leaderboard", "paper:published", "--pivot", "methods", "--json"]) == 0
    rows = {r["method"]: r for r in json.loads(capsys.readouterr().out)}
    # a published number is one best-epoch value, not a mean over seeds: "pub.", not "(1)"
    assert rows["adadfq+akt"]["cifar10 paper W3A3"] == "86.76 (pub.)"
    assert rows["ris+kd"]["cifar10 paper W3A3"] == "" and rows["ris+kd"]["cifar100 paper W5A5"] == "69.55 (pub.)"
    assert list(rows["gdfq+kd"]) == ["method", *(f"{d} paper W{b}A{b}" for d in ("cifar10", "cifar100")
                                                 for b in (3, 4, 5))]


def test_an_unknown_reference_is_one_line(capsys):
    err = one_line_error(capsys, ["leaderboard", "paper:nope"])
    assert "paper:akt" in err and "paper:published" in err
