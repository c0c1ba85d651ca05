"""`zsqbench compare`: deltas, Welch's t-test, like-for-like checks, and the paper's reference CSV."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from conftest import one_line_error
from scipy import stats
from support.leaderboard import SHA_B, snapshot, trial_row, write_trials

from zsqbench.cli.main import main
from zsqbench.leaderboard.compare import compare, significance
from zsqbench.leaderboard.references import reference_path
from zsqbench.leaderboard.stats import holm
from zsqbench.leaderboard.table import read_table

REFERENCE = reference_path("akt")


@pytest.fixture
def wide_console(monkeypatch):
    """Tables printed unfolded, as on a wide terminal (capture gives rich 80 columns)."""
    from zsqbench.cli.console import out

    monkeypatch.setattr(out, "width", 250)


def _compare_json(capsys, *argv: str) -> dict:
    assert main(["compare", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def _rows(result: dict) -> dict[tuple, dict]:
    return {(r["dataset"], r["generator"], r["loss"], r["w_bits"]): r for r in result["rows"]}


def _side(path: Path, values: dict[tuple[str, int], list[float]], **overrides) -> Path:
    rows = [trial_row(loss=loss, bits=bits, seed=seed, top1_last=v, **overrides)
            for (loss, bits), vs in values.items() for seed, v in enumerate(vs)]
    return write_trials(path, rows)


def _welch_by_hand(a: list[float], b: list[float]) -> tuple[float, float]:
    """Welch's t and two-sided p from the textbook formulas (Welch–Satterthwaite degrees of freedom)."""
    ma, mb = sum(a) / len(a), sum(b) / len(b)
    va = sum((x - ma) ** 2 for x in a) / (len(a) - 1)
    vb = sum((x - mb) ** 2 for x in b) / (len(b) - 1)
    qa, qb = va / len(a), vb / len(b)
    t = (mb - ma) / math.sqrt(qa + qb)
    df = (qa + qb) ** 2 / (qa ** 2 / (len(a) - 1) + qb ** 2 / (len(b) - 1))
    return t, 2 * stats.t.sf(abs(t), df)


A_KD, B_KD = [70.0, 71.0, 73.0], [72.0, 74.0, 75.0, 77.0]
A_AKT, B_AKT = [70.0, 70.5, 71.0], [80.0, 81.0, 82.0]


@pytest.fixture
def sides(tmp_path) -> tuple[Path, Path]:
    a = _side(tmp_path / "a.csv", {("kd", 3): A_KD, ("akt", 3): A_AKT, ("kd", 4): [88.0, 89.0]})
    b = _side(tmp_path / "b.csv", {("kd", 3): B_KD, ("akt", 3): B_AKT, ("kd", 5): [93.0]})
    return a, b


def _paired_by_hand(a: list[float], b: list[float]) -> tuple[float, float, float, float, tuple[float, float]]:
    """Mean difference, SE, t, two-sided p and 95 % CI of the paired t-test, from the textbook formulas."""
    d = [y - x for x, y in zip(a, b)]
    n = len(d)
    mean = sum(d) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in d) / (n - 1))
    se = sd / math.sqrt(n)
    t = mean / se
    half = stats.t.ppf(0.975, n - 1) * se
    return mean, se, t, 2 * stats.t.sf(abs(t), n - 1), (mean - half, mean + half)


