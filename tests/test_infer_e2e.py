"""make infer / submission / tune-ensemble / score end to end on a tiny synthetic set: fake detectors,
real (tiny, untrained) crop classifiers; every check is an outcome recomputed another way."""
from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd
import pytest
import yaml

from cytocore import classes, config, dataset, metric, paths, predictions, submission, tables
from infer import blend, fuse, oof_table, predict, tune
from infer import ensemble as infer_main
from infer.config import load_config
from submit import make as submit_make
from train import checkpoint
from train.base import Detections, Predictor

pytestmark = pytest.mark.smoke


class CentreBoxPredictor(Predictor):
    """A box over the middle of the image, PNN-leaning probabilities; a second box in the top-left corner."""

    def __init__(self, shift: float):
        self.shift = shift

    def predict(self, images, conf=0.001):
        out = []
        for img in images:
            h, w = img.shape[:2]
            b = np.array([[w * (0.25 + self.shift), h * 0.25, w * 0.75, h * 0.75], [0, 0, w * 0.2, h * 0.2]])
            p = np.zeros((2, classes.NUM_CLASSES))
            p[0, classes.CLASS_TO_ID["PNN"]], p[0, classes.CLASS_TO_ID["LY"]] = 0.7, 0.3
            p[1, classes.CLASS_TO_ID["EO"]] = 1.0
            out.append(Detections(b, np.array([0.8, 0.05]), np.array([0, classes.CLASS_TO_ID["EO"]]), p))
        return out


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from prepare import folds
    from prepare.synth import make as synth

    data = tmp_path_factory.mktemp("e2e") / "data"
    assert synth.main(["--out", str(data), "--images", "32", "--seed", "3", "--test-fraction", "0.4"]) == 0
    assert folds.main(["--data", str(data), "--k", "2", "--seed", "1"]) == 0
    ds = dataset.resolve(data)
    assert (ds.k, ds.seed) == (2, 1) and set(ds.images()["fold"]) == {0, 1}
    return data


@pytest.fixture
def fake_members(monkeypatch, tiny, tmp_path):
    calls = []

    def load_member(model, fold, weights, device="cpu", overrides=(), backend="torch", name=""):
        calls.append((model, fold))
        return CentreBoxPredictor(0.0 if model == "fakea" else 0.02)

    monkeypatch.setattr(predict, "load_member", load_member)
    for model in ("fakea", "fakeb"):
        for fold in (0, 1):
            w = dataset.resolve(tiny).run_dir(model, fold) / "best.pt"
            w.parent.mkdir(parents=True, exist_ok=True)
            w.write_bytes(b"fake")
    cfg_path = tmp_path / "ensemble.yaml"
    cfg_path.write_text(yaml.safe_dump({
        "members": [{"model": "fakea", "folds": [0, 1]}, {"model": "fakeb", "folds": [0, 1], "weight": 2.0}],
        "k": 2, "seed": 1, "tta": ["identity", "hflip"], "fusion": "auto", "viz_images": 4,
        "tune": {"weights": [0.0, 0.5, 1.0], "iou_thr": [0.5], "skip_box_thr": [0.001], "conf_type": ["avg"],
                 "fusion": ["wbf", "agnostic"], "rounds": 1, "max_images": 0, "cls_weight": [0.0, 0.45, 1.0]},
    }))
    return cfg_path, calls


@pytest.fixture
def cls_folds(tiny):
    """Untrained resnet10t crop classifiers saved as cls folds 0 and 1 of the prepared dataset."""
    from train.cls import model as cls_model
    from train.cls.adapter import ClassifierConfig

    cfg = config.to_dict(config.from_dict(ClassifierConfig, {"backbone": "resnet10t", "imgsz": 32}))
    out = []
    for fold in (0, 1):
        path = dataset.resolve(tiny).run_dir("cls", fold) / "best.pt"
        checkpoint.save(path, cls_model.build_model("resnet10t"), cfg, 0, metric=0.0)
        out.append(path)
    yield out
    for path in out:
        path.unlink()


