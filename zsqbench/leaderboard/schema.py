"""The leaderboard's columns, once: per-trial and aggregated tables, their types and meanings.

Every reader, writer and view takes its columns from here; README.md documents the same lists
(a test keeps them in step). Compute settings are columns of their own (``precision``,
``channels_last``, ``compile``, ``tf32``), never parsed out of a display label.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import pandas as pd

from zsqbench.runs.result_file import trial_profile

Kind = Literal["per-trial", "aggregated"]
CellType = Literal["text", "int", "float", "bool"]


@dataclass(frozen=True)
class Column:
    name: str
    type: CellType
    doc: str  # its meaning in a per-trial table
    aggregated_doc: str | None = None  # its meaning in an aggregated table, where different


_COLUMNS = (
    Column("trial_id", "text", "hash of the canonical trial spec (teacher checkpoint included)"),
    Column("run", "text", "name of the run folder under the results directory"),
    Column("model", "text", "teacher name"),
    Column("dataset", "text", "cifar10 / cifar100"),
    Column("generator", "text", "generator plugin"),
    Column("loss", "text", "loss plugin"),
    Column("quantizer", "text", "quantizer plugin"),
    Column("profile", "text", "quantizer profile, the quantization convention (uniform: zsq-asym-pc, first-last-8bit, "
           "sym-pc, ort-int8, ort-int4w; docs/methods/uniform.md#profiles); results and tables from before profiles "
           "read zsq-asym-pc",
           "quantizer profile, the quantization convention ('unknown' for a published number whose convention is not "
           "known)"),
    Column("w_bits", "int", "weight bits"),
    Column("a_bits", "int", "activation bits"),
    Column("seed", "int", "trial seed"),
    Column("budget", "text", "budget preset name",
           "budget preset name ('paper' for published reference rows)"),
    Column("n_seeds", "int", "", "number of finished trials (one per seed) in the row"),
    Column("seeds", "text", "", "their seeds, ';'-separated (empty for reference rows)"),
    Column("top1_last_mean", "float", "",
           "mean over seeds of top1_last (%): the headline number (reference rows: the published number)"),
    Column("top1_last_std", "float", "", "sample standard deviation (ddof=1) of top1_last over seeds; empty with one seed"),
    Column("top1_last_ci95", "float", "",
           "half-width of the 95 % t confidence interval of top1_last_mean (t(0.975, n−1) · std / √n); empty with "
           "one seed"),
    Column("top1_oracle_mean", "float", "",
           "ORACLE: mean over seeds of the best epoch's top-1 (%), selected on the test set; not a result"),
    Column("top1_oracle_std", "float", "", "ORACLE: sample standard deviation (ddof=1) of top1_oracle; empty with one seed"),
    Column("epochs", "int", "epochs (warm-up included)",
           "epochs (warm-up included), identical within the row (empty for reference rows)"),
    Column("iters_per_epoch", "int", "iterations per epoch",
           "iterations per epoch, identical within the row (empty for reference rows)"),
    Column("batch_size", "int", "batch size", "batch size, identical within the row (empty for reference rows)"),
    Column("warmup_epochs", "int", "calibration epochs without student updates"),
    Column("ptq_only", "bool", "True for a post-training-quantization trial (epochs = warmup_epochs: the student is "
           "calibrated, never trained), so its top1_last is a PTQ accuracy",
           "True for post-training-quantization trials (no student update), identical within the row"),
    Column("recipe", "text", "the student's training recipe in a few words, from the spec: the student lr and the KD "
           "term of the generator's native loss (e.g. 'lr 1e-6, 8000·KL_bm', 'lr 1e-4, 400·KL_mean + CE', 'own loss' "
           "for AdaDFQ's, 'no training (PTQ)'); empty in tables written before the column existed",
           "the student recipe of the row's trials, identical within the row (empty for reference rows and tables "
           "written before the column existed)"),
    Column("fp_top1", "float", "FP teacher top-1 (%) measured on the full test set",
           "FP teacher top-1 (%) measured on the full test set (mean over the row's trials)"),
    Column("ptq_top1", "float", "student top-1 (%) after calibration, before any student update"),
    Column("ptq_top1_mean", "float", "", "mean student top-1 (%) after calibration, before any student update"),
    Column("top1_last", "float", "student top-1 (%) after the last epoch: the headline number"),
    Column("top1_oracle", "float", "ORACLE: best student top-1 (%) over epochs, selected on the test set"),
    Column("at_chance", "bool", "True when top1_last is no better than chance (≤ 1.5 × 100 / the dataset's classes: "
           "cifar10 ≤ 15 %, cifar100 ≤ 1.5 %): the trial ran, but its number is not a result; every view flags it"),
    Column("n_at_chance", "int", "", "how many of the row's trials finished at chance (at_chance); every view flags the "
           "row when any did"),
    Column("onnx_top1", "float", "top-1 (%) of the trial's verified ONNX export in ONNX Runtime (`zsqbench export`, "
           "`run --export onnx`); empty when not exported"),
    Column("onnx_kib", "float", "size of the trial's verified ONNX export at the true bit-widths (KiB: each weight at its "
           "bits, biases, scales and float parameters as stored); empty when not exported"),
    Column("onnx_latency_ratio", "float", "ONNX Runtime milliseconds per batch of the export over the FP32 teacher's, "
           "at batch 100 and 2 threads on the machine that exported it (< 1: faster; deployable profiles measure it, "
           "docs/deployment.md); empty when not exported or measured otherwise"),
    Column("onnx_top1_mean", "float", "", "mean over seeds of onnx_top1; empty unless every trial of the row was exported"),
    Column("wall_s", "float", "wall-clock seconds of the trial"),
    Column("cpu_hours", "float", "",
           "sum of wall_s / 3600 over the row's trials run on a CPU (device starting with 'cpu')"),
    Column("gpu_hours", "float", "", "sum of wall_s / 3600 over the row's trials run on any other device (a GPU)"),
    Column("flags", "text", "training warnings: exploding_gradients (an epoch's max student gradient norm > 100x the "
           "first training epoch's mean), warnings (see result.json, e.g. a zero feature term)"),
    Column("device", "text", "device the trial ran on"),
    Column("machine", "text", "machine kind the trial ran on: the CPU's model and vector capability, or the GPU "
           "(result.json's machine.kind; results from before it: the device); the same seed gives different numbers "
           "on different kinds"),
    Column("machines", "text", "", "the machine kinds of the row's trials, ';'-separated (empty for reference rows)"),
    Column("precision", "text", "precision of the convolutions: fp32 or bf16 (--precision)",
           "precision of the convolutions, identical within the row (empty for reference rows)"),
    Column("channels_last", "bool", "whether the networks ran in channels-last memory format"),
    Column("compile", "bool", "whether the networks were compiled with torch.compile"),
    Column("tf32", "bool", "TF32 in CUDA matmuls/convs allowed (True), forbidden (False), or PyTorch's defaults (empty)"),
    Column("teacher_weights", "text", "pinned checkpoint tag (or 'unpinned')"),
    Column("teacher_sha256", "text", "sha256 of the teacher weights file",
           "sha256 of the teacher weights, identical within the row (empty for reference rows)"),
    Column("data_sha256", "text", "sha256 of the test-set file"),
    Column("zsqbench_version", "text", "zsqbench version"),
    Column("torch_version", "text", "PyTorch version"),
    Column("git_hash", "text", "git commit of zsqbench ('+dirty' if modified)"),
    Column("finished_at", "text", "UTC time the trial finished"),
    Column("source", "text", "", "'zsqbench' for rows aggregated from trials, 'reference' for published numbers"),
    Column("note", "text", "", "free text: for reference rows, where the numbers come from and how they were selected"),
    Column("status", "text", "", ""),  # only in hand-made tables: a failed trial's row is never aggregated
)
COLUMNS: dict[str, Column] = {c.name: c for c in _COLUMNS}

PER_TRIAL: tuple[str, ...] = (
    "trial_id", "run", "model", "dataset", "generator", "loss", "quantizer", "profile", "w_bits", "a_bits", "seed",
    "budget", "epochs", "iters_per_epoch", "batch_size", "warmup_epochs", "ptq_only", "recipe", "fp_top1", "ptq_top1", "top1_last",
    "top1_oracle", "at_chance", "onnx_top1", "onnx_kib", "onnx_latency_ratio", "wall_s", "flags", "device", "machine", "precision", "channels_last",
    "compile", "tf32",
    "teacher_weights", "teacher_sha256", "data_sha256", "zsqbench_version", "torch_version", "git_hash", "finished_at",
)
AGGREGATED: tuple[str, ...] = (
    "model", "dataset", "generator", "loss", "quantizer", "profile", "w_bits", "a_bits", "budget", "n_seeds", "seeds",
    "top1_last_mean", "top1_last_std", "top1_last_ci95", "top1_oracle_mean", "top1_oracle_std", "n_at_chance", "fp_top1",
    "ptq_top1_mean", "onnx_top1_mean", "epochs", "iters_per_epoch", "batch_size", "ptq_only", "recipe", "precision",
    "teacher_sha256", "cpu_hours", "gpu_hours", "machines", "source", "note",
)

#: A configuration: everything that defines an aggregated row except the seed.
KEY_COLUMNS: tuple[str, ...] = ("model", "dataset", "generator", "loss", "quantizer", "profile", "w_bits", "a_bits",
                                 "budget")
BUDGET_SETTINGS: tuple[str, ...] = ("epochs", "iters_per_epoch", "batch_size")

#: What each kind needs present and non-empty in every counted row to be aggregated or compared.
REQUIRED: dict[Kind, tuple[str, ...]] = {
    "per-trial": (
        "trial_id", "model", "dataset", "generator", "loss", "quantizer", "w_bits", "a_bits", "budget", "seed",
        "epochs", "iters_per_epoch", "batch_size", "fp_top1", "ptq_top1", "top1_last", "top1_oracle", "wall_s",
        "device", "teacher_sha256",
    ),
    "aggregated": (
        "model", "dataset", "generator", "loss", "quantizer", "w_bits", "a_bits", "budget", "n_seeds",
        "top1_last_mean", "source",
    ),
}


def columns(kind: Kind) -> tuple[str, ...]:
    return PER_TRIAL if kind == "per-trial" else AGGREGATED


def documented(kind: Kind) -> dict[str, str]:
    """Column -> meaning, in table order (what README.md lists)."""
    if kind == "per-trial":
        return {n: COLUMNS[n].doc for n in PER_TRIAL}
    return {n: COLUMNS[n].aggregated_doc or COLUMNS[n].doc for n in AGGREGATED}


def of_type(cell_type: CellType) -> tuple[str, ...]:
    return tuple(c.name for c in _COLUMNS if c.type == cell_type)


def is_missing(value: Any) -> bool:
    """The one missing-value rule: None, pandas' NA/NaT, or a float NaN."""
    if value is None or value is pd.NA or value is pd.NaT:
        return True
    return isinstance(value, float) and math.isnan(value)