def test_rows_with_different_seeds_use_welch_and_say_so(capsys, sides):
    rows = _rows(_compare_json(capsys, str(sides[0]), str(sides[1])))
    kd = rows[("cifar10", "gdfq", "kd", 3)]  # A ran seeds 0-2, B seeds 0-3: no pairing
    assert kd["status"] == "both" and (kd["a_n"], kd["b_n"]) == (3, 4) and kd["test"] == "welch"
    assert "seeds differ (A 0;1;2, B 0;1;2;3): Welch" in kd["flags"] and kd["n_pairs"] is None
    assert kd["delta"] == pytest.approx(sum(B_KD) / 4 - sum(A_KD) / 3, abs=1e-4)
    t, p = _welch_by_hand(A_KD, B_KD)
    assert t == pytest.approx(2.3212, abs=1e-3) and p == pytest.approx(0.0680, abs=1e-3)
    assert kd["t_stat"] == pytest.approx(t, rel=1e-3) and kd["p_value"] == pytest.approx(p, rel=1e-3)
    scipy_p = stats.ttest_ind(B_KD, A_KD, equal_var=False).pvalue
    assert kd["p_value"] == pytest.approx(scipy_p, rel=1e-3)
    # Welch's CI by hand: delta ± t(0.975, Welch–Satterthwaite df) · sqrt(s_a²/n_a + s_b²/n_b)
    va, vb = stats.tvar(A_KD) / 3, stats.tvar(B_KD) / 4
    df = (va + vb) ** 2 / (va ** 2 / 2 + vb ** 2 / 3)
    half = stats.t.ppf(0.975, df) * math.sqrt(va + vb)
    assert kd["df"] == pytest.approx(df) and kd["se"] == pytest.approx(math.sqrt(va + vb))
    assert (kd["ci_low"], kd["ci_high"]) == pytest.approx((kd["delta"] - half, kd["delta"] + half), abs=1e-3)
    ci = stats.ttest_ind(B_KD, A_KD, equal_var=False).confidence_interval(0.95)
    assert (kd["ci_low"], kd["ci_high"]) == pytest.approx((ci.low, ci.high), abs=1e-3)


def test_rows_with_the_same_seeds_are_paired_and_holm_adjusted(capsys, sides, wide_console):
    result = _compare_json(capsys, str(sides[0]), str(sides[1]))
    rows = _rows(result)
    akt = rows[("cifar10", "gdfq", "akt", 3)]  # both ran seeds 0-2
    mean, se, t, p, ci = _paired_by_hand(A_AKT, B_AKT)
    assert akt["test"] == "paired" and akt["n_pairs"] == 3 and akt["flags"] == []
    assert akt["delta"] == pytest.approx(mean) and akt["se"] == pytest.approx(se) and akt["df"] == 2
    assert akt["t_stat"] == pytest.approx(t) and akt["p_value"] == pytest.approx(p)
    scipy_res = stats.ttest_rel(B_AKT, A_AKT)
    assert akt["p_value"] == pytest.approx(scipy_res.pvalue) and akt["t_stat"] == pytest.approx(scipy_res.statistic)
    assert (akt["ci_low"], akt["ci_high"]) == pytest.approx(ci)
    # Holm over the two rows with a p-value: the smaller p times 2, the larger times 1 (kept monotone)
    kd = rows[("cifar10", "gdfq", "kd", 3)]
    small, large = sorted([akt["p_value"], kd["p_value"]])
    assert akt["p_holm"] == pytest.approx(min(1, 2 * small)) and kd["p_holm"] == pytest.approx(max(2 * small, large))
    assert akt["mark"] == "**" and kd["mark"] == ""
    assert any("1 row(s) paired by seed" in n and "1 by Welch" in n for n in result["notes"])
    assert main(["compare", str(sides[0]), str(sides[1])]) == 0
    printed = " ".join(capsys.readouterr().out.replace("│", " ").split())
    assert "paired (3)" in printed and "Welch" in printed and f"[{ci[0]:+.2f}, {ci[1]:+.2f}]" in printed


def test_unpaired_forces_welch(capsys, sides):
    akt = _rows(_compare_json(capsys, str(sides[0]), str(sides[1]), "--unpaired"))[("cifar10", "gdfq", "akt", 3)]
    assert akt["test"] == "welch" and akt["p_value"] == pytest.approx(_welch_by_hand(A_AKT, B_AKT)[1], rel=1e-6)


def test_holm_adjustment_on_a_known_example():
    # sorted: 0.005·4 = 0.02, 0.01·3 = 0.03, 0.03·2 = 0.06, 0.04·1 = 0.04 -> raised to 0.06 (step-down is monotone)
    assert holm([0.01, 0.04, 0.03, None, 0.005]) == pytest.approx([0.03, 0.06, 0.06, None, 0.02])
    assert holm([0.5, 0.9]) == [1.0, 1.0] and holm([]) == []


