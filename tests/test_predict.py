"""make predict: calibration and threshold (unit, hand-computed), image listing, run discovery, drawing,
and the command end to end on a tiny run (smoke): CSV, JSON and one annotated image per input."""
from __future__ import annotations

import json
import os
import time

import numpy as np
import pandas as pd
import pytest
import tiny_run

from cytocore import classes
from infer import calibrate
from infer import predict_images as pi


def boxes(rows, cols=("NAME", "x1", "y1", "x2", "y2", "class")):
    return pd.DataFrame(rows, columns=list(cols))


# -- calibration and threshold -----------------------------------------------------------------------
@pytest.mark.unit
def test_match_is_greedy_by_score_and_needs_iou_and_class():
    truth = boxes([("a", 0, 0, 10, 10, "PNN"), ("a", 20, 20, 30, 30, "LY"), ("b", 0, 0, 10, 10, "EO")])
    preds = boxes([("a", 0, 0, 10, 10, "PNN", 0.5),   # same box as the 0.9 one but lower: the truth is taken
                   ("a", 0, 0, 10, 10, "PNN", 0.9),
                   ("a", 20, 20, 30, 31, "EO", 0.8),   # IoU 100/110 >= 0.5, wrong class
                   ("a", 50, 50, 60, 60, "PNN", 0.7),  # nothing there
                   ("c", 0, 0, 10, 10, "EO", 0.9)],    # image without truth
                  ("NAME", "x1", "y1", "x2", "y2", "class", "score"))
    m = calibrate.match(preds, truth)
    assert m["matched"].tolist() == [False, True, True, False, False]
    assert m["correct"].tolist() == [False, True, False, False, False]
    assert pd.isna(m["truth_class"][0]) and m["truth_class"].tolist()[1:3] == ["PNN", "LY"]
    assert m["giou"][1] == pytest.approx(1.0) and m["giou"][2] == pytest.approx(100 / 110)


@pytest.mark.unit
def test_threshold_table_counts_false_boxes_and_missed_cells():
    # truth: 2 PNN, 1 LY. boxes by confidence: 0.9 PNN correct, 0.6 LY correct, 0.3 PNN false
    matched = pd.DataFrame({"correct": [True, True, False], "giou": [1.0, 0.0, np.nan]})
    t = calibrate.threshold_table([0.9, 0.6, 0.3], matched, ["PNN", "LY", "PNN"], ["PNN", "PNN", "LY"])
    assert t["threshold"].tolist() == [0.9, 0.6, 0.3]
    assert t["kept"].tolist() == [1, 2, 3]
    # t=0.9: PNN F1 = 2*1/(1+2), LY F1 = 0 (1 missed) -> macro (2/3 + 0) / 2
    # t=0.6: PNN 2/3, LY 2*1/(1+1) = 1 -> 5/6;  t=0.3: PNN 2*1/(2+2) = 1/2, LY 1 -> 3/4
    assert t["f1"].tolist() == pytest.approx([1 / 3, 5 / 6, 3 / 4])
    # GIoU term over the 3 truth boxes: (1+1)/2 = 1 for the first, (0+1)/2 for the second
    assert t["giou_term"].tolist() == pytest.approx([1 / 3, 1.5 / 3, 1.5 / 3])
    assert t["score"].tolist() == pytest.approx(0.2 * t["giou_term"] + 0.8 * t["f1"])
    assert t["precision"].tolist() == pytest.approx([1, 1, 2 / 3])
    assert t["recall"].tolist() == pytest.approx([1 / 3, 2 / 3, 2 / 3])
    assert calibrate.best_threshold(t) == 0.6


@pytest.mark.unit
def test_best_threshold_prefers_fewer_boxes_on_ties_and_has_a_default():
    t = pd.DataFrame({"threshold": [0.8, 0.5, 0.2], "score": [0.7, 0.7, 0.1]})
    assert calibrate.best_threshold(t) == 0.8
    assert calibrate.best_threshold(t.iloc[:0]) == 0.5


@pytest.mark.unit
def test_isotonic_fit_recovers_known_probabilities_and_is_monotone():
    rng = np.random.default_rng(0)
    s = rng.uniform(0, 1, 20000)
    correct = rng.uniform(size=len(s)) < s ** 2  # P(correct | s) = s^2
    cal = calibrate.Calibration(*calibrate.fit(s, correct))
    grid = np.linspace(0.05, 0.95, 19)
    assert np.all(np.diff(cal.apply(grid)) >= 0)
    assert cal.apply(grid) == pytest.approx(grid ** 2, abs=0.06)
    rel = calibrate.reliability(cal.apply(s), correct)
    assert rel["observed"].to_numpy() == pytest.approx(rel["mean_predicted"].to_numpy(), abs=0.03)
    assert calibrate.expected_calibration_error(rel) < 0.02