def expected_submission(cfg, data, fusion, classifier=None):
    """The submission recomputed from the member test tables: fuse, blend, write rows per test.csv row."""
    cfg = config.from_dict(type(cfg), {**config.to_dict(cfg), "k": 2, "seed": 1})
    ds = dataset.resolve(data)
    tabs = [
        predictions.read(ds.preds_dir(m.model, f) / "test.parquet")
        for m in cfg.member_list()
        for f in m.folds
    ]
    fused = fuse.fuse(pd.concat(tabs, ignore_index=True), cfg.fuse_params(fusion), progress=False)
    test = tables.read(data / "test.csv", "test")
    if classifier:
        s = cfg.classifier_section()
        fused = blend.apply_classifier(fused, data / "images", [(p, None) for p in classifier], s.weight,
                                       tta=s.tta, n_cells=test.groupby("NAME").size().to_dict())
    return submission.make_submission(
        fused, test, submission.image_sizes(test["NAME"], data / "images", fused)
    )


def test_infer_submission_tune_and_score(tiny, fake_members, tmp_path, caplog, capsys):
    cfg_path, calls = fake_members
    cfg = load_config(cfg_path)
    with caplog.at_level(logging.WARNING):
        result = submit_make.run(cfg, tiny, out_dir=tmp_path / "subs", progress=False)
    assert sorted(calls) == [("fakea", 0), ("fakea", 1), ("fakeb", 0), ("fakeb", 1)]
    # the classifier is on by default: no cls fold is trained, so one line says how, and classes stay
    lines = [r.getMessage() for r in caplog.records if "classifier" in r.getMessage()]
    assert len(lines) == 1 and "make train MODEL=cls FOLD=all" in lines[0] and "classifier: {}" in lines[0]
    assert "\n" not in lines[0]

    sub = pd.read_csv(result.submission)
    want = expected_submission(cfg, tiny, result.fusion)
    pd.testing.assert_frame_equal(sub, want, check_dtype=False)
    truth = tables.read(tiny / "test_labels.csv", "submission")
    assert result.score.total == pytest.approx(metric.score(truth, want).total, abs=1e-12)
    infer_main.run(cfg, tiny, progress=False)
    assert len(calls) == 4  # a second run reuses every member table

    capsys.readouterr()
    out, table = tune.run(cfg, tiny, tmp_path / "tuned.yaml")
    printed = capsys.readouterr().out
    assert "config " in printed and "p_better" in printed
    labels = oof_table.labels(table)
    assert labels[:4] == ["fakea + TTA", "fakea", "fakeb + TTA", "fakeb"] and len(labels) == 5
    assert tuple(table.columns) == oof_table.COLUMNS and table["reference"].tolist() == [False] * 4 + [True]
    ref = labels[-1]  # the tuned ensemble: "ensemble" or "ensemble + TTA", as tuning chose its views
    ens = table.set_index(pd.Index(labels))["score"]
    assert ref.startswith("ensemble") and (ens <= ens[ref]).all()
    # the tuned config, tuned again, starts where the first tuning ended and never goes below it
    again = tune.tune(load_config(out), tiny)
    assert again.ev.result(again.start).total == pytest.approx(ens[ref], abs=1e-12)
    assert again.ev.result(again.best).total >= ens[ref]

    # make score reads the table tuning saved: the same cells
    from submit import oof

    assert oof.main(["--data", str(tiny), "--json", str(tmp_path / "score.json")]) == 0
    scored = pd.DataFrame(json.loads((tmp_path / "score.json").read_text())["ensemble"])
    assert scored["member"].tolist() == table["member"].tolist()
    np.testing.assert_array_equal(scored["score"], table["score"])
    diff = scored["diff"].astype(float)
    assert np.isnan(diff.iloc[-1]) and not np.isnan(diff.iloc[0])


def test_trained_classifier_folds_are_blended_into_the_submission(tiny, fake_members, cls_folds, tmp_path,
                                                                 caplog):
    cfg_path, _ = fake_members
    cfg = load_config(cfg_path, {"fusion": "wbf", "viz_images": 0,
                                 "classifier": {"members": [{"model": "cls"}], "weight": 1.0, "tta": False}})
    with caplog.at_level(logging.WARNING):
        result = submit_make.run(cfg, tiny, out_dir=tmp_path / "subs", progress=False)
    assert not [r for r in caplog.records if "classifier" in r.getMessage()]
    sub = pd.read_csv(result.submission)
    pd.testing.assert_frame_equal(sub, expected_submission(cfg, tiny, "wbf", cls_folds), check_dtype=False)
    detectors_only = expected_submission(cfg, tiny, "wbf")
    assert (sub["class"] != detectors_only["class"]).any()  # the classifier did change classes
    off = submit_make.run(load_config(cfg_path, {"fusion": "wbf", "viz_images": 0, "classifier": {}}), tiny,
                          out_dir=tmp_path / "off", progress=False)
    pd.testing.assert_frame_equal(pd.read_csv(off.submission), detectors_only, check_dtype=False)


