"""End-to-end smoke of make infer / submission / tune-ensemble on a tiny synthetic set with fake members."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import yaml

from cytokit import classes, paths, predictions, tables
from cytokit.dataset import dataset_dir
from infer import ensemble as infer_main
from infer import predict, tune
from infer.config import load_config
from train.base import Detections, Predictor


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
    made = synth.main(["--out", str(data), "--images", "24", "--seed", "3", "--test-fraction", "0.4"])
    assert made in (0, None)
    assert folds.main(["--data", str(data), "--k", "2", "--seed", "1"]) in (0, None)
    return data


@pytest.fixture
def fake_members(monkeypatch, tiny, tmp_path):
    calls = []

    def load_member(model, fold, weights, device="cpu", overrides=(), backend="torch"):
        calls.append((model, fold))
        return CentreBoxPredictor(0.0 if model == "fakea" else 0.02)

    monkeypatch.setattr(predict, "load_member", load_member)
    for model in ("fakea", "fakeb"):
        for fold in (0, 1):
            w = paths.run_dir(model, fold) / "best.pt"
            w.parent.mkdir(parents=True, exist_ok=True)
            w.write_bytes(b"fake")
    cfg_path = tmp_path / "ensemble.yaml"
    cfg_path.write_text(yaml.safe_dump({
        "members": [{"model": "fakea", "folds": [0, 1]}, {"model": "fakeb", "folds": [0, 1], "weight": 2.0}],
        "k": 2, "seed": 1, "tta": ["identity", "hflip"], "fusion": "auto", "viz_images": 4,
        "tune": {"weights": [0.5, 1.0], "iou_thr": [0.5], "skip_box_thr": [0.001], "conf_type": ["avg"],
                 "fusion": ["wbf", "agnostic"], "rounds": 1, "max_images": 0},
    }))
    return cfg_path, calls


def test_infer_submission_and_tune(tiny, fake_members, tmp_path):
    cfg_path, calls = fake_members
    cfg = load_config(cfg_path)
    result = infer_main.run(cfg, tiny, submission=True, out_dir=tmp_path / "subs", progress=False)
    assert sorted(calls) == [("fakea", 0), ("fakea", 1), ("fakeb", 0), ("fakeb", 1)]

    test = tables.read(tiny / "test.csv", "test")
    t = predictions.read(paths.preds_dir("fakea", 0) / "test.parquet")
    assert set(t["view"]) == {"identity", "hflip"} and set(t["NAME"]) == set(test["NAME"])
    oof = predictions.read(paths.preds_dir("fakea", 1) / "oof_tta.parquet")
    images = pd.read_csv(dataset_dir(tiny, 2, 1) / "images.csv")
    val1 = set(images.loc[images["fold"] == 1, "NAME"])
    assert set(oof["NAME"]) == val1

    from submit.validate import validate_submission

    assert result.fusion in ("wbf", "agnostic")
    assert [p for p in validate_submission(result.submission, tiny / "test.csv") if p.level == "error"] == []
    sub = pd.read_csv(result.submission)
    assert sub["trustii_id"].tolist() == test["trustii_id"].tolist()
    assert 0.0 < result.score.total <= 1.0
    assert (result.submission.parent / (result.submission.stem + "_boxes.png")).exists()

    # a second run reuses every member table: no predictor is loaded again
    infer_main.run(cfg, tiny, submission=False, progress=False)
    assert len(calls) == 4

    out, table = tune.run(cfg, tiny, tmp_path / "tuned.yaml")
    expected = ["fakea", "fakea (no TTA)", "fakeb", "fakeb (no TTA)", "ensemble (tuned)"]
    assert table["member"].tolist() == expected
    tuned = load_config(out)
    assert tuned.fusion in ("wbf", "agnostic")
    assert {m.model for m in tuned.member_list()} == {"fakea", "fakeb"}
    assert {m.weight for m in tuned.member_list()} <= {0.5, 1.0, 2.0}


def test_classifier_hook_is_called(tiny, fake_members, tmp_path, monkeypatch):
    cfg_path, _ = fake_members
    seen = {}

    def apply_classifier(preds, images_dir, members, weight, device="cpu", tta=True, **kwargs):
        seen.update(members=members, weight=weight, n_cells=kwargs.get("n_cells"))
        out = preds.copy()
        out["class"] = "LY"
        out[list(classes.PROB_COLUMNS)] = np.eye(classes.NUM_CLASSES)[classes.CLASS_TO_ID["LY"]]
        return out

    import infer.blend

    monkeypatch.setattr(infer.blend, "apply_classifier", apply_classifier)
    cfg = load_config(cfg_path, {"classifier": {"members": [{"weights": "cls.pt"}], "weight": 0.3},
                                 "fusion": "wbf", "viz_images": 0})
    result = infer_main.run(cfg, tiny, submission=True, out_dir=tmp_path / "subs", progress=False)
    assert seen["weight"] == 0.3 and [str(w) for w, _ in seen["members"]] == ["cls.pt"]
    assert set(seen["n_cells"]) == set(tables.read(tiny / "test.csv", "test")["NAME"])
    assert set(pd.read_csv(result.submission)["class"]) == {"LY"}


def test_default_config_loads_and_has_no_classifier():
    cfg = load_config(paths.CONFIGS / "ensemble.yaml")
    assert cfg.classifier_section() is None
    assert [m.model for m in cfg.member_list()] and cfg.fusion in ("wbf", "agnostic", "auto")


def test_missing_weights_is_a_clear_error(tiny, tmp_path):
    cfg_path = tmp_path / "e.yaml"
    cfg_path.write_text(yaml.safe_dump({"members": [{"model": "nothere", "folds": [0]}], "k": 2, "seed": 1}))
    with pytest.raises(FileNotFoundError, match="nothere.*fold0.*best.pt|best.pt"):
        infer_main.run(load_config(cfg_path), tiny, progress=False)


def test_tune_sets_the_classifier_blend_weight(tiny, fake_members, tmp_path, monkeypatch):
    import infer.blend

    cfg_path, _ = fake_members
    cfg = load_config(cfg_path, {"classifier": {"members": [{"weights": "cls.pt"}], "weight": 0.5},
                                 "fusion": "wbf"})
    infer_main.run(cfg, tiny, progress=False)
    boxes = pd.read_csv(dataset_dir(tiny, 2, 1) / "boxes.csv")

    def perfect_classifier(preds, data, k, seed, **kwargs):
        # the true class of each row's image (one cell per image here): a classifier that is always right
        truth = boxes.drop_duplicates("NAME").set_index("NAME")["class"].map(classes.CLASS_TO_ID)
        crop = np.eye(classes.NUM_CLASSES)[truth.reindex(preds["NAME"]).to_numpy(dtype=np.int64)]
        return infer.blend.ClassifierProbs(crop, None, np.zeros(len(preds), bool))

    monkeypatch.setattr(infer.blend, "oof_classifier_probs", perfect_classifier)
    out, _ = tune.run(cfg, tiny, tmp_path / "tuned.yaml")
    weight = load_config(out).classifier["weight"]
    # the detector says PNN 0.7 / LY 0.3 on every cell: a true class c other than those wins the blend
    # w * onehot(c) + (1 - w) * det once w > 0.7 * (1 - w), i.e. w > 0.41; the grid's first such w is 0.45
    assert weight == 0.45
