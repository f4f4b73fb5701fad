"""infer.label_audit (the out-of-fold label audit and its cleaning), prepare.noise (the injector),
prepare.derive (the derived data folder) and prepare.folds' kept fold assignment, on hand-made tables."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import test_pipeline

from cytocore import boxes as bx
from cytocore import classes, io
from cytocore.config import ConfigError
from cytocore.tables import COORDS
from infer import label_audit as la
from prepare import derive, folds, noise

tiny_data = test_pipeline.tiny_data  # the fixture: 16 synthetic images, k=2, a work folder of its own
TINY_YOLO = test_pipeline.TINY_YOLO

pytestmark = pytest.mark.unit
CODES = list(classes.CLASSES)


def probs(cls: str, p: float) -> list[float]:
    """``p`` on ``cls``, the rest spread evenly over the 22 other classes."""
    return [p if c == cls else (1 - p) / (len(CODES) - 1) for c in CODES]


def preds(rows) -> pd.DataFrame:
    """Prediction rows ``(NAME, x1, y1, x2, y2, score, class, p)`` with their blended probabilities."""
    table = pd.DataFrame([r[:7] for r in rows], columns=["NAME", *COORDS, "score", "class"])
    return pd.concat([table, pd.DataFrame([probs(r[6], r[7]) for r in rows], columns=classes.PROB_COLUMNS)],
                     axis=1)


def truth(rows) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["row", "NAME", *COORDS, "class"])


GT = truth([
    (10, "a", 0, 0, 100, 100, "PNN"),  # a confident MO on it: class suspect
    (11, "a", 200, 0, 300, 100, "LY"),  # confirmed: nothing
    (12, "a", 0, 200, 100, 300, "EO"),  # only a weak detection on it: no_box
    (13, "a", 200, 200, 300, 300, "LY"),  # a confident box half beside it (IoU 1/3): refine
    (14, "b", 0, 0, 50, 50, "PNN"),  # MO at 0.8 < conf 0.9: nothing
])
PREDS = preds([
    ("a", 0, 0, 100, 100, 0.95, "MO", 0.95),
    ("a", 200, 0, 300, 100, 0.9, "LY", 0.97),
    ("a", 0, 200, 100, 300, 0.3, "EO", 0.9),  # below box_conf
    ("a", 250, 200, 350, 300, 0.8, "LY", 0.9),
    ("a", 400, 400, 480, 480, 0.85, "EO", 0.9),  # far from every box: missing
    ("a", 405, 400, 485, 480, 0.6, "EO", 0.7),  # the same cell again (IoU 0.88): counted once
    ("b", 0, 0, 50, 50, 0.9, "MO", 0.8),
])


def test_audit_lists_exactly_the_hand_made_suspects():
    table = la.audit(PREDS, GT, la.CleanConfig(box_conf=0.5))
    assert table["kind"].tolist() == ["class", "no_box", "refine", "missing"]
    assert table["row"].tolist() == [10, 12, 13, -1]
    cls, nobox, refine, missing = (table.iloc[i] for i in range(4))
    assert (cls["class"], cls["gt_class"], cls["iou"], cls["score"]) == ("MO", "PNN", 1.0, 0.95)
    assert cls["p_class"] == pytest.approx(0.95) and cls["p_gt"] == pytest.approx(0.05 / 22)
    assert (nobox["score"], nobox["iou"]) == (0.3, 0.0)  # the weak detection's score is the evidence
    assert refine["iou"] == pytest.approx(5000 / 15000)
    assert refine[COORDS].tolist() == [250, 200, 350, 300] and refine["gt_class"] == "LY"
    assert missing[COORDS].tolist() == [400, 400, 480, 480]
    assert (missing["class"], missing["NAME"]) == ("EO", "a")


def test_audit_thresholds_move_the_suspects():
    loose = la.audit(PREDS, GT, la.CleanConfig(conf=0.75, box_conf=0.25))
    assert loose["kind"].tolist() == ["class", "class", "refine", "missing"]  # b's MO 0.8 counts; EO 0.3 too
    assert loose["row"].tolist() == [10, 14, 13, -1]
    strict = la.audit(PREDS, GT, la.CleanConfig(box_conf=0.99))
    assert strict["kind"].tolist() == ["no_box"] * 5  # nothing is confident: every box is unsupported


def test_a_box_whose_own_class_stays_likely_is_not_relabelled():
    """Confusable pairs: another class at 0.6 but the box's own at 0.3 (> gt_conf 0.1) is no suspect."""
    two = preds([("b", 0, 0, 50, 50, 0.9, "MO", 0.6)])
    pnn = classes.PROB_COLUMNS[CODES.index("PNN")]
    two[classes.PROB_COLUMNS] = 0.1 / 21
    two[classes.PROB_COLUMNS[CODES.index("MO")]], two[pnn] = 0.6, 0.3
    gt = GT[GT["NAME"] == "b"]
    assert la.audit(two, gt, la.CleanConfig(conf=0.5, box_conf=0.5)).empty
    listed = la.audit(two, gt, la.CleanConfig(conf=0.5, gt_conf=0.3, box_conf=0.5))
    assert listed["kind"].tolist() == ["class"] and listed["p_gt"].iloc[0] == pytest.approx(0.3)
    assert la.CleanConfig().gt_conf == 0.1
    with pytest.raises(ConfigError, match="gt_conf=1.5"):
        la.CleanConfig(gt_conf=1.5)


