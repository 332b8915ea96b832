"""Tests for clipcl.results.matrix_io.load_matrix (CSV, NPY, JSON and their errors)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from clipcl.errors import ClipclError
from clipcl.results.matrix_io import load_matrix, percent_matrix


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_csv_plain(tmp_path: Path) -> None:
    got = load_matrix(_write(tmp_path, "m.csv", "1,2\n3,4\n"))
    assert got.matrix.dtype == np.float64
    assert got.matrix.tolist() == [[1.0, 2.0], [3.0, 4.0]]
    assert got.tasks is None and got.counts is None


def test_csv_header_row(tmp_path: Path) -> None:
    got = load_matrix(_write(tmp_path, "m.csv", "Aircraft, DTD\n80.5,40\n70,90\n\n"))
    assert got.tasks == ["Aircraft", "DTD"]
    assert got.matrix.tolist() == [[80.5, 40.0], [70.0, 90.0]]


@pytest.mark.parametrize("corner", ["", "after", "Trained"])
def test_csv_header_and_row_labels(tmp_path: Path, corner: str) -> None:
    text = f"{corner},Aircraft,DTD\nAircraft,80,40\nDTD,70,90\n"
    got = load_matrix(_write(tmp_path, "m.csv", text))
    assert got.tasks == ["Aircraft", "DTD"]
    assert got.matrix.tolist() == [[80.0, 40.0], [70.0, 90.0]]


def test_csv_row_labels_without_corner(tmp_path: Path) -> None:
    got = load_matrix(_write(tmp_path, "m.csv", "a,b\na,1,2\nb,3,4\n"))
    assert got.tasks == ["a", "b"]
    assert got.matrix.tolist() == [[1.0, 2.0], [3.0, 4.0]]


def test_csv_empty_cells_are_nan(tmp_path: Path) -> None:
    got = load_matrix(_write(tmp_path, "cil.csv", "90,,\n95,80,\n60,75,85\n"))
    m = got.matrix
    assert math.isnan(m[0, 1]) and math.isnan(m[0, 2]) and math.isnan(m[1, 2])
    assert m[2].tolist() == [60.0, 75.0, 85.0]


def test_csv_utf8_bom(tmp_path: Path) -> None:
    path = tmp_path / "bom.csv"
    path.write_bytes("\ufeffA,B\n1,2\n3,4\n".encode())
    assert load_matrix(path).tasks == ["A", "B"]


def test_csv_ragged(tmp_path: Path) -> None:
    with pytest.raises(ClipclError, match=r"m\.csv: ragged CSV: line 3 has 1 values but line 2"):
        load_matrix(_write(tmp_path, "m.csv", "A,B\n1,2\n3\n"))


def test_csv_non_numeric_cell_names_line_and_column(tmp_path: Path) -> None:
    with pytest.raises(ClipclError, match=r"non-numeric cell 'oops' at line 3, column 2"):
        load_matrix(_write(tmp_path, "m.csv", "A,B\n1,2\n3,oops\n"))


def test_csv_infinite_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ClipclError, match="line 2, column 1"):
        load_matrix(_write(tmp_path, "m.csv", "1,2\ninf,4\n"))


def test_csv_non_square(tmp_path: Path) -> None:
    with pytest.raises(ClipclError, match=r"square.*2 x 3"):
        load_matrix(_write(tmp_path, "m.csv", "1,2,3\n4,5,6\n"))


def test_csv_header_length_mismatch(tmp_path: Path) -> None:
    with pytest.raises(ClipclError, match=r"3 task names for a 2 x 2"):
        load_matrix(_write(tmp_path, "m.csv", "A,B,C\n1,2\n3,4\n"))


@pytest.mark.parametrize("text", ["", "\n\n", ",,\n", "A,B\n"])
def test_csv_empty(tmp_path: Path, text: str) -> None:
    with pytest.raises(ClipclError, match="empty"):
        load_matrix(_write(tmp_path, "m.csv", text))


def test_csv_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    path.write_bytes(b"\xff\xfe\x00\x81,1\n")
    with pytest.raises(ClipclError, match="UTF-8"):
        load_matrix(path)


def test_npy_round_trip(tmp_path: Path) -> None:
    arr = np.array([[1.5, np.nan], [3.0, 4.0]], dtype=np.float32)
    path = tmp_path / "m.npy"
    np.save(path, arr)
    got = load_matrix(path)
    assert got.matrix.dtype == np.float64
    np.testing.assert_array_equal(got.matrix, arr.astype(np.float64))
    assert got.tasks is None


def test_npy_integer_array(tmp_path: Path) -> None:
    path = tmp_path / "m.npy"
    np.save(path, np.arange(4).reshape(2, 2))
    assert load_matrix(path).matrix.tolist() == [[0.0, 1.0], [2.0, 3.0]]


def test_npy_not_2d(tmp_path: Path) -> None:
    path = tmp_path / "m.npy"
    np.save(path, np.zeros((2, 2, 2)))
    with pytest.raises(ClipclError, match=r"2-D.*3-D"):
        load_matrix(path)


def test_npy_non_square(tmp_path: Path) -> None:
    path = tmp_path / "m.npy"
    np.save(path, np.zeros((2, 3)))
    with pytest.raises(ClipclError, match="2 x 3"):
        load_matrix(path)


def test_npy_object_array_refused(tmp_path: Path) -> None:
    path = tmp_path / "m.npy"
    np.save(path, np.array([[1, "a"], [None, 2]], dtype=object), allow_pickle=True)
    with pytest.raises(ClipclError, match="cannot load"):
        load_matrix(path)


def test_npy_string_array_refused(tmp_path: Path) -> None:
    path = tmp_path / "m.npy"
    np.save(path, np.array([["a", "b"], ["c", "d"]]))
    with pytest.raises(ClipclError, match="non-numeric dtype"):
        load_matrix(path)


def test_npy_garbage(tmp_path: Path) -> None:
    path = tmp_path / "m.npy"
    path.write_bytes(b"not a numpy file")
    with pytest.raises(ClipclError, match=r"m\.npy: cannot load"):
        load_matrix(path)


def test_json_list_of_lists_with_null(tmp_path: Path) -> None:
    got = load_matrix(_write(tmp_path, "m.json", "[[90, null], [70, 80.5]]"))
    assert math.isnan(got.matrix[0, 1])
    assert got.matrix[1].tolist() == [70.0, 80.5]


def test_json_object_with_tasks_and_counts(tmp_path: Path) -> None:
    data = {"matrix": [[90, None], [70, 80]], "tasks": ["a", "b"], "counts": [100, 300]}
    got = load_matrix(_write(tmp_path, "m.json", json.dumps(data)))
    assert got.tasks == ["a", "b"]
    assert got.counts == [100.0, 300.0]
    assert got.matrix[1].tolist() == [70.0, 80.0]


def test_json_object_extra_metadata_ignored(tmp_path: Path) -> None:
    data = {"matrix": [[1]], "method": "zscl", "protocol": "mtil"}
    assert load_matrix(_write(tmp_path, "m.json", json.dumps(data))).matrix.tolist() == [[1.0]]


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ({"matrix": [[1, 2], [3, 4]], "tasks": ["a"]}, "1 task names for a 2 x 2"),
        ({"matrix": [[1, 2], [3, 4]], "counts": [1, 2, 3]}, "3 counts for a 2 x 2"),
        ({"matrix": [[1, 2], [3, 4]], "tasks": [1, 2]}, "list of task-name strings"),
        ({"matrix": [[1, 2], [3, 4]], "counts": [1, None]}, r"'counts', entry 2"),
        ({"matrx": [[1]]}, "did you mean 'matrix'"),
        ({"tasks": ["a"]}, "no 'matrix' key"),
        ([[1, 2], [3]], "ragged"),
        ([[1, 2], [3, "x"]], r"matrix row 2, entry 2 is 'x'"),
        ([[1, 2], [3, True]], "expected a number or null"),
        ([[1, 2], 3], "matrix row 2 must be a list"),
        ([[1, 2, 3], [4, 5, 6]], "2 x 3"),
        ([], "empty"),
        ([[]], "empty"),
        ("hello", "expected a list of rows"),
    ],
)
def test_json_errors(tmp_path: Path, data: object, match: str) -> None:
    with pytest.raises(ClipclError, match=match):
        load_matrix(_write(tmp_path, "m.json", json.dumps(data)))


def test_json_invalid(tmp_path: Path) -> None:
    with pytest.raises(ClipclError, match=r"m\.json: invalid JSON.*line 1"):
        load_matrix(_write(tmp_path, "m.json", "[[1, 2]"))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ClipclError, match=r"nope\.csv: matrix file not found"):
        load_matrix(tmp_path / "nope.csv")


@pytest.mark.parametrize("name", ["m.txt", "m.xlsx", "m"])
def test_unsupported_suffix(tmp_path: Path, name: str) -> None:
    path = _write(tmp_path, name, "1")
    with pytest.raises(ClipclError, match=r"unsupported.*allowed: \.csv, \.npy, \.json"):
        load_matrix(path)


def test_suffix_case_insensitive(tmp_path: Path) -> None:
    assert load_matrix(_write(tmp_path, "M.CSV", "5\n")).matrix.tolist() == [[5.0]]


def test_error_message_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(ClipclError) as info:
        load_matrix(_write(tmp_path, "m.csv", "1,2\n3\n"))
    assert "\n" not in str(info.value)


# --- issue 14 ---


def test_json_unknown_key_is_an_error(tmp_path: Path) -> None:
    data = {"matrix": [[90, None], [80, 70]], "weights": [1, 3]}
    with pytest.raises(ClipclError, match=r"m\.json: unknown key 'weights'.*matrix, tasks, counts"):
        load_matrix(_write(tmp_path, "m.json", json.dumps(data)))


def test_json_chain_run_payload_loads(tmp_path: Path) -> None:
    # what `clipcl chain run --json` prints: its metadata keys are known and ignored
    data = {"chain_id": "c", "protocol": "til", "tasks": ["a"], "matrix": [[5]], "metrics": {}}
    assert load_matrix(_write(tmp_path, "m.json", json.dumps(data))).matrix.tolist() == [[5.0]]


def test_csv_inf_in_first_row_is_a_number(tmp_path: Path) -> None:
    for text in ("inf,2\n3,4\n", "1,-Infinity\n3,4\n"):
        with pytest.raises(ClipclError, match=r"infinite value .* at line 1, column \d"):
            load_matrix(_write(tmp_path, "m.csv", text))


def test_csv_semicolon_delimited_is_named(tmp_path: Path) -> None:
    for text in ("90;20\n80;70\n", "A;B\n90;20\n80;70\n", "90,5;20,1\n80,2;70,3\n"):
        with pytest.raises(ClipclError, match=r"m\.csv: .*semicolon-delimited.*expected ','"):
            load_matrix(_write(tmp_path, "m.csv", text))


def test_percent_matrix_range(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    nan = math.nan
    ok = np.array([[90.0, nan], [0.0, 100.0]])
    np.testing.assert_array_equal(percent_matrix(path, ok, fraction=False), ok)
    with pytest.raises(
        ClipclError, match=r"m\.csv: accuracy 100\.5 at row 2, column 1 .*\[0, 100\]"
    ):
        percent_matrix(path, np.array([[90.0, nan], [100.5, 3.0]]), fraction=False)
    with pytest.raises(ClipclError, match=r"m\.csv: accuracy -0\.5 at row 1, column 1"):
        percent_matrix(path, np.array([[-0.5]]), fraction=False)
    with pytest.raises(ClipclError, match=r"m\.csv: every accuracy is in \[0, 1\].*--fraction"):
        percent_matrix(path, np.array([[0.9, nan], [0.5, 1.0]]), fraction=False)
    got = percent_matrix(path, np.array([[0.9, nan], [0.5, 1.0]]), fraction=True)
    np.testing.assert_allclose(got, [[90.0, nan], [50.0, 100.0]])
    with pytest.raises(ClipclError, match=r"accuracy 300 at row 1, column 1.*--fraction"):
        percent_matrix(path, np.array([[3.0]]), fraction=True)
