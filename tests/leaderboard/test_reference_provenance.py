"""Every shipped published number carries its provenance (references.PROVENANCE): paper and table,
own / re-implementation / reported, metric, spread and seeds where stated, FP teacher, profile; the
new tables (SynQ's Table 1, HAST's own numbers) hold what the specifications state."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from zsqbench.cli.main import main
from zsqbench.leaderboard.references import METRICS, ORIGINS, PROVENANCE, REFERENCES, reference_path
from zsqbench.leaderboard.table import read_table
from zsqbench_plugins.quantizers.profiles import PROFILES


@pytest.mark.parametrize("name", list(REFERENCES))
def test_every_published_number_has_its_provenance(name):
    frame, kind = read_table(reference_path(name))
    assert kind == "aggregated" and len(frame) and (frame["source"] == "reference").all()
    missing = [c for c in PROVENANCE if c not in frame.columns]
    assert not missing, missing
    assert set(frame["metric"]) <= set(METRICS) and set(frame["origin"]) <= set(ORIGINS)
    assert set(frame["profile"]) <= set(PROFILES) | {"unknown"}
    assert frame["paper"].notna().all() and frame["method"].notna().all()
    assert frame["top1_last_mean"].between(0, 100).all()
    stated = frame["spread"].notna()
    assert (frame.loc[stated, "spread"] > 0).all()
    # a spread over several runs is what the row's n_seeds and std say too (what compare reads)
    over = frame["spread_seeds"].notna()
    assert (frame.loc[over, "n_seeds"] == frame.loc[over, "spread_seeds"]).all()
    assert (frame.loc[over, "top1_last_std"] == frame.loc[over, "spread"]).all()
    assert not frame.duplicated(["model", "dataset", "generator", "loss", "w_bits", "a_bits"]).any()


def _row(name: str, **key) -> pd.Series:
    frame, _ = read_table(reference_path(name))
    mask = pd.Series(True, index=frame.index)
    for column, value in key.items():
        mask &= frame[column] == value
    (index,) = frame.index[mask]
    return frame.loc[index]


def test_synq_table_1_holds_its_own_rows_with_spreads_and_the_competitors_as_it_reports_them():
    frame, _ = read_table(reference_path("synq"))
    assert len(frame) == 93  # 11 methods x 10 columns less the 17 dashes
    own = frame[frame["generator"] == "synq"]
    assert len(own) == 10 and (own["origin"] == "own").all() and (own["spread_seeds"] == 5).all()
    assert (own["profile"] == "zsq-asym-pc").all() and (own["metric"] == "best-epoch").all()
    r18 = _row("synq", generator="synq", model="resnet18", w_bits=3)
    assert (r18["top1_last_mean"], r18["spread"], r18["fp_top1"]) == (52.02, 0.34, 71.47)
    hast = _row("synq", generator="hast", model="resnet20_cifar10", w_bits=3)
    assert hast["top1_last_mean"] == 86.34 and hast["origin"] == "reported" and math.isnan(hast["spread"])
    texq = _row("synq", generator="texq", model="resnet50", w_bits=3)
    assert texq["top1_last_mean"] == 25.27 and texq["profile"] == "unknown" and texq["metric"] == "unknown"
    plf = frame[frame["generator"] == "plf"]
    assert sorted(plf["top1_last_mean"]) == [57.03, 66.94, 67.02, 68.97, 88.04, 92.47]


def test_the_akt_tables_keep_their_numbers_and_say_which_are_re_implementations():
    gdfq = _row("akt", generator="gdfq", loss="kd", dataset="cifar10", w_bits=3)
    assert gdfq["top1_last_mean"] == 72.23 and gdfq["origin"] == "re-implementation" and gdfq["table"] == "Table 2"
    assert _row("akt", generator="gdfq", loss="kd", dataset="cifar10", w_bits=4)["origin"] == "reported"
    assert _row("akt", generator="adadfq", loss="akt", dataset="cifar10", w_bits=3)["origin"] == "own"
    assert _row("published", generator="hast", dataset="cifar100", w_bits=3)["table"] == "Table 3"
    zeroq = _row("published", generator="zeroq", dataset="cifar10", w_bits=4)
    assert zeroq["profile"] == "unknown" and "protocol unknown, other checkpoint" in zeroq["note"]


def test_hasts_own_numbers_are_its_own_and_say_where_they_were_transcribed_from():
    frame, _ = read_table(reference_path("hast"))
    assert sorted(frame["top1_last_mean"]) == [51.15, 88.34]
    assert (frame["origin"] == "own").all() and frame["note"].str.contains("issue 28").all()


@pytest.mark.parametrize("name", ["synq", "hast"])
def test_the_new_tables_show_as_leaderboards(capsys, name):
    assert main(["leaderboard", f"paper:{name}", "--json"]) == 0
    assert "pub." not in capsys.readouterr().err
