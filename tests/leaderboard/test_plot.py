"""`zsqbench plot`: the three figures from a hand-made results folder, and its one-line errors."""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

pytest.importorskip("matplotlib")

from conftest import make_spec  # noqa: E402
from support.leaderboard import result_from_row, snapshot, trial_row, write_trial_folder, write_trials  # noqa: E402

from zsqbench.api.spec import TrialSpec  # noqa: E402
from zsqbench.cli.main import main  # noqa: E402
from zsqbench.leaderboard.aggregate import aggregate  # noqa: E402
from zsqbench.leaderboard.compare import load_side  # noqa: E402
from zsqbench.leaderboard.plots import gains_over_kd  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
STEMS = ("accuracy_vs_bits", "gain_over_kd", "training_curves")


def _result_json(row: dict) -> dict:
    """A full result.json for the row, with per-epoch numbers for the training curves."""
    epochs = [{"epoch": 0, "phase": "warmup", "lr": 0.0, "top1": None, "losses": {}, "seconds": 1.0},
              {"epoch": 1, "phase": "warmup", "lr": 0.0, "top1": row["ptq_top1"], "losses": {}, "seconds": 1.0}]
    for e in range(2, 5):
        losses = {"total": 2.0 / e, "logit": 1.5 / e}
        if row["loss"] != "kd":
            losses["feature"] = 0.5 / e
        epochs.append({"epoch": e, "phase": "train", "lr": 1e-4, "top1": row["top1_last"] - (4 - e),
                       "losses": losses, "seconds": 1.0})
    return result_from_row(row, epochs)


@pytest.fixture
def results_dir(tmp_path) -> Path:
    folder = tmp_path / "results"
    rows = [trial_row(g, loss, bits, seed, 60.0 + 5 * bits + seed + (1.5 if loss == "akt" else 0.0))
            for g in ("gdfq", "adadfq") for loss in ("kd", "akt") for bits in (3, 4) for seed in (0, 1)]
    results = []
    for row in rows:  # each folder named by its spec's hash, as a reader checks
        result = _result_json(row)
        row["trial_id"] = result["trial_id"] = TrialSpec.model_validate(result["spec"]).trial_id
        results.append(result)
    write_trials(folder / "leaderboard.csv", rows)
    for row, result in zip(rows, results):
        write_trial_folder(folder, row, result)
    failed = folder / "run1" / ("f" * 16)
    failed.mkdir()
    (failed / "spec.json").write_text(json.dumps(make_spec().model_dump(mode="json")))
    (failed / "error.json").write_text('{"status": "failed"}')  # no result.json: never plotted
    return folder


def test_plot_writes_the_three_figures_and_prints_their_paths(capsys, results_dir, tmp_path):
    out = tmp_path / "figs"
    assert main(["plot", str(results_dir), "--out", str(out)]) == 0
    printed = capsys.readouterr().out.split()
    assert printed == [str(out / f"{stem}.png") for stem in STEMS]
    for stem in STEMS:
        data = (out / f"{stem}.png").read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5000, stem  # a real, non-trivial image
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{s}.png" for s in STEMS)  # no temporaries left


def test_svg_format_and_default_out_folder(capsys, results_dir):
    assert main(["plot", str(results_dir), "--format", "png,svg"]) == 0
    written = [Path(p) for p in capsys.readouterr().out.split()]
    assert len(written) == 6 and all(p.parent == results_dir / "plots" for p in written)
    svg = (results_dir / "plots" / "training_curves.svg").read_text()
    assert svg.lstrip().startswith("<?xml") and "<svg" in svg


def test_chosen_trials_by_id_prefix(capsys, results_dir, tmp_path):
    out = ["--out", str(tmp_path / "o")]
    ids = sorted(p.parent.name for p in results_dir.glob("run1/*/result.json"))
    assert main(["plot", str(results_dir), *out, "--trials", f"{ids[0]},{ids[1][:6]}"]) == 0
    assert (tmp_path / "o" / "training_curves.png").exists()
    prefix, count = Counter(i[0] for i in ids).most_common(1)[0]
    assert count >= 2  # 16 ids over 16 hex digits: some first digit repeats
    assert f"'{prefix}' matches {count} finished trials" in _one_line_error(
        capsys, ["plot", str(results_dir), *out, "--trials", prefix])