def test_rows_on_one_side_only_are_flagged_without_delta(capsys, sides):
    rows = _rows(_compare_json(capsys, str(sides[0]), str(sides[1])))
    only_a, only_b = rows[("cifar10", "gdfq", "kd", 4)], rows[("cifar10", "gdfq", "kd", 5)]
    assert only_a["status"] == "only A" and only_a["b_mean"] is None and only_a["delta"] is None
    assert only_b["status"] == "only B" and only_b["a_n"] is None and only_b["p_value"] is None
    assert main(["compare", str(sides[0]), str(sides[1])]) == 0
    assert "1 row(s) only in A, 1 only in B" in " ".join(capsys.readouterr().out.split())
    joined = _compare_json(capsys, str(sides[0]), str(sides[1]), "--joined-only")
    assert {r["status"] for r in joined["rows"]} == {"both"} and len(joined["rows"]) == 2


def test_one_seed_on_a_side_gives_a_delta_but_no_p_value(capsys, tmp_path):
    a = _side(tmp_path / "a.csv", {("kd", 3): [70.0]})
    b = _side(tmp_path / "b.csv", {("kd", 3): [72.0, 73.0]})
    (row,) = _compare_json(capsys, str(a), str(b))["rows"]
    assert row["delta"] == pytest.approx(2.5) and row["p_value"] is None and row["mark"] == ""
    assert row["test"] == ""  # no test ran: not "welch"
    assert main(["compare", str(a), str(b)]) == 0
    printed = capsys.readouterr().out
    assert "no test (n=1)" in printed and "Welch" not in printed.split("delta = B − A")[0]


def test_an_aggregated_input_falls_back_to_welch_with_a_note(capsys, sides, tmp_path):
    agg = tmp_path / "a_agg.csv"
    assert main(["leaderboard", str(sides[0]), "--csv", str(agg)]) == 0
    capsys.readouterr()
    assert read_table(agg)[1] == "aggregated"
    from_agg = _compare_json(capsys, str(agg), str(sides[1]))
    akt = _rows(from_agg)[("cifar10", "gdfq", "akt", 3)]
    assert akt["test"] == "welch" and "A not per trial: Welch" in akt["flags"]
    assert any("aggregated table: its rows cannot be paired" in n for n in from_agg["notes"])
    unpaired = _compare_json(capsys, str(sides[0]), str(sides[1]), "--unpaired")["rows"]
    for agg_row, trial_row_ in zip(from_agg["rows"], unpaired):  # the same, up to the CSV's 4 decimals
        for k, v in agg_row.items():
            if k != "flags":
                assert v == (pytest.approx(trial_row_[k], abs=1e-3) if isinstance(v, float) else trial_row_[k]), k


def test_budget_mismatch_is_refused_unless_forced(capsys, tmp_path):
    a = _side(tmp_path / "a.csv", {("kd", 3): A_KD})
    b = _side(tmp_path / "b.csv", {("kd", 3): B_KD}, epochs=400, iters_per_epoch=200, batch_size=256)
    before = snapshot(tmp_path)
    err = one_line_error(capsys, ["compare", str(a), str(b)])
    assert "budget differs (A 8x100x64, B 400x200x256" in err and "--force" in err
    assert snapshot(tmp_path) == before
    (row,) = _compare_json(capsys, str(a), str(b), "--force")["rows"]
    assert any(f.startswith("forced: budget differs") for f in row["flags"]) and row["delta"] is not None


def test_teacher_and_model_mismatches_are_refused(capsys, tmp_path):
    a = _side(tmp_path / "a.csv", {("kd", 3): A_KD})
    b = _side(tmp_path / "b.csv", {("kd", 3): B_KD}, teacher_sha256=SHA_B)
    assert "teacher sha256 differs (A c1757f29…, B 9b0024ac…)" in one_line_error(capsys, ["compare", str(a), str(b)])
    c = _side(tmp_path / "c.csv", {("kd", 3): B_KD}, model="resnet56_cifar10")
    assert "model differs" in one_line_error(capsys, ["compare", str(a), str(c)])


def test_two_rows_for_one_join_key_are_ambiguous(capsys, tmp_path):
    a = write_trials(tmp_path / "a.csv", [trial_row(seed=0), trial_row(seed=0, budget="paper")])
    b = _side(tmp_path / "b.csv", {("kd", 3): B_KD})
    assert "has two rows for cifar10 gdfq+kd W3A3 (budget cpu / paper)" in one_line_error(
        capsys, ["compare", str(a), str(b)])


