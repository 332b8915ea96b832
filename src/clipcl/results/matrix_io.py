"""Reading accuracy-matrix files (.csv, .npy, .json) for ``clipcl score``.

This module owns parsing and validating a user-supplied matrix file into a float64 T x T
array plus optional task names and per-task test-sample counts, and checking that the
accuracies are percentages (:func:`percent_matrix`). Every problem with the file is reported
as a one-line :class:`~clipcl.errors.ClipclError` naming the file.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from clipcl.errors import ClipclError, did_you_mean

__all__ = ["ALLOWED_SUFFIXES", "LoadedMatrix", "load_matrix", "percent_matrix"]

ALLOWED_SUFFIXES: tuple[str, ...] = (".csv", ".npy", ".json")
_JSON_KEYS: tuple[str, ...] = ("matrix", "tasks", "counts")
# Keys of the objects clipcl itself prints with a matrix (``chain run --json``, the
# ``results`` records): accepted and ignored, so those outputs can be scored as they are.
_JSON_METADATA_KEYS: tuple[str, ...] = (
    "chain_id",
    "method",
    "benchmark",
    "protocol",
    "seed",
    "zeroshot",
    "metrics",
)
# Words accepted in the top-left header cell above a column of row labels.
_CORNER_WORDS = frozenset({"", "after", "trained", "train", "task", "tasks", "row", "step", "t"})


@dataclass
class LoadedMatrix:
    """An accuracy matrix read from a file.

    Attributes:
        matrix: Float64 T x T matrix; empty cells / nulls are NaN.
        tasks: Task names in column order, when the file gives them.
        counts: Per-task test-sample counts, when the file gives them (JSON only).
    """

    matrix: np.ndarray
    tasks: list[str] | None = None
    counts: list[float] | None = None


def load_matrix(path: str | Path) -> LoadedMatrix:
    """Read an accuracy matrix file, choosing the format by suffix.

    Args:
        path: A ``.csv``, ``.npy`` or ``.json`` file.

    Returns:
        The validated square matrix with optional task names and counts.

    Raises:
        ClipclError: If the file is missing, has an unsupported suffix, cannot be parsed,
            or does not hold a non-empty square numeric matrix.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in ALLOWED_SUFFIXES:
        raise ClipclError(
            f"{path}: unsupported matrix file type '{suffix or '(none)'}'"
            f"{did_you_mean(suffix, ALLOWED_SUFFIXES)}; allowed: {', '.join(ALLOWED_SUFFIXES)}"
        )
    if not path.is_file():
        raise ClipclError(f"{path}: matrix file not found (expected a .csv, .npy or .json file)")
    if suffix == ".npy":
        return _load_npy(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise ClipclError(f"{path}: cannot read as UTF-8 text ({exc})") from exc
    return _load_csv(path, text) if suffix == ".csv" else _load_json(path, text)


def _parse_float(cell: str) -> float | None:
    """Return the number in ``cell`` (empty -> NaN; ``inf`` is a number), or None if it is
    not a number."""
    cell = cell.strip()
    if cell == "":
        return math.nan
    try:
        return float(cell)
    except ValueError:
        return None


def _is_text(cell: str) -> bool:
    return cell.strip() != "" and _parse_float(cell) is None


def _check_delimiter(path: Path, rows: list[list[str]]) -> None:
    """Name a semicolon-delimited file (every line has the same number, >= 1, of ';')
    instead of reporting its cells as non-numeric."""
    per_line = {sum(c.count(";") for c in row) for row in rows}
    if len(per_line) == 1 and min(per_line) >= 1:
        raise ClipclError(
            f"{path}: the file is semicolon-delimited (';' between cells); expected ',' "
            "between cells and '.' as the decimal point"
        )


def _finish(
    path: Path, rows: list[list[float]], tasks: list[str] | None, counts: list[float] | None
) -> LoadedMatrix:
    """Check shape and lengths shared by all formats and build the result."""
    if not rows or all(len(r) == 0 for r in rows):
        raise ClipclError(f"{path}: matrix is empty; expected a square T x T matrix, T >= 1")
    widths = {len(r) for r in rows}
    if len(widths) > 1:
        bad = next(i for i, r in enumerate(rows) if len(r) != len(rows[0]))
        raise ClipclError(
            f"{path}: ragged matrix: row 1 has {len(rows[0])} values but row {bad + 1} has "
            f"{len(rows[bad])}; every row needs one value per task (leave cells empty or "
            "null for missing values)"
        )
    matrix = np.asarray(rows, dtype=np.float64)
    if matrix.shape[0] != matrix.shape[1]:
        raise ClipclError(
            f"{path}: matrix must be square (one row per trained task, one column per eval "
            f"task); got shape {matrix.shape[0]} x {matrix.shape[1]}"
        )
    n_tasks = matrix.shape[0]
    if tasks is not None and len(tasks) != n_tasks:
        raise ClipclError(
            f"{path}: {len(tasks)} task names for a {n_tasks} x {n_tasks} matrix; need exactly "
            f"{n_tasks}"
        )
    if counts is not None and len(counts) != n_tasks:
        raise ClipclError(
            f"{path}: {len(counts)} counts for a {n_tasks} x {n_tasks} matrix; need exactly "
            f"{n_tasks}"
        )
    return LoadedMatrix(matrix=matrix, tasks=tasks, counts=counts)


def _load_csv(path: Path, text: str) -> LoadedMatrix:
    reader = csv.reader(io.StringIO(text, newline=""))
    lines: list[tuple[int, list[str]]] = []
    try:
        for row in reader:
            lines.append((reader.line_num, [c.strip() for c in row]))
    except csv.Error as exc:
        raise ClipclError(f"{path}: cannot parse CSV at line {reader.line_num} ({exc})") from exc
    lines = [(n, row) for n, row in lines if any(c != "" for c in row)]
    if not lines:
        raise ClipclError(f"{path}: matrix is empty; expected rows of comma-separated numbers")
    _check_delimiter(path, [row for _, row in lines])
    header: list[str] | None = None
    if any(_is_text(c) for c in lines[0][1]):
        header = lines[0][1]
        lines = lines[1:]
    # A first column of row labels: named by a corner cell above it, or text in every row.
    labelled = bool(lines) and all(_is_text(row[0]) for _, row in lines)
    if header is not None and len(header) == len(lines) + 1:
        labelled = labelled or header[0].lower() in _CORNER_WORDS
    rows: list[list[float]] = []
    for line_num, row in lines:
        cells = row[1:] if labelled else row
        values: list[float] = []
        for col, cell in enumerate(cells, start=2 if labelled else 1):
            value = _parse_float(cell)
            if value is None:
                raise ClipclError(
                    f"{path}: non-numeric cell {cell!r} at line {line_num}, column {col}; "
                    "cells must be finite numbers or empty (a header row of task names is "
                    "allowed only as the first row)"
                )
            if math.isinf(value):
                raise ClipclError(
                    f"{path}: infinite value {cell!r} at line {line_num}, column {col}; cells "
                    "must be finite numbers (accuracies in percent) or empty"
                )
            values.append(value)
        if rows and len(values) != len(rows[0]):
            raise ClipclError(
                f"{path}: ragged CSV: line {line_num} has {len(values)} values but line "
                f"{lines[0][0]} has {len(rows[0])}; every row needs one cell per task (leave "
                "cells empty for missing values)"
            )
        rows.append(values)
    tasks = None
    if header is not None:
        tasks = header[1:] if labelled and len(header) == len(rows) + 1 else header
    return _finish(path, rows, tasks, None)


def _load_npy(path: Path) -> LoadedMatrix:
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise ClipclError(f"{path}: cannot load as a numpy array ({exc})") from exc
    if not isinstance(arr, np.ndarray):
        raise ClipclError(f"{path}: expected a single .npy array, got {type(arr).__name__}")
    if arr.ndim != 2:
        raise ClipclError(f"{path}: expected a 2-D array (T x T); got {arr.ndim}-D {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
        raise ClipclError(f"{path}: array has non-numeric dtype {arr.dtype}; expected numbers")
    return _finish(path, arr.astype(np.float64).tolist(), None, None)


def _json_numbers(path: Path, values: Any, what: str, allow_null: bool) -> list[float]:
    if not isinstance(values, list):
        raise ClipclError(f"{path}: {what} must be a list, got {type(values).__name__}")
    out: list[float] = []
    for j, value in enumerate(values):
        if value is None and allow_null:
            out.append(math.nan)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            if math.isinf(value):
                raise ClipclError(f"{path}: {what}, entry {j + 1} is infinite")
            out.append(float(value))
        else:
            allowed = "a number or null" if allow_null else "a number"
            raise ClipclError(f"{path}: {what}, entry {j + 1} is {value!r}; expected {allowed}")
    return out


def _load_json(path: Path, text: str) -> LoadedMatrix:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ClipclError(f"{path}: invalid JSON ({exc})") from exc
    tasks: list[str] | None = None
    counts: list[float] | None = None
    if isinstance(data, dict):
        for key in data:
            if key not in _JSON_KEYS and key not in _JSON_METADATA_KEYS:
                raise ClipclError(
                    f"{path}: unknown key '{key}'{did_you_mean(key, _JSON_KEYS)}; allowed: "
                    f"matrix, tasks, counts (and, ignored, {', '.join(_JSON_METADATA_KEYS)})"
                )
        if "matrix" not in data:
            raise ClipclError(
                f"{path}: JSON object has no 'matrix' key; allowed: matrix, tasks, counts"
            )
        raw_tasks = data.get("tasks")
        if raw_tasks is not None:
            if not isinstance(raw_tasks, list) or not all(isinstance(t, str) for t in raw_tasks):
                raise ClipclError(f"{path}: 'tasks' must be a list of task-name strings")
            tasks = list(raw_tasks)
        if data.get("counts") is not None:
            counts = _json_numbers(path, data["counts"], "'counts'", allow_null=False)
        data = data["matrix"]
    if not isinstance(data, list):
        raise ClipclError(
            f"{path}: expected a list of rows or an object with a 'matrix' key; got "
            f"{type(data).__name__}"
        )
    rows = [_json_numbers(path, row, f"matrix row {i + 1}", True) for i, row in enumerate(data)]
    return _finish(path, rows, tasks, counts)


def percent_matrix(path: str | Path, matrix: np.ndarray, fraction: bool) -> np.ndarray:
    """Check that ``matrix`` holds accuracies in percent, converting fractions when asked.

    Args:
        path: The file the matrix came from (named in errors).
        matrix: The loaded matrix (NaN = not evaluated).
        fraction: The file holds fractions in [0, 1]; multiply by 100.

    Returns:
        The matrix in percent.

    Raises:
        ClipclError: If an entry is outside [0, 100] (after the conversion), or, without
            ``fraction``, every entry is within [0, 1] (fractions, most likely).
    """
    out = matrix * 100.0 if fraction else matrix
    bad = ~np.isnan(out) & ((out < 0) | (out > 100))
    if bad.any():
        row, col = (int(v[0]) for v in np.nonzero(bad))
        hint = "; --fraction multiplies every entry by 100" if fraction else ""
        raise ClipclError(
            f"{path}: accuracy {out[row, col]:g} at row {row + 1}, column {col + 1} is outside "
            f"[0, 100]; accuracies must be percentages{hint}"
        )
    finite = out[~np.isnan(out)]
    if not fraction and finite.size and finite.max() <= 1.0:
        raise ClipclError(
            f"{path}: every accuracy is in [0, 1], which looks like fractions; pass "
            "--fraction to multiply them by 100 (accuracies are percentages)"
        )
    return out