@pytest.mark.unit
def test_reliability_bins_by_hand():
    rel = calibrate.reliability([0.05, 0.15, 0.19, 1.0, 0.95], [0, 1, 0, 1, 1], bins=10)
    assert rel["bin"].tolist() == [0, 1, 9]
    assert rel["n"].tolist() == [1, 2, 2]
    assert rel["mean_predicted"].tolist() == pytest.approx([0.05, 0.17, 0.975])
    assert rel["observed"].tolist() == pytest.approx([0.0, 0.5, 1.0])
    assert calibrate.expected_calibration_error(rel) == pytest.approx((0.05 + 2 * 0.33 + 2 * 0.025) / 5)


@pytest.mark.unit
def test_calibrate_cross_fits_the_reliability_over_folds_and_round_trips(tmp_path):
    rng = np.random.default_rng(1)
    names = [f"im{i}.jpg" for i in range(40)]
    truth = boxes([(n, 10, 10, 50, 50, "PNN") for n in names])
    s = rng.uniform(0.05, 0.95, len(names))
    right = rng.uniform(size=len(names)) < s
    preds = boxes([(n, 10, 10, 50, 50, "PNN" if r else "LY", v) for n, r, v in zip(names, right, s)],
                  ("NAME", "x1", "y1", "x2", "y2", "class", "score"))
    folds = pd.Series([i % 2 for i in range(len(names))], index=names)
    cal = calibrate.calibrate(preds, truth, folds, config="x.yaml")
    assert cal.cross_fitted and cal.n_boxes == 40 and cal.n_images == 40
    assert sum(r["n"] for r in cal.reliability) == 40
    assert 0 <= cal.threshold <= 1 and cal.thresholds
    assert not calibrate.calibrate(preds, truth, None).cross_fitted
    path = cal.save(tmp_path / "calibration.json")
    again = calibrate.load(path)
    assert again.apply([0.1, 0.5, 0.9]).tolist() == cal.apply([0.1, 0.5, 0.9]).tolist()
    assert again.reliability_table().equals(cal.reliability_table())
    path.write_text(json.dumps({**cal.to_dict(), "version": 99}))
    with pytest.raises(ValueError, match="version 99"):
        calibrate.load(path)


@pytest.mark.unit
def test_a_calibration_is_current_only_for_its_config_and_after_its_last_change(tmp_path):
    config, out = tmp_path / "tuned.yaml", tmp_path / "calibration.json"
    config.write_text("members: []\n")
    calibrate.Calibration([0, 1], [0, 1], config=str(config)).save(out)
    assert calibrate.current(out, config) is not None
    other = tmp_path / "other.yaml"
    other.write_text("x: 1\n")
    assert calibrate.current(out, other) is None
    later = out.stat().st_mtime + 5
    os.utime(config, (later, later))
    assert calibrate.current(out, config) is None


# -- images, runs, drawing ---------------------------------------------------------------------------
def _jpeg(path, w=64, h=48):
    import cv2

    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((h, w, 3), 200, np.uint8))
    return path


@pytest.mark.unit
def test_list_images_takes_folders_globs_and_files(tmp_path):
    a, b = _jpeg(tmp_path / "in" / "a.jpg"), _jpeg(tmp_path / "in" / "sub" / "b.PNG")
    (tmp_path / "in" / "notes.txt").write_text("x")
    assert pi.list_images(tmp_path / "in") == [a, b]
    assert pi.list_images(str(tmp_path / "in" / "*.jpg")) == [a]
    assert pi.list_images([b, a, a]) == [a, b]
    root, names = pi.image_names([a, b])
    assert root == tmp_path / "in" and names == ["a.jpg", "sub/b.PNG"]
    with pytest.raises(FileNotFoundError, match="no image"):
        pi.list_images(tmp_path / "nothing-*.jpg")


def _run(work, dataset_id, config="tuned.yaml", age=0.0):
    logs = work / "logs" / dataset_id
    logs.mkdir(parents=True)
    (logs / config).write_text("members: []\n")
    t = time.time() - age
    os.utime(logs / config, (t, t))
    return logs


