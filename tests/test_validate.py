"""Submission validator: every problem with its line, exit status, image-size warnings."""
from __future__ import annotations

import pytest
from PIL import Image

from submit import validate
from submit.validate import validate_submission

pytestmark = pytest.mark.unit

HEADER = "trustii_id,NAME,x1,y1,x2,y2,class\n"
TEST = "trustii_id,NAME\n10,a.jpg\n11,a.jpg\n12,b.jpg\n"
GOOD = HEADER + "10,a.jpg,0,0,50,50,PNN\n11,a.jpg,10,10,60,60,MO\n12,b.jpg,0,0,79,59,LyB\n"


@pytest.fixture
def files(tmp_path):
    (tmp_path / "test.csv").write_text(TEST)

    def make(text: str):
        path = tmp_path / "sub.csv"
        path.write_text(text)
        return path, tmp_path / "test.csv"

    return make


def errors(problems):
    return [p for p in problems if p.level == "error"]


def test_good_submission_has_no_problem(files):
    assert validate_submission(*files(GOOD)) == []


def test_header_must_be_exact(files):
    problems = validate_submission(*files(GOOD.replace(",class\n", ",Class\n", 1)))
    assert problems and all(p.line == 1 for p in problems)
    assert any(p.column == "Class" and "should be spelled 'class'" in p.message for p in problems)


def test_rows_must_match_test_csv(files):
    text = (HEADER + "10,a.jpg,0,0,50,50,PNN\n99,a.jpg,10,10,60,60,MO\n11,b.jpg,0,0,79,59,LyB\n"
            "12,b.jpg,1,1,9,9,PNN\n")
    problems = errors(validate_submission(*files(text)))
    messages = [(p.line, p.message) for p in problems]
    assert (None, "4 rows, test.csv has 3 (one row per test.csv row)") in messages
    assert any(line == 3 and "trustii_id 99 is not in" in m for line, m in messages)
    assert any(line == 4 and "NAME 'b.jpg' but" in m and "gives 'a.jpg' for trustii_id 11" in m
               for line, m in messages)
    assert not any("no row for trustii_id" in m for _, m in messages)
    missing = errors(validate_submission(*files(HEADER + "10,a.jpg,0,0,50,50,PNN\n12,b.jpg,0,0,79,59,LyB\n")))
    assert any("no row for trustii_id 11 (" in p.message and "line 3" in p.message for p in missing)


def test_nan_class_typo_and_bad_boxes_each_reported_with_line(files):
    text = HEADER + "10,a.jpg,0,0,50,50,\n11,a.jpg,10,10,abc,60,LH_LyAc\n12,b.jpg,5,0,5,59,LyB\n"
    problems = errors(validate_submission(*files(text)))
    where = {(p.line, p.column) for p in problems}
    assert {(2, "class"), (3, "x2"), (3, "class"), (4, "x2")} <= where
    typo = [p for p in problems if p.line == 3 and p.column == "class"][0]
    assert "did you mean 'LH_lyAct'" in typo.message
    assert any(p.line == 4 and "must be greater than x1" in p.message for p in problems)


def test_duplicate_box_and_class_in_one_image(files):
    text = HEADER + "10,a.jpg,0,0,50,50,PNN\n11,a.jpg,0,0,50,50,PNN\n12,b.jpg,0,0,50,50,PNN\n"
    problems = errors(validate_submission(*files(text)))
    assert [(p.line, "same box and class as line 2" in p.message) for p in problems] == [(3, True)]
    # the same box with another class is fine (the metric keeps both)
    assert validate_submission(*files(text.replace("11,a.jpg,0,0,50,50,PNN", "11,a.jpg,0,0,50,50,MO"))) == []


def test_order_is_only_a_warning(files):
    lines = GOOD.splitlines(keepends=True)
    problems = validate_submission(*files(lines[0] + lines[2] + lines[1] + lines[3]))
    assert [(p.level, p.line) for p in problems] == [("warning", 2)]


def test_boxes_outside_images_are_warnings(files, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (80, 60)).save(images / "a.jpg")
    problems = validate_submission(*files(GOOD.replace("10,10,60,60", "10,10,90,60")), images_dir=images)
    assert all(p.level == "warning" for p in problems)
    assert any(p.line == 3 and "leaves image a.jpg (80x60)" in p.message for p in problems)
    missing = [p for p in problems if "not found (b.jpg)" in p.message]  # said once, not per row
    assert len(missing) == 1 and "1 of 2 image(s)" in missing[0].message


def test_cli_exit_status_and_listing(files, capsys):
    sub, test = files(GOOD)
    assert validate.main(["--submission", str(sub), "--test", str(test)]) == 0
    assert "0 error(s), 0 warning(s) -- ready to upload" in capsys.readouterr().out
    sub, test = files(GOOD.replace("LyB", "lyb"))
    assert validate.main(["--submission", str(sub), "--test", str(test)]) == 1
    out = capsys.readouterr().out
    assert f"{sub}:4: error: column 'class': unknown class 'lyb'; did you mean 'LyB'?" in out
    assert "1 error(s)" in out


def test_every_problem_is_listed_and_images_may_be_missing(files, tmp_path):
    text = HEADER + "".join(f"{i},z.jpg,-5,0,10,10,PNN\n" for i in range(100, 160))
    problems = validate_submission(*files(text), images_dir=tmp_path / "nowhere")
    assert sum("is not in" in p.message for p in problems) == 60  # one per row, none summarised
    assert sum("no row for trustii_id" in p.message for p in problems) == 3
    assert [p.level for p in problems if "images folder not found" in p.message] == ["warning"]
    assert not any("leaves image" in p.message for p in problems)  # size unknown: not judged


def test_cli_caps_the_listing_errors_first(files, tmp_path, capsys):
    """20,000 rows without their images: one warning for the missing images, at most MAX_SHOWN lines."""
    from cytocore import io

    images = tmp_path / "images"
    images.mkdir()
    text = HEADER + "".join(f"{i},n{i}.jpg,0,0,10,10,PNN\n" for i in range(2, 20_002))
    test_text = "trustii_id,NAME\n" + "".join(f"{i},n{i}.jpg\n" for i in range(2, 20_002))
    sub, test = tmp_path / "sub.csv", tmp_path / "test.csv"
    sub.write_text(text.replace("5,n5.jpg,0,0,10,10,PNN", "5,n5.jpg,0,0,10,10,pnn"))
    test.write_text(test_text)
    assert validate.main(["--submission", str(sub), "--test", str(test), "--images", str(images)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and "unknown class 'pnn'" in lines[0]
    assert lines[1].startswith(
        f"{images}: warning: 20000 of 20000 image(s) of {sub} not found (n2.jpg, n3.jpg, n4.jpg ...)"
    )
    assert lines[2] == f"{sub}: 1 error(s), 1 warning(s)"
    many = HEADER + "".join(f"{i},n{i}.jpg,0,0,10,10,lyb\n" for i in range(2, 20_002))
    sub.write_text(many)
    assert validate.main(["--submission", str(sub), "--test", str(test), "--images", str(images)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == io.MAX_SHOWN + 2
    assert all("error" in line for line in lines[:io.MAX_SHOWN])
    assert lines[-2] == f"... {20_001 - io.MAX_SHOWN} more problem(s) not shown"
    assert lines[-1] == f"{sub}: 20000 error(s), 1 warning(s)"
