"""cytocore.tables: every problem kind, with its line, all reported at once; typed output."""
from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest

from cytocore import tables
from cytocore.io import DataError

pytestmark = pytest.mark.unit

HEADER = "NAME,x1,y1,x2,y2,class\n"


def write(tmp_path, text: str | bytes, name: str = "train.csv"):
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


def where(problems) -> list[tuple[int | None, str | None, str]]:
    return sorted((p.line or 0, p.column or "", p.level) for p in problems)


def test_good_train_is_typed(tmp_path):
    path = write(tmp_path, HEADER + "a.jpg,-3,2.5,30,40,PNN\nb.jpg,1,2,3,4,LH_lyAct\n")
    table = tables.read_train(path)
    assert list(table.columns) == ["NAME", "x1", "y1", "x2", "y2", "class"]
    for col in tables.COORDS:
        assert table[col].dtype == np.float64
    assert table["x1"].tolist() == [-3.0, 1.0]
    assert table["y1"].tolist() == [2.5, 2.0]
    assert table["NAME"].tolist() == ["a.jpg", "b.jpg"]
    assert table["class"].tolist() == ["PNN", "LH_lyAct"]


def test_header_class_capitalised(tmp_path):
    path = write(tmp_path, "NAME,x1,y1,x2,y2,Class\na.jpg,1,2,3,4,PNN\n")
    table, problems = tables.inspect(path, "train")
    assert table is None
    assert where(problems) == [(1, "", "error"), (1, "Class", "error")]
    assert "should be spelled 'class'" in problems[1].message
    with pytest.raises(DataError, match=r"train\.csv:1: error"):
        tables.read_train(path)


def test_missing_column_named(tmp_path):
    path = write(tmp_path, "NAME,x1,y1,x2,y2\na.jpg,1,2,3,4\n")
    _, problems = tables.inspect(path, "train")
    assert (1, "class", "error") in where(problems)


def test_every_row_problem_reported_at_once(tmp_path):
    text = HEADER + (
        "a.jpg,1,nan,3,4,PNN\n"        # line 2: NaN y1
        "b.jpg,5,2,3,4,LH_LyAc\n"      # line 3: x2 < x1 and a misspelled class
        "c.jpg,1,2,3,4,PNN\n"          # line 4
        "c.jpg,1,2,3,4,PNN\n"          # line 5: duplicate of line 4 (warning)
        ",1,2,3,4,PNN\n"               # line 6: empty name
        "e.jpg,1,2,3,2,XX\n"           # line 7: y2 == y1 and an unknown class
    )
    table, problems = tables.inspect(write(tmp_path, text), "train")
    assert where(problems) == [
        (2, "y1", "error"),
        (3, "class", "error"),
        (3, "x2", "error"),
        (5, "", "warning"),
        (6, "NAME", "error"),
        (7, "class", "error"),
        (7, "y2", "error"),
    ]
    by_line = {(p.line, p.column): p.message for p in problems}
    assert by_line[(2, "y1")] == "not a finite number: 'nan'"
    assert by_line[(3, "x2")] == "x2 (3) must be greater than x1 (5)"
    assert by_line[(3, "class")] == "unknown class 'LH_LyAc'; did you mean 'LH_lyAct'?"
    assert by_line[(5, None)] == "duplicate row (same as line 4)"
    assert "valid codes: PNN, Lysee" in by_line[(7, "class")]
    assert len(table) == 6  # the table is still returned, every row kept
    with pytest.raises(DataError) as err:
        tables.read_train(write(tmp_path, text))
    assert str(err.value).splitlines()[-1] == "6 error(s), 1 warning(s)"
    assert len(err.value.problems) == 7


def test_duplicate_train_row_is_a_warning(tmp_path, caplog):
    path = write(tmp_path, HEADER + "a.jpg,1,2,3,4,PNN\nb.jpg,1,2,3,4,MO\na.jpg,1,2,3,4,PNN\n")
    with caplog.at_level(logging.WARNING):
        table = tables.read_train(path)
    assert len(table) == 3
    assert "train.csv:4: warning: duplicate row (same as line 2)" in caplog.text


