"""Aggregation over seeds, the leaderboard views, and strict reading of leaderboard CSVs."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pandas as pd
import pytest
from conftest import one_line_error
from support.leaderboard import SHA_A, SHA_B, snapshot, trial_row, write_trials

from zsqbench.cli.main import main
from zsqbench.errors import UserError
from zsqbench.leaderboard.aggregate import aggregate
from zsqbench.leaderboard.schema import AGGREGATED, KEY_COLUMNS, PER_TRIAL, documented
from zsqbench.leaderboard.table import read_table


def _json(capsys, argv: list[str]):
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


@pytest.fixture
def grid_csv(tmp_path) -> Path:
    """gdfq+kd W3A3 with 3 seeds (one on a GPU), gdfq+akt W3A3 with 1 seed, and two non-done trials."""
    rows = [
        trial_row(seed=0, top1_last=70.0, top1_oracle=71.0, ptq_top1=10.0, wall_s=3600.0),
        trial_row(seed=1, top1_last=71.0, top1_oracle=72.5, ptq_top1=11.0, wall_s=1800.0),
        trial_row(seed=2, top1_last=73.0, top1_oracle=73.0, ptq_top1=12.0, wall_s=7200.0, device="NVIDIA H100 80GB HBM3"),
        trial_row(loss="akt", seed=0, top1_last=72.5),
        trial_row(loss="akt", seed=1, top1_last=99.0, status="failed"),
        trial_row(loss="akt", seed=2, top1_last=1.0, status="diverged"),
        trial_row(loss="akt", seed=3, top1_last=None, top1_oracle=None, status="failed"),  # no accuracy at all
    ]
    for r in rows:
        r.setdefault("status", "done")
    return write_trials(tmp_path / "results" / "leaderboard.csv", rows)


def test_aggregate_numbers_match_a_hand_computation(capsys, grid_csv):
    rows = _json(capsys, ["leaderboard", str(grid_csv), "--json"])
    assert [list(r) for r in rows] == [list(AGGREGATED)] * 2
    akt, kd = rows  # sorted by key: akt before kd
    assert (kd["generator"], kd["loss"], kd["w_bits"], kd["a_bits"], kd["budget"]) == ("gdfq", "kd", 3, 3, "cpu")
    assert kd["n_seeds"] == 3 and kd["seeds"] == "0;1;2"
    mean = (70.0 + 71.0 + 73.0) / 3
    std = math.sqrt(((70.0 - mean) ** 2 + (71.0 - mean) ** 2 + (73.0 - mean) ** 2) / 2)  # ddof=1
    assert kd["top1_last_mean"] == pytest.approx(mean, abs=1e-4)
    assert kd["top1_last_std"] == pytest.approx(std, abs=1e-4) and std == pytest.approx(1.527525, abs=1e-6)
    assert kd["top1_oracle_mean"] == pytest.approx((71.0 + 72.5 + 73.0) / 3, abs=1e-4)
    assert kd["ptq_top1_mean"] == pytest.approx(11.0)
    assert kd["fp_top1"] == pytest.approx(92.6)
    assert (kd["epochs"], kd["iters_per_epoch"], kd["batch_size"]) == (8, 100, 64)
    assert kd["teacher_sha256"] == SHA_A
    assert kd["cpu_hours"] == pytest.approx(1.5) and kd["gpu_hours"] == pytest.approx(2.0)
    assert kd["source"] == "zsqbench"
    # One seed: no spread, and the failed / diverged trials never entered.
    assert akt["n_seeds"] == 1 and akt["seeds"] == "0"
    assert akt["top1_last_mean"] == 72.5 and akt["top1_last_std"] is None


def test_aggregated_csv_round_trips_and_leaves_std_empty_for_one_seed(capsys, grid_csv, tmp_path):
    out = tmp_path / "agg.csv"
    assert main(["leaderboard", str(grid_csv), "--csv", str(out)]) == 0
    lines = out.read_text().splitlines()
    assert lines[0].split(",") == list(AGGREGATED)
    frame, kind = read_table(out)
    assert kind == "aggregated" and len(frame) == 2
    akt = frame[frame["loss"] == "akt"].iloc[0]
    assert pd.isna(akt["top1_last_std"]) and akt["epochs"] == 8  # written as 8, not 8.0
    assert ",8,100,64," in lines[1]
    assert not list(tmp_path.glob(".agg.csv.*"))  # no temporary left behind by the atomic write


def test_per_trial_view_keeps_done_trials_only(capsys, grid_csv):
    rows = _json(capsys, ["leaderboard", str(grid_csv), "--per-trial", "--json"])
    assert len(rows) == 4 and {r["loss"] for r in rows} == {"kd", "akt"}
    assert all(r["top1_last"] not in (99.0, 1.0) for r in rows)


def test_table_and_markdown_show_mean_and_std(capsys, grid_csv, tmp_path):
    md = tmp_path / "board.md"
    assert main(["leaderboard", str(grid_csv), "--markdown", str(md)]) == 0
    assert "configurations" in capsys.readouterr().out  # the terminal table's title
    text = md.read_text()
    assert "| 71.33 ± 1.53 |" in text and "| 72.50 |" in text
    assert "oracle" in text


def test_pivot_has_the_paper_layout(capsys, tmp_path):
    rows = [trial_row(g, loss, bits, seed, 60.0 + bits + seed + (1.0 if loss == "akt" else 0.0), dataset=ds)
            for ds in ("cifar10", "cifar100") for g in ("hast", "gdfq") for loss in ("akt", "kd")
            for bits in (3, 4) for seed in (0, 1)]
    rows = [r for r in rows if not (r["dataset"] == "cifar100" and r["generator"] == "hast" and r["loss"] == "akt")]
    path = write_trials(tmp_path / "lb.csv", rows)
    table = _json(capsys, ["leaderboard", str(path), "--pivot", "--json"])
    assert list(table[0]) == ["dataset", "budget", "bits", "gdfq+kd", "gdfq+akt", "hast+kd", "hast+akt"]
    assert [(r["dataset"], r["budget"], r["bits"]) for r in table] == [
        ("cifar10", "cpu", "W3A3"), ("cifar10", "cpu", "W4A4"), ("cifar100", "cpu", "W3A3"), ("cifar100", "cpu", "W4A4")]
    # seeds 0 and 1 give 63, 64 (kd, 3 bits): mean 63.5, sample std sqrt(0.5) = 0.71
    assert table[0]["gdfq+kd"] == "63.50 ± 0.71 (2)"
    assert table[1]["hast+akt"] == "65.50 ± 0.71 (2)"
    assert table[2]["hast+akt"] == ""  # a cell without trials stays empty
    out = tmp_path / "pivot.csv"
    assert main(["leaderboard", str(path), "--pivot", "--csv", str(out)]) == 0
    assert out.read_text().splitlines()[0] == "dataset,budget,bits,gdfq+kd,gdfq+akt,hast+kd,hast+akt"


def test_pivot_always_shows_the_budget_so_a_smoke_cell_never_sits_unmarked_beside_a_trained_one(capsys, tmp_path):
    rows = [trial_row(seed=0, top1_last=70.0), trial_row(seed=0, top1_last=80.0, budget="paper", epochs=400)]
    table = _json(capsys, ["leaderboard", str(write_trials(tmp_path / "lb.csv", rows)), "--pivot", "--json"])
    assert [(r["budget"], r["gdfq+kd"]) for r in table] == [("cpu", "70.00 (1)"), ("paper", "80.00 (1)")]
    # Different cells of one row used to share a line whatever their budgets: now each budget is its own row.
    rows = [trial_row(seed=0, top1_last=54.61), trial_row("adadfq", "akt", seed=0, top1_last=10.0, budget="smoke")]
    path = write_trials(tmp_path / "mixed.csv", rows)
    table = _json(capsys, ["leaderboard", str(path), "--pivot", "--json"])
    assert [(r["budget"], r["gdfq+kd"], r["adadfq+akt"]) for r in table] == [
        ("cpu", "54.61 (1)", ""), ("smoke", "", "10.00 (1) at chance")]
    assert main(["leaderboard", str(path), "--pivot"]) == 0
    assert "smoke numbers are plumbing checks" in capsys.readouterr().out


def test_run_filter(capsys, tmp_path):
    rows = [trial_row(seed=0, top1_last=70.0), trial_row(seed=0, top1_last=80.0, run="run2", trial_id="x" * 16)]
    path = write_trials(tmp_path / "lb.csv", rows)
    assert one_line_error(capsys, ["leaderboard", str(path)]).count("share seed 0")
    (row,) = _json(capsys, ["leaderboard", str(path), "--run", "run2", "--json"])
    assert row["top1_last_mean"] == 80.0
    assert "no trials of run(s) ['run9']" in one_line_error(capsys, ["leaderboard", str(path), "--run", "run9"])


def test_different_teachers_in_one_key_are_refused_naming_the_trials(capsys, tmp_path):
    rows = [trial_row(seed=0), trial_row(seed=1, teacher_sha256=SHA_B)]
    path = write_trials(tmp_path / "lb.csv", rows)
    before = snapshot(tmp_path)
    err = one_line_error(capsys, ["leaderboard", str(path), "--csv", str(tmp_path / "agg.csv")])
    assert "different teacher weights" in err and "c1757f29" in err and "9b0024ac" in err
    assert rows[0]["trial_id"][:12] in err and rows[1]["trial_id"][:12] in err
    assert snapshot(tmp_path) == before


def test_different_precisions_in_one_key_are_refused_other_compute_settings_not(capsys, tmp_path):
    rows = [trial_row(seed=0, precision="fp32"), trial_row(seed=1, precision="bf16")]
    path = write_trials(tmp_path / "lb.csv", rows)
    err = one_line_error(capsys, ["leaderboard", str(path)])
    assert "different precisions" in err and "bf16 in trials" in err and "fp32 in trials" in err
    # memory format (rounding only) and pre-column results (empty = fp32) aggregate together
    rows = [trial_row(seed=0, precision=None, channels_last=False), trial_row(seed=1, precision="fp32")]
    (row,) = _json(capsys, ["leaderboard", str(write_trials(tmp_path / "ok.csv", rows)), "--json"])
    assert row["n_seeds"] == 2 and row["precision"] == "fp32"


def test_different_student_recipes_in_one_key_are_refused_and_a_table_without_them_still_aggregates(capsys, tmp_path):
    """Seed 0 at lr 1e-6 and seed 1 at lr 1e-4 under one budget name used to be averaged silently."""
    rows = [trial_row(seed=0, recipe="lr 1e-6, 8000·KL_bm", trial_id="a" * 16),
            trial_row(seed=1, recipe="lr 1e-4, 400·KL_mean + CE", trial_id="b" * 16),
            trial_row(seed=2, recipe=None, trial_id="c" * 16)]
    err = one_line_error(capsys, ["leaderboard", str(write_trials(tmp_path / "lb.csv", rows))])
    assert "different recipes" in err and f"'lr 1e-6, 8000·KL_bm' in trials {'a' * 12}" in err
    assert f"'lr 1e-4, 400·KL_mean + CE' in trials {'b' * 12}" in err and "c" * 12 not in err  # a trial without a recipe is not named in either group
    # a table from before the column (no recipe) beside a trial that names one: nothing to compare
    rows = [trial_row(seed=0, recipe=None), trial_row(seed=1, recipe="lr 1e-6, 8000·KL_bm")]
    (row,) = _json(capsys, ["leaderboard", str(write_trials(tmp_path / "ok.csv", rows)), "--json"])
    assert row["n_seeds"] == 2 and row["recipe"] == "lr 1e-6, 8000·KL_bm"
    agg = tmp_path / "agg.csv"
    assert main(["leaderboard", str(tmp_path / "ok.csv"), "--csv", str(agg)]) == 0
    assert read_table(agg)[0]["recipe"].tolist() == ["lr 1e-6, 8000·KL_bm"]


def test_leaderboards_from_before_the_compute_columns_are_read_through_their_label(capsys, tmp_path):
    """A per-trial CSV of the older format (one 'compute' label) still aggregates: the label is turned
    into the columns once, on reading, and a bf16 trial is still kept apart from an fp32 one."""
    rows = []
    for seed, label in ((0, "fp32,channels-last"), (1, "")):
        row = trial_row(seed=seed)
        for col in ("precision", "channels_last", "compile", "tf32"):
            del row[col]
        rows.append({**row, "compute": label})
    path = write_trials(tmp_path / "old.csv", rows, columns=list(rows[0]))
    frame, kind = read_table(path)
    assert kind == "per-trial" and "compute" not in frame.columns
    assert frame["precision"].tolist() == ["fp32", "fp32"] and frame["channels_last"].tolist() == [True, False]
    (row,) = _json(capsys, ["leaderboard", str(path), "--json"])
    assert row["n_seeds"] == 2
    rows[1]["compute"] = "bf16"
    err = one_line_error(capsys, ["leaderboard", str(write_trials(tmp_path / "mixed.csv", rows,
                                                                   columns=list(rows[0])))])
    assert "different precisions" in err


def test_different_budget_numbers_under_one_budget_name_are_refused(tmp_path):
    frame = pd.DataFrame([trial_row(seed=0), trial_row(seed=1, epochs=9)])
    with pytest.raises(UserError, match="different epochs x iters x batch"):
        aggregate(frame)


def test_aggregate_of_nothing_is_an_empty_table():
    frame = pd.DataFrame([trial_row(status="failed")])
    assert list(aggregate(frame).columns) == list(AGGREGATED) and aggregate(frame).empty
    assert set(KEY_COLUMNS) <= set(AGGREGATED)


BROKEN = {  # name: (how the file is broken, what the one-line error must say)
    "truncated mid-row": (lambda t: t[: t.rindex("\n", 0, len(t) - 1) + 40], f"line 3 has 3 fields but the header has {len(PER_TRIAL)}"),
    "no final newline": (lambda t: t.rstrip("\n")[:-3], "does not end with a newline"),
    "extra field": (lambda t: t.rstrip("\n") + ",surplus\n", f"line 3 has {len(PER_TRIAL) + 1} fields"),
    "empty file": (lambda t: "", "the file is empty"),
    "header only, cut": (lambda t: t.splitlines()[0][:30], "does not end with a newline"),
    "not a number": (lambda t: t.replace(",3,3,0,cpu,", ",3,three,0,cpu,", 1), "column 'a_bits' holds 'three'"),
    "missing column": (lambda t: "".join(",".join(ln.split(",")[:6] + ln.split(",")[7:]) + "\n"
                                         for ln in t.splitlines()), "missing columns ['quantizer']"),
    "empty required cell": (lambda t: t.replace(",uniform,", ",,", 1), "data row 1 has no value in column 'quantizer'"),
    "unrelated csv": (lambda t: "a,b\n1,2\n", "neither a per-trial leaderboard"),
    "unbalanced quote": (lambda t: t.rstrip("\n") + '\n"gdfq,kd\n', "line 4 has 1 fields"),
}


@pytest.mark.parametrize("name", list(BROKEN))
def test_malformed_or_truncated_csv_is_one_line_exit_2_and_writes_nothing(capsys, tmp_path, name):
    text = write_trials(tmp_path / "good.csv", [trial_row(seed=0), trial_row(seed=1)]).read_text()
    folder = tmp_path / "results"
    folder.mkdir()
    bad = folder / "leaderboard.csv"
    breaks, needle = BROKEN[name]
    bad.write_text(breaks(text))
    before = snapshot(folder)
    err = one_line_error(capsys, ["leaderboard", str(bad), "--csv", str(folder / "agg.csv"),
                                   "--markdown", str(folder / "agg.md")])
    assert f"malformed leaderboard CSV {bad}" in err and needle in err, err
    assert snapshot(folder) == before


def test_binary_and_missing_files_are_one_line_errors(capsys, tmp_path):
    garbage = tmp_path / "garbage.csv"
    garbage.write_bytes(b"\xff\xfe\x00\x81garbage\n")
    assert "not UTF-8" in one_line_error(capsys, ["leaderboard", str(garbage)])
    assert "leaderboard not found" in one_line_error(capsys, ["leaderboard", str(tmp_path / "nope.csv")])


def test_per_trial_flag_on_an_aggregated_csv_is_refused(capsys):
    ref = "paper:akt"
    assert "drop --per-trial" in one_line_error(capsys, ["leaderboard", str(ref), "--per-trial"])


def test_docs_document_every_aggregated_column():
    page = (Path(__file__).parents[2] / "docs" / "results-and-statistics.md").read_text()
    match = re.search(r"## Aggregated leaderboard columns\n(.*?)\n## ", page, re.S)
    assert match, "docs/results-and-statistics.md needs an 'Aggregated leaderboard columns' section"
    for column, meaning in documented("aggregated").items():
        assert f"| `{column}` | {meaning} |" in match.group(1), column


def test_leaderboard_takes_a_results_folder(capsys, tmp_path):
    folder = tmp_path / "results"
    write_trials(folder / "leaderboard.csv", [trial_row(seed=0), trial_row(seed=1, top1_last=72.0)])
    out = tmp_path / "out.csv"
    assert main(["leaderboard", str(folder), "--csv", str(out)]) == 0
    frame, kind = read_table(out)
    assert kind == "aggregated" and frame["n_seeds"].tolist() == [2] and frame["top1_last_mean"].tolist() == [71.0]
    (tmp_path / "empty").mkdir()
    assert "has no finished trial yet" in one_line_error(capsys, ["leaderboard", str(tmp_path / "empty")])


def test_the_default_view_fits_80_columns_and_wide_shows_every_setting(tmp_path):
    import io

    from rich.console import Console

    from zsqbench.cli.tables import TextTable, show_table
    from zsqbench.leaderboard.views import display_aggregated, display_compact

    rows = [trial_row("adadfq", loss, bits, seed, 60.0 + seed + bits, budget=budget)
            for loss in ("kd", "channel") for bits in (3, 4) for seed in (0, 1, 2) for budget in ("cpu", "paper")]
    agg = aggregate(write_and_read(tmp_path, rows))
    buf = io.StringIO()
    show_table(TextTable.of(display_compact(agg), "t", ["c"]), Console(file=buf, width=80, color_system=None))
    lines = buf.getvalue().splitlines()
    assert max(len(line) for line in lines) <= 80
    assert any("cifar10 adadfq+channel W4A4 paper" in line and "65.00 ± 1.00" in line for line in lines)
    wide = display_aggregated(agg)
    assert {"model", "quantizer", "budget", "precision", "cpu_h", "top1_oracle (test-selected)"} <= set(wide.columns)


def write_and_read(tmp_path, rows):
    frame, _ = read_table(write_trials(tmp_path / "lb.csv", rows))
    return frame


def test_each_mean_has_its_95_percent_interval(capsys, tmp_path):
    from scipy import stats

    values = [70.0, 71.5, 73.25]
    trials = write_trials(tmp_path / "t.csv", [trial_row(seed=s, top1_last=v) for s, v in enumerate(values)]
                          + [trial_row(loss="akt", seed=0, top1_last=75.0)])
    agg = aggregate(read_table(trials)[0])
    kd, akt = agg[agg["loss"] == "kd"].iloc[0], agg[agg["loss"] == "akt"].iloc[0]
    half = stats.t.ppf(0.975, 2) * stats.tstd(values) / math.sqrt(3)  # t(0.975, n−1) · s / √n
    assert kd["top1_last_ci95"] == pytest.approx(half, abs=1e-4) and math.isnan(akt["top1_last_ci95"])
    ci = stats.ttest_1samp(values, 0).confidence_interval(0.95)
    assert kd["top1_last_ci95"] == pytest.approx((ci.high - ci.low) / 2, abs=1e-4)
    markdown = tmp_path / "t.md"
    assert main(["leaderboard", str(trials), "--ci", "--markdown", str(markdown)]) == 0
    assert f"{sum(values) / 3:.2f} ± {half:.2f}" in markdown.read_text() and "confidence interval" in markdown.read_text()
    assert main(["leaderboard", str(trials), "--markdown", str(markdown)]) == 0
    assert f"{sum(values) / 3:.2f} ± {stats.tstd(values):.2f}" in markdown.read_text()


def test_trials_at_chance_are_counted_kept_and_flagged_in_every_view(capsys, tmp_path, monkeypatch):
    """top-1 <= 1.5 x chance (cifar10 15 %, cifar100 1.5 %) is flagged wherever the row is shown, never dropped."""
    from zsqbench.cli import console

    monkeypatch.setattr(console.out, "width", 200)  # one line per row (80 columns: tests/leaderboard/test_table_width.py)
    rows = [trial_row("adadfq", "akt", 3, s, 10.0, budget="smoke", epochs=3) for s in (0, 1)]
    rows += [trial_row("hast", "akt", 4, 0, 60.0), trial_row("hast", "akt", 4, 1, 12.0)]  # one seed of two
    rows += [trial_row("gdfq", "kd", 3, 0, 1.2, dataset="cifar100"), trial_row("gdfq", "kd", 4, 0, 15.0),
             trial_row("gdfq", "kd", 5, 0, 2.0, dataset="cifar100"), trial_row("gdfq", "kd", 6, 0, 15.01)]
    path = write_trials(tmp_path / "lb.csv", rows)  # written without at_chance values, as older tables were
    trials = _json(capsys, ["leaderboard", str(path), "--per-trial", "--json"])
    flagged = {(r["generator"], r["w_bits"], r["seed"]): r["at_chance"] for r in trials}
    assert flagged == {("adadfq", 3, 0): True, ("adadfq", 3, 1): True, ("hast", 4, 0): False, ("hast", 4, 1): True,
                       ("gdfq", 3, 0): True, ("gdfq", 4, 0): True, ("gdfq", 5, 0): False, ("gdfq", 6, 0): False}
    agg = _json(capsys, ["leaderboard", str(path), "--json"])
    counts = {(r["dataset"], r["generator"], r["w_bits"]): (r["n_at_chance"], r["n_seeds"]) for r in agg}
    assert counts[("cifar10", "adadfq", 3)] == (2, 2) and counts[("cifar10", "hast", 4)] == (1, 2)
    assert counts[("cifar100", "gdfq", 5)] == (0, 1) and len(agg) == 6  # kept in the data
    out = tmp_path / "agg.csv"
    assert main(["leaderboard", str(path), "--csv", str(out)]) == 0
    assert "n_at_chance" in out.read_text().splitlines()[0]

    printed = capsys.readouterr().out.splitlines()
    assert next(x for x in printed if "adadfq+akt W3A3" in x).rstrip().endswith(" at chance")
    assert next(x for x in printed if "hast+akt W4A4" in x).rstrip().endswith("1/2 at chance")
    assert not next(x for x in printed if "cifar100 gdfq+kd W5A5" in x).rstrip().endswith("chance")
    assert any("cifar10 ≤ 15 %, cifar100 ≤ 1.5 %" in x for x in printed)
    assert any("smoke numbers are plumbing checks" in x for x in printed)
    pivot = _json(capsys, ["leaderboard", str(path), "--pivot", "--json"])
    cell = next(r for r in pivot if r["budget"] == "cpu" and r["bits"] == "W4A4" and r["dataset"] == "cifar10")
    assert cell["hast+akt"] == "36.00 ± 33.94 (2) 1/2 at chance"
    md = tmp_path / "t.md"
    assert main(["leaderboard", str(path), "--per-trial", "--wide", "--markdown", str(md)]) == 0
    assert md.read_text().count("| yes |") == 5  # the at_chance column of the five trials at chance


def test_a_results_folder_records_at_chance_in_its_csv(capsys, tmp_path):
    import json

    from support.leaderboard import result_from_row

    folder = tmp_path / "results"
    for row in (trial_row(seed=0, top1_last=9.93), trial_row(seed=1, top1_last=70.0)):
        trial = folder / row["run"] / row["trial_id"]
        trial.mkdir(parents=True)
        (trial / "result.json").write_text(json.dumps(result_from_row(row)))
    assert main(["leaderboard", str(folder), "--rebuild"]) == 0
    frame, _ = read_table(folder / "leaderboard.csv")
    assert dict(zip(frame["seed"], frame["at_chance"])) == {0: True, 1: False}


def test_published_values_are_not_shown_as_means_over_seeds(capsys):
    assert main(["leaderboard", "paper:akt"]) == 0
    printed = capsys.readouterr().out
    line = next(x for x in printed.splitlines() if "cifar10 adadfq+akt W3A3" in x)
    assert " pub. " in line and "86.76" in line and " 1 " not in line
    assert "one value per configuration, the paper's best epoch" in " ".join(printed.split())


@pytest.mark.parametrize("flags", [[], ["--pivot"], ["--wide"]])
def test_a_published_number_with_a_caveat_carries_it_in_every_leaderboard_view(capsys, flags):
    """ZeroQ's CIFAR numbers come from another checkpoint under an unknown protocol: the ledger says so
    beside the claim, and the leaderboard must not show them bare either."""
    assert main(["leaderboard", "paper:published", *flags]) == 0
    printed = " ".join(capsys.readouterr().out.split())
    at = printed.index("79.30")
    assert "protocol unknown, other checkpoint" in printed[at:at + 400]
    assert printed.count("protocol unknown, other checkpoint") == 4  # ZeroQ's four CIFAR rows, nothing else