def test_apply_relabels_drops_refines_and_adds_with_a_record():
    boxes = GT.drop(columns="row").reset_index(drop=True)
    table = la.audit(PREDS, GT.assign(row=range(5)), la.CleanConfig(box_conf=0.5))
    cleaned, changes = la.apply(boxes, table, ["class", "no_box", "refine", "missing"])
    assert cleaned[["NAME", *COORDS, "class"]].values.tolist() == [
        ["a", 0, 0, 100, 100, "MO"], ["a", 200, 0, 300, 100, "LY"], ["a", 250, 200, 350, 300, "LY"],
        ["b", 0, 0, 50, 50, "PNN"], ["a", 400, 400, 480, 480, "EO"]]
    assert changes["action"].tolist() == ["relabel", "drop", "refine", "add"]
    only, record = la.apply(boxes, table, ["class"])
    assert only["class"].tolist() == ["MO", "LY", "EO", "LY", "PNN"] and len(record) == 1
    with pytest.raises(ValueError, match="not a row"):
        la.apply(boxes.head(2), table, ["refine"])


def test_clean_config_refuses_unknown_keys_and_policies():
    from pipeline import recipe

    with pytest.raises(ConfigError, match="unknown policy zap"):
        la.CleanConfig(policy=["zap"])
    with pytest.raises(ConfigError, match="far_iou < match_iou"):
        la.CleanConfig(far_iou=0.6)
    with pytest.raises(ConfigError, match="unknown key.*bogus.*valid keys"):
        recipe.load(Path("configs/demo.yaml"), ["clean={bogus: 1}"])
    r = recipe.load(Path("configs/demo.yaml"), ["clean={policy: [relabel, drop], conf: 0.8}"])
    assert r.clean_settings().kinds == ["class", "no_box"] and r.clean_settings().conf == 0.8
    assert recipe.load(Path("configs/demo.yaml")).clean_settings() is None  # off by default


def source_table(n: int = 1000) -> pd.DataFrame:
    rng = np.random.default_rng(1)
    xy = rng.integers(0, 300, size=(n, 2)).astype(float)
    return pd.DataFrame({"NAME": [f"{i // 2}.jpg" for i in range(n)], "x1": xy[:, 0], "y1": xy[:, 1],
                         "x2": xy[:, 0] + 100, "y2": xy[:, 1] + 80,
                         "class": rng.choice(["PNN", "LY", "MO", "EO"], n)})