def test_reference_csv_is_exempt_from_budget_and_teacher_checks_and_labelled(capsys, tmp_path):
    mine = _side(tmp_path / "mine.csv", {("kd", 3): [72.0, 73.0], ("akt", 3): [74.0, 74.5]},
                 teacher_sha256=SHA_B, epochs=2)
    result = _compare_json(capsys, str(REFERENCE), str(mine))
    rows = _rows(result)
    gdfq_kd = rows[("cifar10", "gdfq", "kd", 3)]
    assert gdfq_kd["a_mean"] == 72.23 and gdfq_kd["a_n"] == 1 and gdfq_kd["b_n"] == 2
    assert gdfq_kd["delta"] == pytest.approx(72.5 - 72.23) and gdfq_kd["p_value"] is None
    assert "A is reference" in gdfq_kd["flags"]
    assert sum(r["status"] == "only A" for r in result["rows"]) == 40
    assert any("published reference numbers" in n and "budget" in n and "teacher" in n for n in result["notes"])
    assert main(["compare", str(REFERENCE), str(mine)]) == 0
    assert "published" in capsys.readouterr().out


def test_oracle_metric_uses_top1_oracle(capsys, tmp_path):
    a = _side(tmp_path / "a.csv", {("kd", 3): [70.0, 72.0]})
    b = _side(tmp_path / "b.csv", {("kd", 3): [71.0, 73.0]})
    (row,) = _compare_json(capsys, str(a), str(b), "--metric", "oracle")["rows"]
    assert row["a_mean"] == pytest.approx(72.0) and row["b_mean"] == pytest.approx(73.0)  # top1_oracle = last + 1


@pytest.mark.parametrize("breakage", ["truncated", "garbage"])
def test_malformed_or_truncated_csv_is_one_line_exit_2(capsys, sides, breakage):
    text = sides[1].read_text()
    sides[1].write_text(text[: len(text) - 25] if breakage == "truncated" else "model;dataset\n1;2\n")
    before = snapshot(sides[1].parent)
    err = one_line_error(capsys, ["compare", str(sides[0]), str(sides[1])])
    assert f"malformed leaderboard CSV {sides[1]}" in err
    assert snapshot(sides[1].parent) == before


def test_significance_marks():
    assert [significance(p) for p in (0.2, 0.049, 0.009, None, math.nan)] == ["", "*", "**", "", ""]


def test_compare_function_refuses_without_force(sides, tmp_path):
    b = _side(tmp_path / "b2.csv", {("kd", 3): B_KD}, batch_size=32)
    from zsqbench.errors import UserError

    with pytest.raises(UserError, match="not like-for-like"):
        compare(sides[0], b)
    assert compare(sides[0], b, force=True).rows


# --- the published reference CSV ------------------------------------------------------------

TABLE2 = {  # docs/methods/akt.md#published-numbers, Table 2: gdfq, gdfq+akt, hast, hast+akt, adadfq, adadfq+akt
    ("cifar10", 3): [72.23, 72.80, 84.11, 84.84, 84.89, 86.76],
    ("cifar10", 4): [90.25, 90.33, 92.00, 92.25, 92.31, 92.64],
    ("cifar10", 5): [93.38, 93.36, 93.48, 93.57, 93.81, 93.83],
    ("cifar100", 3): [47.59, 49.06, 45.21, 46.80, 52.74, 54.68],
    ("cifar100", 4): [63.39, 63.37, 64.40, 65.26, 66.81, 66.94],
    ("cifar100", 5): [66.12, 67.46, 68.82, 68.91, 69.93, 69.75],
}
TABLE4 = {"channel": [86.09, 92.36, 93.62], "spatial": [86.10, 92.49, 93.75], "akt": [86.76, 92.64, 93.83]}