def test_the_submission_fuses_in_fuse_workers_processes(tiny, fake_members, tmp_path, monkeypatch):
    """``fuse_workers`` reaches ``fuse_files``; with chunks of 4 images the pool of 2 fuses the test set
    and the submission is the one recomputed by fusing every table at once."""
    cfg_path, _ = fake_members
    real, seen = infer_main.fuse_files, []

    def small_chunks(*args, workers, **kwargs):
        seen.append(workers)
        return real(*args, chunk=4, workers=workers, **kwargs)

    monkeypatch.setattr(infer_main, "fuse_files", small_chunks)
    cfg = load_config(cfg_path, {"fusion": "wbf", "viz_images": 0, "classifier": {}, "fuse_workers": 2})
    result = submit_make.run(cfg, tiny, out_dir=tmp_path / "subs", progress=False)
    assert seen == [2] and result.fused["NAME"].nunique() > 4  # several chunks
    pd.testing.assert_frame_equal(pd.read_csv(result.submission), expected_submission(cfg, tiny, "wbf"),
                                  check_dtype=False)


def test_tuner_scores_a_config_as_the_submission_it_implies(tiny, fake_members, cls_folds, tmp_path):
    """The tuner's number for a config with the real classifier folds == fusing, blending with the fold
    that did not see each image, writing the rows and scoring, done by hand."""
    from infer.oof_eval import config_settings

    cfg_path, _ = fake_members
    cfg = load_config(cfg_path, {"fusion": "agnostic", "classifier": {"weight": 0.7, "tta": True}})
    infer_main.run(cfg, tiny, progress=False)
    t = tune.tune(cfg, tiny)
    s = config_settings(cfg, ["hflip", "identity"], classifier=True)[0]
    assert t.ev.classifier is not None and t.ev.result(s).total == t.ev.result(t.start).total

    ds = dataset.resolve(tiny)
    parts, truth, sizes = [], [], []
    for fold in (0, 1):
        fd = ds.fold(fold)
        oofs = [predictions.read(ds.preds_dir(m, fold) / "oof_tta.parquet") for m in ("fakea", "fakeb")]
        fused = fuse.fuse(pd.concat(oofs, ignore_index=True), cfg.fuse_params("agnostic"), oof=True,
                          progress=False)
        fused = blend.apply_classifier(fused, fd.images_dir, [(cls_folds[fold], None)], 0.7, tta=True,
                                       n_cells=fd.val_boxes.groupby("NAME").size().to_dict())
        parts.append(fused), truth.append(fd.val_boxes), sizes.append(fd.val_images)
    by_hand = submission.oof_score(pd.concat(parts), pd.concat(truth), pd.concat(sizes))
    assert t.ev.result(s).total == pytest.approx(by_hand.total, abs=1e-9)
    assert t.ev.result(t.best).total >= by_hand.total


class PerfectClassifier:
    """Stands in for the OOF classifier: each box gets the class of the GT box it overlaps most."""

    models = ("cls",)
    computed = reused = 0

    def __init__(self, boxes: pd.DataFrame):
        self.boxes = boxes

    def mode(self, model):
        return "crop"

    def probs(self, table, tta, n_cells):
        from cytocore import boxes as bx

        codes = []
        for row in table.itertuples():
            t = self.boxes[self.boxes["NAME"] == row.NAME]
            box = np.array([[row.x1, row.y1, row.x2, row.y2]])
            iou = bx.iou_matrix(box, t[["x1", "y1", "x2", "y2"]].to_numpy())
            codes.append(classes.CLASS_TO_ID[t["class"].iloc[int(iou.argmax())]])
        return blend.ClassifierProbs(np.eye(classes.NUM_CLASSES)[codes], None, np.zeros(len(table), bool))