def test_gain_over_kd_is_paired_by_seed_when_the_seeds_match(tmp_path):
    from scipy import stats

    rows = [trial_row("gdfq", "kd", 3, 0, 70.0), trial_row("gdfq", "kd", 3, 1, 72.0),
            trial_row("gdfq", "akt", 3, 0, 73.0), trial_row("gdfq", "akt", 3, 1, 74.5),
            trial_row("gdfq", "spatial", 4, 0, 80.0)]  # no kd at 4 bits: no gain
    side = load_side(write_trials(tmp_path / "t.csv", rows))
    (gain,) = gains_over_kd(side).to_dict("records")
    ci = stats.ttest_rel([73.0, 74.5], [70.0, 72.0]).confidence_interval(0.95)
    assert gain["loss"] == "akt" and gain["test"] == "paired" and gain["gain"] == pytest.approx(73.75 - 71.0)
    assert (gain["ci_low"], gain["ci_high"]) == pytest.approx((ci.low, ci.high))
    agg = tmp_path / "agg.csv"  # an aggregated table has no seeds to pair: Welch's interval
    aggregate(pd.DataFrame(rows)).to_csv(agg, index=False)
    (unpaired,) = gains_over_kd(load_side(agg)).to_dict("records")
    welch = stats.ttest_ind([73.0, 74.5], [70.0, 72.0], equal_var=False).confidence_interval(0.95)
    assert unpaired["test"] == "welch" and (unpaired["ci_low"], unpaired["ci_high"]) == pytest.approx(
        (welch.low, welch.high), abs=1e-3)


def test_a_figure_with_nothing_to_show_is_not_written_and_stderr_says_why(capsys, tmp_path):
    folder = tmp_path / "results"
    write_trials(folder / "leaderboard.csv", [trial_row("gdfq", "akt", 3, 0, 70.0)])
    assert main(["plot", str(folder), "--out", str(tmp_path / "o")]) == 0
    captured = capsys.readouterr()
    assert captured.out.split() == [str(tmp_path / "o" / "accuracy_vs_bits.png")]  # stdout: only files written
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["accuracy_vs_bits.png"]
    reasons = dict(line.split(": not written: ") for line in captured.err.strip().splitlines())
    assert set(reasons) == {"gain_over_kd", "training_curves"}
    assert "no loss other than kd shares a configuration" in reasons["gain_over_kd"]
    assert "no finished trial has a result.json" in reasons["training_curves"]


def _one_line_error(capsys, argv: list[str]) -> str:
    code = main(argv)
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err + captured.out, err
    return err


def test_errors_are_one_line_and_write_nothing(capsys, results_dir, tmp_path):
    before = snapshot(tmp_path)
    out = ["--out", str(tmp_path / "o")]
    assert "'nope' matches no finished trial" in _one_line_error(
        capsys, ["plot", str(results_dir), *out, "--trials", "nope"])
    assert "--format 'gif'" in _one_line_error(capsys, ["plot", str(results_dir), *out, "--format", "gif"])
    assert "results folder not found" in _one_line_error(capsys, ["plot", str(tmp_path / "none"), *out])
    shared = tmp_path / "shared"  # a leaderboard shared without its trial folders: the CSV is all there is
    shared.mkdir()
    (shared / "leaderboard.csv").write_text("trial_id,top1_last\nabc")
    before = snapshot(tmp_path)
    assert "malformed leaderboard CSV" in _one_line_error(capsys, ["plot", str(shared), *out])
    assert snapshot(tmp_path) == before


def test_a_damaged_csv_beside_the_trials_does_not_matter(capsys, results_dir, tmp_path):
    (results_dir / "leaderboard.csv").write_text("trial_id,top1_last\nabc")  # the trials are the truth
    assert main(["plot", str(results_dir), "--out", str(tmp_path / "o")]) == 0


def test_corrupt_result_json_is_one_line(capsys, results_dir, tmp_path):
    next(results_dir.glob("run1/*/result.json")).write_text("{not json")
    assert "corrupt result file" in _one_line_error(capsys, ["plot", str(results_dir), "--out", str(tmp_path / "o")])