def test_reference_csv_holds_tables_2_and_4_once_each():
    frame, kind = read_table(REFERENCE)
    assert kind == "aggregated" and len(frame) == 36 + 6  # Table 4's akt rows are Table 2's adadfq+akt
    keys = list(zip(frame["dataset"], frame["generator"], frame["loss"], frame["w_bits"], frame["a_bits"]))
    assert len(set(keys)) == len(keys)
    got = {(d, g, loss, w): v for (d, g, loss, w, _), v in zip(keys, frame["top1_last_mean"])}
    methods = [("gdfq", "kd"), ("gdfq", "akt"), ("hast", "kd"), ("hast", "akt"), ("adadfq", "kd"), ("adadfq", "akt")]
    for (dataset, bits), values in TABLE2.items():
        for (g, loss), v in zip(methods, values):
            assert got[(dataset, g, loss, bits)] == v, (dataset, g, loss, bits)
    for loss, values in TABLE4.items():
        for bits, v in zip((3, 4, 5), values):
            assert got[("cifar10", "adadfq", loss, bits)] == v
    assert set(frame["source"]) == {"reference"} and set(frame["budget"]) == {"paper"}
    assert set(frame["n_seeds"]) == {1} and frame["top1_last_std"].isna().all()
    assert set(frame["model"]) == {"resnet20_cifar10", "resnet20_cifar100"}
    assert all((m == f"resnet20_{d}") for m, d in zip(frame["model"], frame["dataset"]))
    assert set(frame.loc[frame["dataset"] == "cifar10", "fp_top1"]) == {93.89}
    assert set(frame.loc[frame["dataset"] == "cifar100", "fp_top1"]) == {70.33}
    assert frame["note"].str.contains("best epoch selected on the test set").all()


# --- paired comparisons inside one results folder, and what the seeds can detect ----------------

#: Measured by a user (issue 13): CPU budget, CIFAR-10, AdaDFQ, W3A3, top1_last by seed.
ISSUE_KD, ISSUE_AKT = [72.22, 62.82], [70.68, 65.48]


def _folder_csv(path: Path, cells: dict[tuple[str, str], list[float]], bits: int = 3) -> Path:
    """A per-trial leaderboard of one grid: (generator, loss) -> top1_last by seed."""
    rows = [trial_row(generator=g, loss=loss, bits=bits, seed=seed, top1_last=v)
            for (g, loss), values in cells.items() for seed, v in enumerate(values)]
    return write_trials(path, rows)


def test_the_issue_table_paired_by_seed(capsys, tmp_path, wide_console):
    grid = _folder_csv(tmp_path / "grid.csv", {("adadfq", "kd"): ISSUE_KD, ("adadfq", "akt"): ISSUE_AKT})
    result = _compare_json(capsys, str(grid), "--by", "loss", "--baseline", "kd", "--effect", "0.3")
    (row,) = result["rows"]
    assert (row["loss"], row["baseline"], row["test"], row["n_pairs"]) == ("akt", "kd", "paired", 2)
    assert row["delta"] == pytest.approx(0.56, abs=1e-9) and round(row["se"], 2) == 2.10
    mean, se, t, p, ci = _paired_by_hand(ISSUE_KD, ISSUE_AKT)
    assert row["se"] == pytest.approx(se) and row["p_value"] == pytest.approx(p) and row["p_holm"] == row["p_value"]
    assert (row["ci_low"], row["ci_high"]) == pytest.approx(ci)  # 0.56 ± 12.706 · 2.10
    sd = se * math.sqrt(2)

    # MDE by simulation: paired differences drawn with the observed spread and a true mean of the MDE
    # are declared significant 80 % of the time by the two-sided t-test with 2 seeds
    rng = np.random.default_rng(0)
    d = rng.normal(row["mde"], sd, size=(400_000, 2))
    t_sim = d.mean(axis=1) / (d.std(axis=1, ddof=1) / math.sqrt(2))
    assert (np.abs(t_sim) > stats.t.ppf(0.975, 1)).mean() == pytest.approx(0.8, abs=0.004)
    assert row["mde"] == pytest.approx(34.30, abs=0.01)

    # seeds for 0.3 points: the normal approximation n = ((z_.975 + z_.8) · sd / 0.3)² = 769.2, plus the
    # few seeds the t-test's heavier tails cost; exactly the first n whose power reaches 80 %
    n_normal = ((stats.norm.ppf(0.975) + stats.norm.ppf(0.8)) * sd / 0.3) ** 2
    assert n_normal == pytest.approx(769.19, abs=0.01) and n_normal < row["seeds_needed"] < n_normal + 4

    def power_at(n: int) -> float:
        crit = stats.t.ppf(0.975, n - 1)
        return stats.nct.sf(crit, n - 1, 0.3 * math.sqrt(n) / sd)

    assert power_at(row["seeds_needed"]) >= 0.8 > power_at(row["seeds_needed"] - 1)
    assert row["seeds_needed"] == 772

    assert main(["compare", str(grid), "--by", "loss", "--baseline", "kd", "--effect", "0.3", "--wide"]) == 0
    printed = " ".join(capsys.readouterr().out.replace("│", " ").split())
    assert "cifar10 adadfq+akt W3A3" in printed and "+0.56 [-26.12, +27.24] paired (2)" in printed
    assert "34.30 772" in printed and "seeds for 0.3" in printed