def test_tune_sets_the_classifier_blend_weight(tiny, fake_members, tmp_path, monkeypatch):
    cfg_path, _ = fake_members
    section = {"members": [{"model": "cls"}], "weight": 0.3}
    cfg = load_config(cfg_path, {"classifier": section, "fusion": "wbf"})
    infer_main.run(cfg, tiny, progress=False)
    boxes = pd.read_csv(dataset.resolve(tiny).root / "boxes.csv")
    monkeypatch.setattr(tune, "classifier_for", lambda cfg, ds: PerfectClassifier(boxes))
    out, table = tune.run(cfg, tiny, tmp_path / "tuned.yaml")
    weight = load_config(out).classifier["weight"]
    # the detectors say PNN 0.7 / LY 0.3 on every cell: a true class c other than those wins the blend
    # w * onehot(c) + (1 - w) * det once w > 0.7 * (1 - w), i.e. w > 0.41: 0.3 keeps the detectors' classes
    assert weight in (0.45, 1.0)
    labels = oof_table.labels(table)
    scores = table.set_index(pd.Index(labels))["score"]
    assert labels[-1].endswith("+ classifier") and scores.iloc[-1] > scores.iloc[-2]
    assert scores["fakea + TTA + classifier"] > scores["fakea + TTA"] and "fakeb + classifier" in scores.index


def test_default_config_has_the_classifier_on():
    cfg = load_config(paths.CONFIGS / "ensemble.yaml")
    section = cfg.classifier_section()
    assert [m.model for m in section.members] == ["cls"] and section.members[0].weights is None
    assert 0 < section.weight < 1 and section.tta
    assert load_config(paths.CONFIGS / "ensemble.yaml", ["classifier={}"]).classifier_section() is None
    assert [m.model for m in cfg.member_list()] and cfg.fusion in ("wbf", "agnostic", "auto")


def test_classifier_member_weights_template(tiny, tmp_path):
    from infer.config import classifier_weights

    for fold in (0, 1):
        (tmp_path / f"c{fold}.pt").write_bytes(b"x")
    cfg = load_config(
        paths.CONFIGS / "ensemble.yaml",
        {
            "classifier": {
                "members": [
                    {"model": "cls", "weights": str(tmp_path / "c{fold}.pt")},
                    {"model": "cls_full", "folds": [1]},
                ]
            }
        },
    )
    found, missing = classifier_weights(cfg.classifier_section(), dataset.resolve(tiny))
    assert found == [("cls", 0, tmp_path / "c0.pt"), ("cls", 1, tmp_path / "c1.pt")]
    assert missing == [dataset.resolve(tiny).run_dir("cls_full", 1) / "best.pt"]
    with pytest.raises(config.ConfigError, match="classifier.members\\[0\\].*valid keys"):
        old = {"classifier": {"members": [{"weights": "x", "config": 1}]}}
        load_config(paths.CONFIGS / "ensemble.yaml", old)
    old_style = {"members": [{"weights": "runs/cls/fold0/best.pt"}, {"weights": "runs/cls/fold1/best.pt"}]}
    with pytest.raises(config.ConfigError, match="listed twice.*fold{fold}"):
        load_config(paths.CONFIGS / "ensemble.yaml", {"classifier": old_style})


def test_missing_weights_is_a_clear_error(tiny, tmp_path):
    cfg_path = tmp_path / "e.yaml"
    cfg_path.write_text(yaml.safe_dump({"members": [{"model": "nothere", "folds": [0]}], "k": 2, "seed": 1}))
    with pytest.raises(FileNotFoundError, match="nothere.*fold0.*best.pt|best.pt"):
        infer_main.run(load_config(cfg_path), tiny, progress=False)


def test_the_submission_picture_shows_calibrated_confidences_when_there_is_a_calibration(
        tiny, fake_members, tmp_path, monkeypatch):
    """With the run's calibration the picture draws each box's calibrated confidence and says what it is;
    without one, the raw fused score and the note that scores are ranks. The CSV is the same."""
    from types import SimpleNamespace

    from infer import viz

    cfg_path, _ = fake_members
    cfg = load_config(cfg_path)
    drawn = []
    monkeypatch.setattr(viz, "draw_grid", lambda preds, *a, note="", **k: drawn.append((preds, note)))
    raw = submit_make.run(cfg, tiny, out_dir=tmp_path / "raw", progress=False)
    half = SimpleNamespace(apply=lambda scores: scores * 0 + 0.5)
    cal = submit_make.run(cfg, tiny, out_dir=tmp_path / "cal", progress=False, calibration=half)
    (raw_preds, raw_note), (cal_preds, cal_note) = drawn
    assert raw_note == viz.SCORE_NOTE and cal_note == viz.CONFIDENCE_NOTE
    assert (cal_preds["score"] == 0.5).all() and not (raw_preds["score"] == 0.5).all()
    pd.testing.assert_frame_equal(pd.read_csv(raw.submission), pd.read_csv(cal.submission))