def test_missing_matplotlib_says_how_to_install(capsys, results_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # makes the import fail
    err = _one_line_error(capsys, ["plot", str(results_dir), "--out", str(tmp_path / "o")])
    assert 'pip install "zsqbench[plot]"' in err
    assert not (tmp_path / "o").exists()


def _figure(build, *args):
    from matplotlib.figure import Figure

    return build(*args, Figure)


def _legend_texts(fig) -> list[str]:
    legends = [*fig.legends, *(ax.get_legend() for ax in fig.axes if ax.get_legend() is not None)]
    return [t.get_text() for legend in legends for t in legend.get_texts()]


def test_one_seed_gains_are_points_labelled_without_a_zero_width_ci(tmp_path):
    from matplotlib.container import BarContainer

    from zsqbench.leaderboard.plots import gain_over_kd

    one = load_side(write_trials(tmp_path / "one.csv", [trial_row(loss=loss, seed=0, top1_last=v)
                                                        for loss, v in (("kd", 70.0), ("akt", 71.0))]))
    fig = _figure(gain_over_kd, one)
    (ax,) = fig.axes
    assert not [c for c in ax.containers if isinstance(c, BarContainer)]  # no bar, so no "95 % CI" of width 0
    (point,) = [line for line in ax.get_lines() if line.get_marker() == "D"]
    assert point.get_ydata()[0] == pytest.approx(1.0) and "akt (n=1, no CI)" in _legend_texts(fig)
    assert "no CI: one seed a side" in fig.get_suptitle()
    two = load_side(write_trials(tmp_path / "two.csv", [trial_row(loss=loss, seed=s, top1_last=v + s)
                                                        for loss, v in (("kd", 70.0), ("akt", 71.0)) for s in (0, 1)]))
    (ax,) = _figure(gain_over_kd, two).axes
    assert [c for c in ax.containers if isinstance(c, BarContainer)]


def test_results_at_chance_are_drawn_hollow_or_hatched_and_named_in_the_legend(tmp_path):
    from zsqbench.leaderboard.plots import accuracy_vs_bits, gain_over_kd

    rows = [trial_row("adadfq", loss, bits, seed, v + seed * 0.5) for seed in (0, 1)
            for loss, bits, v in (("kd", 3, 60.0), ("akt", 3, 10.0), ("kd", 4, 70.0), ("akt", 4, 71.0))]
    side = load_side(write_trials(tmp_path / "t.csv", rows))
    fig = _figure(accuracy_vs_bits, side.aggregated)
    hollow = [line for line in fig.axes[0].get_lines() if line.get_markerfacecolor() == "none"]
    assert [(list(h.get_xdata()), list(h.get_ydata())) for h in hollow] == [([0], [10.25])]  # akt W3A3 only
    assert "hollow: at chance (not a result)" in _legend_texts(fig)
    fig = _figure(gain_over_kd, side)
    hatched = [p for p in fig.axes[0].patches if p.get_hatch() == "//"]
    assert len(hatched) == 1 and hatched[0].get_height() == pytest.approx(10.25 - 60.25)
    assert any("a side at chance, gain not meaningful" in t for t in _legend_texts(fig))


def test_training_curves_of_16_trials_have_a_legend_distinct_colours_and_a_scale_for_any_loss():
    from matplotlib.colors import to_hex

    from zsqbench.leaderboard.curves import symlog_threshold, training_curves

    methods = [("adadfq", "akt"), ("adadfq", "kd"), ("hast", "akt"), ("hast", "kd")]
    results = []
    for (g, loss) in methods:
        for bits in (3, 4):
            for seed in (0, 1):
                row = trial_row(g, loss, bits, seed, 10.0 if g == "adadfq" and loss == "akt" else 60.0 + bits)
                total = -917.0 if loss == "akt" and g == "adadfq" else 1.2 - 0.1 * seed
                results.append(result_from_row(row, [{"epoch": 0, "top1": row["ptq_top1"]},
                                                     {"epoch": 1, "top1": row["top1_last"], "losses": {"total": total}},
                                                     {"epoch": 2, "top1": row["top1_last"],
                                                      "losses": {"total": total * 0.9}}]))
    fig = _figure(training_curves, results)
    texts = _legend_texts(fig)
    assert {"adadfq+akt", "adadfq+kd", "hast+akt", "hast+kd", "W3A3", "W4A4", "seed 0", "seed 1"} <= set(texts)
    assert "hollow: at chance (not a result)" in texts
    top1, total = fig.axes[0], fig.axes[1]
    lines = top1.get_lines()
    assert len(lines) == 16 and len({to_hex(line.get_color()) for line in lines}) == 4  # one colour per method
    assert len({(to_hex(line.get_color()), str(line.get_linestyle()), line.get_marker()) for line in lines}) == 16
    assert sum(line.get_markerfacecolor() == "none" for line in lines) == 4  # the 4 adadfq+akt trials at chance
    assert total.get_yscale() == "symlog"  # -917 beside values near 1: both signs and magnitudes stay visible
    assert symlog_threshold([1.2, 1.08, 1.0]) is None and symlog_threshold([-917.0, 1.0]) == 1.0
    assert symlog_threshold([0.05, 2.0]) == pytest.approx(0.01)