def test_the_issue_table_unpaired_is_far_weaker(capsys, tmp_path):
    grid = _folder_csv(tmp_path / "grid.csv", {("adadfq", "kd"): ISSUE_KD, ("adadfq", "akt"): ISSUE_AKT})
    (paired,) = _compare_json(capsys, str(grid), "--by", "loss", "--baseline", "kd", "--effect", "0.3")["rows"]
    (welch,) = _compare_json(capsys, str(grid), "--by", "loss", "--baseline", "kd", "--effect", "0.3",
                             "--unpaired")["rows"]
    assert welch["test"] == "welch" and welch["delta"] == pytest.approx(paired["delta"])
    assert welch["se"] == pytest.approx(math.sqrt((stats.tvar(ISSUE_KD) + stats.tvar(ISSUE_AKT)) / 2))
    assert welch["se"] > 2 * paired["se"] and welch["seeds_needed"] > 5 * paired["seeds_needed"]


def test_compare_within_a_folder_pairs_every_cell_and_adjusts_over_all_rows(capsys, tmp_path):
    cells = {("gdfq", "kd"): [70.0, 65.0, 68.0], ("gdfq", "akt"): [71.0, 66.5, 68.9],
             ("gdfq", "spatial"): [70.2, 65.1, 68.4], ("adadfq", "kd"): [80.0, 77.0, 79.0],
             ("adadfq", "akt"): [81.1, 77.9, 80.2], ("hast", "akt"): [75.0, 76.0, 77.0]}
    grid = _folder_csv(tmp_path / "grid.csv", cells)
    result = _compare_json(capsys, str(grid), "--by", "loss", "--baseline", "kd")
    rows = {(r["generator"], r["loss"]): r for r in result["rows"]}
    assert set(rows) == {("gdfq", "akt"), ("gdfq", "spatial"), ("adadfq", "akt"), ("hast", "akt")}
    assert rows[("hast", "akt")]["status"] == "no baseline" and rows[("hast", "akt")]["delta"] is None
    for key in (("gdfq", "akt"), ("gdfq", "spatial"), ("adadfq", "akt")):
        base, other = cells[(key[0], "kd")], cells[key]
        assert rows[key]["test"] == "paired" and rows[key]["p_value"] == pytest.approx(stats.ttest_rel(other, base).pvalue)
    raw = [r["p_value"] for r in result["rows"]]
    assert [r["p_holm"] for r in result["rows"]] == pytest.approx(holm(raw))
    assert any("1 row(s) have no loss 'kd' row" in n for n in result["notes"])
    by_generator = _compare_json(capsys, str(grid), "--by", "generator", "--baseline", "gdfq")
    assert {(r["generator"], r["loss"]) for r in by_generator["rows"]} == {("adadfq", "kd"), ("adadfq", "akt"),
                                                                           ("hast", "akt")}


def test_compare_within_errors_are_one_line(capsys, tmp_path, sides):
    grid = _folder_csv(tmp_path / "grid.csv", {("gdfq", "kd"): [70.0, 71.0], ("gdfq", "akt"): [72.0, 73.0]})
    assert "no row of" in (err := one_line_error(capsys, ["compare", str(grid), "--by", "loss", "--baseline", "ce"]))
    assert "akt, kd" in err and "--baseline" in err
    assert "needs --baseline" in one_line_error(capsys, ["compare", str(grid), "--by", "loss"])
    assert "drop" in one_line_error(capsys, ["compare", str(grid), str(grid), "--by", "loss", "--baseline", "kd"])
    assert "needs two sources" in one_line_error(capsys, ["compare", str(grid)])
    assert "--baseline goes with --by" in one_line_error(capsys, ["compare", *map(str, sides), "--baseline", "kd"])
    with pytest.raises(SystemExit) as exit_:
        main(["compare", str(grid), "--by", "loss", "--baseline", "kd", "--effect", "0"])
    assert exit_.value.code == 2 and "expected a positive number" in capsys.readouterr().err