#: What a spreadsheet reads as the start of a formula (``=HYPERLINK(...)``, ``+``, ``-``, ``@``; a tab
#: or carriage return first makes some read the rest as one). Result fields a user may have edited
#: (a run name, a device, flags) reach text cells, so a CSV must not open them as formulas.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
#: The prefix that makes a spreadsheet show a cell as text (and hide the prefix).
TEXT_MARK = "'"


def escape_text(value: Any) -> Any:
    """A text cell as a CSV holds it: one ``'`` before a formula start, or before a ``'`` that
    starts the text (so that :func:`unescape_text` can tell the two apart); anything else unchanged."""
    if isinstance(value, str) and value.startswith((*FORMULA_STARTS, TEXT_MARK)):
        return TEXT_MARK + value
    return value


def unescape_text(value: Any) -> Any:
    """The text :func:`escape_text` was given. A ``'`` followed by anything else was not written by
    it (a CSV from before escaping, or hand-made) and is kept."""
    if isinstance(value, str) and value.startswith(TEXT_MARK) and value[1:].startswith((*FORMULA_STARTS, TEXT_MARK)):
        return value[1:]
    return value


def _text_columns(frame: pd.DataFrame) -> list[Any]:
    """Columns that may hold text: all but the numeric and boolean ones of the schema, and only
    those pandas keeps as strings (numbers, negative ones included, stay numbers)."""
    typed = set(of_type("int")) | set(of_type("float")) | set(of_type("bool"))
    return [c for c in frame.columns if c not in typed
            and (pd.api.types.is_object_dtype(frame[c]) or pd.api.types.is_string_dtype(frame[c]))]