def test_noise_injector_is_seeded_recorded_and_of_each_kind():
    src = source_table()
    noisy, record = noise.inject(src, p_class=0.1, p_jitter=0.1, p_missing=0.05, seed=3)
    again, _ = noise.inject(src, p_class=0.1, p_jitter=0.1, p_missing=0.05, seed=3)
    pd.testing.assert_frame_equal(noisy, again)
    counts = record["kind"].value_counts()
    assert 60 <= counts["class"] <= 140 and 60 <= counts["jitter"] <= 140 and 20 <= counts["missing"] <= 80
    assert len(noisy) == len(src) - counts["missing"]
    kept = record[record["row"] >= 0]
    assert (noisy.loc[kept["row"], "NAME"].to_numpy() == kept["NAME"].to_numpy()).all()
    assert (noisy.loc[kept["row"], COORDS].to_numpy() == kept[COORDS].to_numpy()).all()
    cls = record[record["kind"] == "class"]
    assert (cls["class"] != cls["true_class"]).all()
    assert (cls[COORDS].to_numpy() == cls[[f"true_{c}" for c in COORDS]].to_numpy()).all()
    jit = record[record["kind"] == "jitter"]
    true_xy = jit[[f"true_{c}" for c in COORDS]].to_numpy(float)
    iou = np.diag(bx.iou_matrix(jit[COORDS].to_numpy(float), true_xy))
    assert iou.min() > 0.15 and iou.max() < 0.8 and (jit["class"] == jit["true_class"]).all()
    untouched = np.setdiff1d(np.arange(len(noisy)), kept["row"])
    assert len(untouched) == len(src) - len(record)
    clean_only, none = noise.inject(src, 0.0, 0.0, 0.0, seed=3)
    pd.testing.assert_frame_equal(clean_only, src)
    assert none.empty
    with pytest.raises(ValueError, match="sum <= 1"):
        noise.inject(src, 0.6, 0.6)


def test_against_noise_counts_found_fixed_and_false_alarms():
    record = pd.DataFrame([  # what GT shows (the noisy class) and what it was
        (0, "a", "class", 0, 0, 100, 100, "PNN", 0, 0, 100, 100, "MO"),
        (4, "b", "class", 0, 0, 50, 50, "PNN", 0, 0, 50, 50, "EO"),
        (2, "a", "class", 0, 200, 100, 300, "EO", 0, 200, 100, 300, "LY"),
    ], columns=["row", "NAME", "kind", *COORDS, "class", *(f"true_{c}" for c in COORDS), "true_class"])
    table = la.audit(PREDS, GT, la.CleanConfig(conf=0.75, box_conf=0.5))  # class: a, b PNN -> MO
    got = la.against_noise(table, record)
    assert got == {"errors": 3, "suspects": 2, "found": 2, "fixed": 1, "false_alarms": 0,
                   "found_share": round(2 / 3, 4)}
    none = la.against_noise(table, record.assign(NAME=["c", "c", "c"]))
    assert (none["found"], none["fixed"], none["false_alarms"]) == (0, 0, 2)


def sha(folder: Path) -> dict[str, str]:
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    return {p.name: hashlib.sha1(p.read_bytes()).hexdigest() for p in files}