def test_bootstrap_intervals_are_seeded(capsys, tmp_path):
    kd = [70.0, 65.0, 68.0, 66.0, 71.0, 69.3, 64.2, 67.7]
    d = [1.0, 1.5, 0.9, 0.2, 1.5, -0.4, 2.3, 0.65]
    grid = _folder_csv(tmp_path / "grid.csv", {("gdfq", "kd"): kd, ("gdfq", "akt"): [x + y for x, y in zip(kd, d)]})
    argv = [str(grid), "--by", "loss", "--baseline", "kd", "--ci", "bootstrap"]
    (one,) = _compare_json(capsys, *argv, "--bootstrap-seed", "3")["rows"]
    (again,) = _compare_json(capsys, *argv, "--bootstrap-seed", "3")["rows"]
    (other,) = _compare_json(capsys, *argv, "--bootstrap-seed", "4")["rows"]
    assert one["interval"] == "bootstrap" and (one["ci_low"], one["ci_high"]) == (again["ci_low"], again["ci_high"])
    assert (one["ci_low"], one["ci_high"]) != (other["ci_low"], other["ci_high"])
    assert min(d) <= one["ci_low"] < one["delta"] < one["ci_high"] <= max(d)
    two = _folder_csv(tmp_path / "two.csv", {("adadfq", "kd"): ISSUE_KD, ("adadfq", "akt"): ISSUE_AKT})
    (row,) = _compare_json(capsys, str(two), "--by", "loss", "--baseline", "kd", "--ci", "bootstrap")["rows"]
    assert (row["ci_low"], row["ci_high"]) == pytest.approx((-1.54, 2.66))  # two seeds: the two differences


def _issue_smoke_run(path: Path) -> Path:
    """`zsqbench run --generators adadfq,hast --loss akt --bits 3,4,5 --budget smoke` as the issue got it."""
    return write_trials(path, [
        trial_row(g, "akt", b, 0, v, budget="smoke", epochs=2, iters_per_epoch=2, batch_size=16, warmup_epochs=1)
        for g, values in (("adadfq", (10.0, 10.0, 10.0)), ("hast", (9.93, 12.94, 37.37)))
        for b, v in zip((3, 4, 5), values)])


def test_a_side_at_chance_is_flagged_and_its_delta_called_not_meaningful(capsys, tmp_path, wide_console):
    smoke = _issue_smoke_run(tmp_path / "smoke.csv")
    result = _compare_json(capsys, "paper:akt", str(smoke), "--joined-only")
    rows = {(r["generator"], r["w_bits"]): r for r in result["rows"]}
    w5 = rows[("adadfq", 5)]
    assert w5["delta"] == pytest.approx(10.0 - 93.83) and w5["b_chance"] == "at chance" and not w5["meaningful"]
    assert "B at chance: delta not meaningful" in w5["flags"]
    assert [rows[("hast", b)]["meaningful"] for b in (3, 4, 5)] == [False, False, True]  # 9.93, 12.94 ≤ 15 < 37.37
    assert all(r["a_published"] and r["test"] == "" and r["budget_a"] == "paper" for r in rows.values())
    notes = " ".join(result["notes"])
    assert "a delta with such a side is not meaningful" in notes and "smoke numbers are plumbing checks" in notes
    assert main(["compare", "paper:akt", str(smoke), "--joined-only"]) == 0
    printed = capsys.readouterr().out
    line = next(x for x in printed.splitlines() if "adadfq+akt W5A5" in x)
    assert "paper / smoke" in line and "93.83 (pub.)" in line and "-83.83" in line and "no test (pub.)" in line
    assert "delta not meaningful" in line and "one value per configuration" in printed