def to_csv_text(frame: pd.DataFrame) -> str:
    """The one CSV rendering of a table (a results folder's leaderboard.csv, ``leaderboard --csv``):
    text cells escaped against formulas (:func:`escape_text`); the strict reader undoes it."""
    frame = frame.copy()
    for col in _text_columns(frame):
        frame[col] = frame[col].map(escape_text)
    return frame.to_csv(index=False)


def unescape_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """A table read from a CSV with its text cells as they were before :func:`to_csv_text`."""
    for col in _text_columns(frame):
        frame[col] = frame[col].map(unescape_text)
    return frame


def plain(value: Any) -> Any:
    """A cell as a JSON-friendly Python value (numpy/pandas scalars unwrapped; missing -> None)."""
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    return None if is_missing(value) else value


def machine_kinds(frame: pd.DataFrame) -> list[str]:
    """The machine kinds a table's trials ran on: a per-trial table's ``machine`` (else its
    ``device``, as results from before machine kinds say it), an aggregated one's ``machines``."""
    if "machines" in frame.columns:
        cells = frame["machines"].dropna().astype(str)
        return sorted({kind for cell in cells for kind in cell.split(";") if kind.strip()})
    column = frame["machine"] if "machine" in frame.columns else None
    if column is None or column.isna().all():
        column = frame["device"] if "device" in frame.columns else pd.Series(dtype=object)
    elif "device" in frame.columns:
        column = column.where(column.notna(), frame["device"])
    return sorted({str(k) for k in column.dropna() if str(k).strip()})


def with_profiles(frame: pd.DataFrame) -> pd.DataFrame:
    """The table with a ``profile`` in every row: tables written before quantizer profiles (no
    column, or empty cells) read each row's quantizer's default profile
    (:func:`~zsqbench.runs.result_file.trial_profile`: ``zsq-asym-pc`` for ``uniform``)."""
    if "quantizer" not in frame.columns or ("profile" in frame.columns and frame["profile"].notna().all()):
        return frame
    frame = frame.copy()
    defaults = pd.Series([trial_profile(q) for q in frame["quantizer"]], index=frame.index, dtype="object")
    if "profile" not in frame.columns:
        frame["profile"] = defaults
    else:
        frame["profile"] = frame["profile"].astype("object").where(frame["profile"].notna(), defaults)
    return frame