def test_the_cleaned_folder_links_the_raw_data_and_records_every_change(tmp_path):
    raw = tmp_path / "raw"
    (raw / "images").mkdir(parents=True)
    for name in ("a", "b"):
        (raw / "images" / name).write_bytes(name.encode() * 10)
    (raw / "train.csv").write_text("NAME,x1,y1,x2,y2,class\na,0,0,100,100,PNN\n")
    (raw / "test.csv").write_text("trustii_id,NAME\n1,b\n")
    root = tmp_path / "ds"
    root.mkdir()
    GT.drop(columns="row").to_csv(root / "boxes.csv", index=False)
    before = sha(raw)
    ds = SimpleNamespace(root=root, data=raw, id="raw-0_k2_s42")
    table = la.audit(PREDS, GT.assign(row=range(5)), la.CleanConfig(box_conf=0.5))
    cfg = la.CleanConfig(policy=["relabel", "add"])
    dst, info = la.write_cleaned(ds, table, cfg, tmp_path / "clean")
    assert sha(raw) == before  # the raw folder is only read
    assert (dst / "images").is_symlink() and (dst / "images").resolve() == (raw / "images").resolve()
    assert (dst / "test.csv").is_symlink() and not (dst / "test_labels.csv").exists()
    train = pd.read_csv(dst / "train.csv")
    assert list(train.columns) == derive.TRAIN_COLUMNS
    assert train["class"].tolist() == ["MO", "LY", "EO", "LY", "PNN", "EO"] and len(train) == 6
    changes = pd.read_csv(dst / la.CHANGES_FILE)
    assert changes[["row", "action", "class"]].values.tolist() == [[0, "relabel", "MO"], [-1, "add", "EO"]]
    recorded = json.loads((dst / la.SUMMARY_FILE).read_text())
    assert recorded["changed"] == {"relabel": 1, "add": 1} == info["changed"]
    assert (recorded["boxes_before"], recorded["boxes_after"]) == (5, 6)
    la.write_cleaned(ds, table, cfg, tmp_path / "clean")  # rewriting the same folder is fine
    with pytest.raises(ValueError, match="cannot replace its source"):
        derive.write_folder(raw, raw, train)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "images").mkdir()
    with pytest.raises(FileExistsError, match="not a link"):
        derive.write_folder(raw, tmp_path / "other", train)


def test_assigned_folds_keep_each_image_in_its_fold(tmp_path):
    fold_file = tmp_path / "folds.csv"
    pd.DataFrame({"NAME": ["a", "b", "c", "d"], "fold": [1, 0, 1, 0], "group": [0, 1, 2, 3]}).to_csv(
        fold_file, index=False)
    got = folds.assigned_folds(fold_file, pd.Series(["d", "b", "a", "d", "c"]), k=2)
    assert got.values.tolist() == [["a", 1, 0], ["b", 0, 1], ["c", 1, 2], ["d", 0, 3]]
    with pytest.raises(io.DataError, match="1 image.*no fold there, e.g. e"):
        folds.assigned_folds(fold_file, pd.Series(["a", "e"]), k=2)
    with pytest.raises(io.DataError, match="not 0..2 for k=3"):
        folds.assigned_folds(fold_file, pd.Series(["a", "b"]), k=3)