def test_compare_by_shows_each_rows_budget_and_flags_chance_per_cell(capsys, tmp_path, wide_console):
    rows = [trial_row("adadfq", loss, 3, seed, v, budget=budget, **extra)
            for budget, extra, values in (("cpu", {}, {"kd": (54.61, 55.01), "akt": (56.0, 57.5)}),
                                          ("smoke", dict(epochs=2, iters_per_epoch=2, batch_size=16),
                                           {"kd": (30.0, 31.0), "akt": (10.0, 10.0)}))
            for loss, vs in values.items() for seed, v in enumerate(vs)]
    grid = write_trials(tmp_path / "grid.csv", rows)
    result = _compare_json(capsys, str(grid), "--by", "loss", "--baseline", "kd")
    by_budget = {r["budget"]: r for r in result["rows"]}
    assert by_budget["cpu"]["meaningful"] and not by_budget["smoke"]["meaningful"]
    assert by_budget["smoke"]["b_chance"] == "at chance" and by_budget["smoke"]["a_chance"] == ""
    assert main(["compare", str(grid), "--by", "loss", "--baseline", "kd"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any("adadfq+akt W3A3" in x and " cpu " in x and "54.81 ± 0.28 (2)" in x for x in lines)
    smoke_line = next(x for x in lines if "adadfq+akt W3A3" in x and " smoke " in x)
    assert "B at chance: delta not meaningful" in smoke_line
    assert any("smoke numbers are plumbing checks" in x for x in lines)


def test_rows_with_a_side_at_chance_keep_their_p_value_but_leave_holms_family(capsys, tmp_path):
    """A collapsed arm (10 % on CIFAR-10) against a trained one gives a tiny p-value: it must not earn a
    star, nor make the meaningful rows' adjustment stricter (two rows in the family instead of one)."""
    cells = {("gdfq", "kd"): [70.0, 65.0, 68.0], ("gdfq", "akt"): [71.0, 66.5, 68.9],
             ("adadfq", "kd"): [80.0, 77.0, 79.0], ("adadfq", "akt"): [10.0, 10.02, 9.97]}
    grid = _folder_csv(tmp_path / "grid.csv", cells)
    result = _compare_json(capsys, str(grid), "--by", "loss", "--baseline", "kd")
    rows = {r["generator"]: r for r in result["rows"]}
    collapsed, trained = rows["adadfq"], rows["gdfq"]
    assert not collapsed["meaningful"] and collapsed["p_value"] < 1e-3
    assert collapsed["p_holm"] is None and collapsed["mark"] == ""
    assert trained["p_holm"] == pytest.approx(trained["p_value"])  # a family of one
    assert any("over the 1 row(s) with a p-value (the 1 with a side at chance left out" in n for n in result["notes"])
    assert main(["compare", str(grid), "--by", "loss", "--baseline", "kd"]) == 0
    printed = capsys.readouterr().out
    assert "0.00017 (–)" in printed and "0.026 (0.026) *" in printed


def test_a_pair_trained_with_different_student_recipes_is_flagged_not_refused(capsys, tmp_path):
    """Comparing lr 1e-6 against lr 1e-4 may be the experiment itself, so it is not refused; but the row
    says the delta measures the recipe too (both CSVs name one; a table without the column says nothing)."""
    a = write_trials(tmp_path / "a.csv", [trial_row(seed=s, top1_last=v, recipe="lr 1e-4, 400·KL_mean + CE")
                                          for s, v in enumerate((70.0, 71.0))])
    b = write_trials(tmp_path / "b.csv", [trial_row(seed=s, top1_last=v, recipe="lr 1e-6, 8000·KL_bm")
                                          for s, v in enumerate((72.0, 73.5))])
    (row,) = _compare_json(capsys, str(a), str(b))["rows"]
    assert "student recipe differs (A lr 1e-4, 400·KL_mean + CE; B lr 1e-6, 8000·KL_bm)" in row["flags"]
    assert row["delta"] == pytest.approx(2.25)
    old = write_trials(tmp_path / "old.csv", [trial_row(seed=s, top1_last=v, recipe=None)
                                              for s, v in enumerate((70.0, 71.0))])
    (row,) = _compare_json(capsys, str(old), str(b))["rows"]
    assert not any("recipe" in f for f in row["flags"])