@pytest.mark.unit
def test_find_run_takes_the_newest_run_nested_demo_runs_included(tmp_path):
    work = tmp_path / "work"
    _run(work, "raw-1_k5_s42", age=100)
    demo = _run(work / "demo", "demo-2_k2_s0", "ensemble.yaml", age=10)
    (work / "logs" / "no-config").mkdir()
    runs = pi.find_runs(work)
    assert [r.id for r in runs] == ["raw-1_k5_s42", "demo-2_k2_s0"]
    newest = pi.find_run(None, work)
    assert newest.id == "demo-2_k2_s0" and newest.work == work / "demo"
    assert newest.config == demo / "ensemble.yaml"
    assert pi.find_run("raw-1_k5_s42", work).config.name == "tuned.yaml"
    assert pi.find_run(demo, work).id == "demo-2_k2_s0"
    with pytest.raises(FileNotFoundError, match="raw-1_k5_s42, demo-2_k2_s0"):
        pi.find_run("nope", work)
    with pytest.raises(FileNotFoundError, match="make all or make demo"):
        pi.find_run(None, tmp_path / "empty")


@pytest.mark.unit
def test_labels_are_readable_at_full_size():
    import cv2

    for w, h in ((360, 360), (1600, 1200), (4000, 3000)):
        scale, thick = pi.label_scale(w, h)
        (_, th), _ = cv2.getTextSize("LH_lyAct 0.95", cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
        assert th >= 12 and th >= 0.015 * min(w, h)


@pytest.mark.unit
def test_draw_writes_one_annotated_jpeg_per_image_boxes_or_none(tmp_path):
    import cv2

    a = _jpeg(tmp_path / "a.jpg", 200, 160)
    _jpeg(tmp_path / "b.jpg")
    preds = pd.DataFrame({"image": ["a.jpg"], "x1": [20.0], "y1": [40.0], "x2": [120.0], "y2": [140.0],
                          "class": ["PNN"], "confidence": [0.87], "path": [str(a)]})
    out = pi.draw(preds, tmp_path / "out", ["a.jpg", "b.jpg"], root=tmp_path)
    assert [p.name for p in out] == ["a.jpg", "b.jpg"]
    drawn = cv2.imread(str(out[0])).astype(int)
    assert np.abs(drawn[100, 20] - 200).sum() > 60  # the box's left edge is coloured
    assert np.abs(drawn[100, 180] - 200).sum() < 30  # outside the box: the image
    plain = cv2.imread(str(out[1])).astype(int)
    assert np.abs(plain - 200).max() < 10


@pytest.mark.unit
def test_summary_has_one_class_per_line():
    preds = pd.DataFrame({"class": ["PNN", "PNN", "LY"], "confidence": [0.9, 0.7, 0.5]})
    lines = pi.summary(preds).splitlines()
    assert lines[1].split()[:3] == ["PNN", "2", "0.800"] and lines[2].split()[:3] == ["LY", "1", "0.500"]
    assert lines[-1].split() == ["total", "3"]
    assert max(map(len, lines)) <= 120


# -- end to end on a tiny run --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("predict")
    data, work, dataset_id = tiny_run.build(tmp)
    with pytest.MonkeyPatch.context() as mp, tiny_run.patched(data):
        mp.setenv("CYTOKIT_WORK", str(work))
        yield tmp, data, work, dataset_id


@pytest.mark.smoke
def test_make_predict_writes_csv_json_and_an_annotated_image_per_input(tiny, tmp_path, capsys):
    root, data, work, dataset_id = tiny
    images = sorted(p.name for p in (data / "images").iterdir())
    assert pi.main(["--images", str(data / "images"), "--out", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert f"run {dataset_id}" in printed and "images/s" in printed and "total" in printed
    csv = pd.read_csv(tmp_path / "out" / "predictions.csv")
    assert list(csv.columns) == list(pi.OUTPUT_COLUMNS)
    assert set(csv["class"]) <= set(classes.CLASSES) and len(csv)
    assert csv[list(classes.PROB_COLUMNS)].sum(axis=1).to_numpy() == pytest.approx(1.0, abs=1e-3)
    cal = calibrate.load(work / "demo" / "logs" / dataset_id / "calibration.json")
    assert (cal.apply(csv["score"]) >= cal.threshold).all()
    assert csv["confidence"].to_numpy() == pytest.approx(cal.apply(csv["score"]), abs=1e-4)
    doc = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert doc["run"] == dataset_id and doc["images"] == len(images) and len(doc["boxes"]) == len(csv)
    assert sorted(p.name for p in (tmp_path / "out" / "annotated").iterdir()) == images
    # TruthPredictor gives each image its truth cells and two false boxes scored below 0.3: the threshold
    # keeps mostly the cells (without it about 2 boxes in 3 would be false)
    truth = pd.concat([pd.read_csv(data / "train.csv"), pd.read_csv(data / "test_labels.csv")])
    m = calibrate.match(csv.rename(columns={"image": "NAME"}), truth)
    assert m["matched"].mean() >= 0.75


@pytest.mark.smoke
def test_the_calibration_is_fitted_on_the_images_tuning_scored(tiny, tmp_path):
    """Every box of each image is classified to fit it: at full scale all ~48k out-of-fold images took
    tens of minutes of crops, so it uses tuning's fixed subset (``tune.max_images``, its seed)."""
    import dataclasses

    from cytocore import dataset
    from infer import oof_eval

    root, data, work, dataset_id = tiny
    run = pi.find_run()
    cfg = pi.Ensemble(run).cfg
    with pi.in_work(run):
        ds = dataset.resolve(data)
        every = calibrate.fit_run(dataclasses.replace(cfg, tune={**cfg.tune, "max_images": 0}), ds,
                                  tmp_path / "a.json")
        few = calibrate.fit_run(dataclasses.replace(cfg, tune={**cfg.tune, "max_images": 3, "seed": 1}), ds,
                                tmp_path / "b.json")
        chosen = oof_eval.load_oof(cfg, data, 3, 1).images["NAME"]
    assert few.n_images == 3 == len(chosen) < every.n_images


@pytest.mark.smoke
def test_conf_replaces_the_threshold_and_the_calibration_is_reused(tiny, tmp_path, capsys):
    root, data, work, dataset_id = tiny
    path = work / "demo" / "logs" / dataset_id / "calibration.json"
    ens = pi.Ensemble(pi.find_run())
    stamp = path.stat().st_mtime_ns
    every = ens.predict(data / "images", conf=0.0)
    kept = ens.predict(data / "images")
    assert path.stat().st_mtime_ns == stamp  # current: not fitted again
    assert len(every) > len(kept) and (every["confidence"] >= 0).all()
    assert set(map(tuple, kept[["image", "x1", "y1"]].to_numpy())) <= set(
        map(tuple, every[["image", "x1", "y1"]].to_numpy()))
    assert every.attrs["images"] == kept.attrs["images"] == len(list((data / "images").iterdir()))


@pytest.mark.smoke
def test_reliability_is_in_the_report_and_the_api(tiny):
    from types import SimpleNamespace

    import cytokit
    from pipeline.report import calibration

    root, data, work, dataset_id = tiny
    run = pi.find_run()
    table = cytokit.reliability_table()
    cal = calibrate.load(run.calibration_file)
    assert list(table.columns) == list(calibrate.RELIABILITY_COLUMNS)
    assert table["n"].sum() == cal.n_boxes and table["observed"].between(0, 1).all()
    with pi.in_work(run):  # the report runs inside the run's work folder
        html = calibration.section(SimpleNamespace(ds=pi.Ensemble(run).ds), run.config)
    assert "Reliability" in html and f"{cal.threshold:.3f}" in html
    assert html.count("<tr>") == len(table) + 1 + len(cal.thresholds) + 1


@pytest.mark.smoke
def test_the_crop_classifier_is_blended_into_every_box(tmp_path_factory, tmp_path):
    """With classifier folds in the run, every kept box's probabilities are the 0.5 blend of the detector's
    and the classifier's (which differ from the detector's one-hot-ish rows), and calibration still fits."""
    tmp = tmp_path_factory.mktemp("predict_cls")
    data, work, dataset_id = tiny_run.build(tmp, classifier=True)
    with pytest.MonkeyPatch.context() as mp, tiny_run.patched(data):
        mp.setenv("CYTOKIT_WORK", str(work))
        ens = pi.Ensemble(pi.find_run())
        assert len(ens.classifiers()) == 2
        with_cls = ens.predict(data / "images", conf=0.0)
        ens._classifiers = []  # the same run without its classifier
        without = ens.predict(data / "images", conf=0.0)
    assert len(with_cls) == len(without)
    det = without[list(classes.PROB_COLUMNS)].to_numpy()
    blended = with_cls[list(classes.PROB_COLUMNS)].to_numpy()
    cls = 2 * blended - det  # p = 0.5 * classifier + 0.5 * detector
    assert np.abs(blended - det).max() > 0.01
    assert cls.sum(axis=1) == pytest.approx(1.0, abs=2e-3) and (cls > -2e-3).all()
    assert with_cls["score"].tolist() == without["score"].tolist()
    assert with_cls["class"].tolist() == list(np.asarray(classes.CLASSES)[blended.argmax(1)])
    cal = calibrate.load(ens.run.calibration_file)
    assert cal.n_boxes > 0 and cal.reliability