@pytest.mark.smoke
def test_audit_of_a_tiny_run_and_round_two_data_on_the_same_folds(tmp_path, monkeypatch, capsys):
    """``python -m infer.label_audit`` on a tiny run (a detector that sees the truth), then the cleaned
    folder through ``prepare.folds`` with ``assign``: each image keeps its round-one fold."""
    import tiny_run

    from cytocore import dataset, paths

    data, work, dataset_id = tiny_run.build(tmp_path)
    with tiny_run.patched(data):
        monkeypatch.setenv("CYTOKIT_WORK", str(work / "demo"))
        assert la.main(["--data", str(data), "box_conf=0.2", "conf=0.5"]) == 0
        assert "label audit:" in capsys.readouterr().out
        ds = dataset.resolve(data)
        table = pd.read_csv(paths.logs_dir(ds.id) / la.AUDIT_FILE)
        assert list(table.columns) == la.COLUMNS and set(table["kind"]) <= set(la.KINDS)
        from pipeline.report import audit as report_audit

        html = report_audit.section(SimpleNamespace(key=ds.id), ds.meta["images_dir"])
        assert "no_box" in html and "missing" in html and ("<img" in html) == (len(table) > 0)
        boxes = pd.read_csv(ds.root / "boxes.csv")
        assert table.loc[table["row"] >= 0, "row"].between(0, len(boxes) - 1).all()
        truth = boxes.assign(row=np.arange(len(boxes)))
        flipped = truth.assign(**{"class": np.where(truth["class"] == "PNN", "LY", "PNN")})
        oof = pd.read_parquet(next(ds.preds_dir(tiny_run.MODEL, 0).glob("oof*.parquet")))
        val = flipped[flipped["NAME"].isin(ds.fold(0).val_images["NAME"])]
        wrong = la.audit(oof, val, la.CleanConfig(conf=0.5, box_conf=0.2))
        assert (wrong["kind"] == "class").any()  # every class is wrong: the confident ones are caught
        dst, info = la.write_cleaned(ds, wrong, la.CleanConfig(policy=["relabel"]))
        assert dst.parent == paths.data_copy("x").parent and info["changed"]["relabel"] > 0
        argv = ["--data", str(dst), "--k", "2", "--seed", "1", f"assign={ds.meta['fold_file']}"]
        assert folds.main(argv) == 0
        two = dataset.resolve(dst)
        assert two.id != ds.id
        pd.testing.assert_frame_equal(two.images()[["NAME", "fold"]], ds.images()[["NAME", "fold"]])


def two_round_recipe(path: Path, **sections) -> Path:
    """A tiny k=2 recipe (1-epoch YOLOv8, one TTA view, a one-point tuning grid) with ``sections``
    (``clean=...``, ``pseudo=...``) that ask for a round two."""
    import yaml

    tiny = [o for o in TINY_YOLO if not o.startswith("epochs")] + [
        "epochs=1", "pretrained=none", "conf=0.000001"]
    path.write_text(yaml.safe_dump({
        "k": 2, "seed": 0, "jobs": 2, **sections,
        "detectors": [{"model": "yolov8", "overrides": tiny}],
        "ensemble": {"tta": ["identity"], "viz_images": 0, "conf": 0.000001,
                     "tune": {"weights": [1.0], "iou_thr": [0.55], "skip_box_thr": [0.000001],
                              "conf_type": ["avg"], "fusion": ["wbf"], "rounds": 1, "views": False}}}))
    return path


@pytest.mark.smoke
def test_make_all_with_clean_runs_round_two_on_a_cleaned_copy_with_the_same_folds(tiny_data, tmp_path,
                                                                                 monkeypatch, capsys):
    """The recipe switch end to end: round one, the audit, the cleaned folder, round two on it."""

    from cytocore import dataset, paths
    from pipeline.__main__ import main

    data = tiny_data
    monkeypatch.setenv("CYTOKIT_PREFLIGHT", "off")
    before = (data / "train.csv").read_bytes()
    recipe = two_round_recipe(tmp_path / "clean.yaml", clean={"policy": ["relabel"], "conf": 0.0})
    assert main(["--recipe", str(recipe), "--data", str(data), "--out", str(tmp_path / "subs")]) == 0
    out = capsys.readouterr().out
    assert "round two: the same recipe on the cleaned labels" in out
    ds = dataset.resolve(data)
    report = json.loads(paths.run_report(ds.id).read_text())
    clean = report["clean"]
    folder = Path(clean["data"])
    assert folder != data and (folder / "train.csv").is_file() and (folder / la.CHANGES_FILE).is_file()
    assert clean["round_two"]["status"] == "ok" and Path(clean["audit"]).is_file()
    assert (data / "train.csv").read_bytes() == before  # the raw data untouched
    one, two = ds.images(), dataset.resolve(folder).images()  # every image in its round-one fold
    merged = one.merge(two, on="NAME", suffixes=("_1", "_2"))
    assert len(merged) == len(one) and (merged["fold_1"] == merged["fold_2"]).all()