def test_infinite_coordinate(tmp_path):
    _, problems = tables.inspect(write(tmp_path, HEADER + "a.jpg,inf,2,3,4,PNN\n"), "train")
    assert [(p.line, p.column, p.message) for p in problems] == [(2, "x1", "not a finite number: 'inf'")]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "file is empty"),
        (b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00\xff\xdb",
         "not a text CSV file"),
        (np.random.default_rng(0).bytes(512), "not a text CSV file"),
        (HEADER.encode(), "no data rows after the header"),
    ],
    ids=["empty", "jpeg-renamed", "binary", "header-only"],
)
def test_unreadable_files(tmp_path, content, message):
    table, problems = tables.inspect(write(tmp_path, content), "train")
    assert table is None
    assert len(problems) == 1 and message in problems[0].message
    assert problems[0].file.endswith("train.csv")


def test_missing_file_and_folder(tmp_path):
    _, problems = tables.inspect(tmp_path / "nope.csv", "train")
    assert problems[0].message == "file not found"
    _, problems = tables.inspect(tmp_path, "train")
    assert "is a folder" in problems[0].message


def test_test_table_ids(tmp_path):
    path = write(tmp_path, "trustii_id,NAME\n2,a.jpg\n7,b.jpg\n", "test.csv")
    table = tables.read_test(path)
    assert table["trustii_id"].dtype == np.int64
    assert table["trustii_id"].tolist() == [2, 7]
    bad = write(tmp_path, "trustii_id,NAME\n2,a.jpg\n2,b.jpg\nx,c.jpg\n", "test.csv")
    _, problems = tables.inspect(bad, "test")
    assert sorted((p.line, p.message) for p in problems) == [
        (3, "trustii_id 2 repeated (first on line 2)"),
        (4, "not an integer: 'x'"),
    ]


def test_duplicate_submission_row_is_an_error(tmp_path):
    text = "trustii_id,NAME,x1,y1,x2,y2,class\n2,a.jpg,1,2,3,4,PNN\n2,a.jpg,1,2,3,4,PNN\n"
    _, problems = tables.inspect(write(tmp_path, text, "sub.csv"), "submission")
    levels = sorted((p.line, p.level) for p in problems)
    assert levels == [(3, "error"), (3, "error")]  # repeated trustii_id + duplicate row


def test_unknown_kind():
    with pytest.raises(ValueError, match="valid kinds: train, test, submission"):
        tables.read("x.csv", "labels")


# --- rows whose field count differs, blank lines: reported on their own file line ---

def test_row_with_extra_field(tmp_path):
    path = write(tmp_path, HEADER + "a.jpg,1,2,3,4,PNN,extra\nb.jpg,1,2,3,4,PNN\n")
    _, problems = tables.inspect(path, "train")
    assert [p.line for p in problems] == [2]


def test_line_numbers_after_blank_lines(tmp_path):
    path = write(tmp_path, HEADER + "a.jpg,1,2,3,4,PNN\n\n\nb.jpg,1,2,3,4,PNX\n")
    _, problems = tables.inspect(path, "train")
    assert [p.line for p in problems] == [5]


def test_short_row_message(tmp_path):
    _, problems = tables.inspect(write(tmp_path, HEADER + "a.jpg,1,2\n"), "train")
    assert [p.message for p in problems] == ["row has fewer fields than the header (3 instead of 6)"]


def test_short_row_still_reported_on_its_line(tmp_path):
    _, problems = tables.inspect(write(tmp_path, HEADER + "a.jpg,1,2,3,4,PNN\nb.jpg,1,2\n"), "train")
    assert [(p.line, p.column) for p in problems] == [(3, None)]


def test_read_train_on_real_file(real_train_csv):
    table = tables.read_train(real_train_csv)
    assert len(table) == 52_748
    assert table["NAME"].nunique() == 48_417
    assert isinstance(table, pd.DataFrame) and set(table["class"]) <= set(tables.classes.CLASSES)
