"""MODEL=unet: masks to boxes by hand, the segmentation metrics, a CPU smoke run to the OOF table."""
from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch

from cytocore import classes, config, predictions
from train.unet.post import N_LABELS, confusion, detections_from_probs, refine_boxes, seg_metrics

pytestmark = pytest.mark.unit


def one_hot(label_map: np.ndarray) -> np.ndarray:
    return (np.arange(N_LABELS)[:, None, None] == label_map[None]).astype(np.float32)


def test_two_blobs_become_two_boxes_with_their_classes():
    labels = np.zeros((16, 20), np.int64)
    labels[2:6, 1:5] = 4  # class id 3 (LLC): rows 2..5, columns 1..4 -> box (1, 2, 5, 6)
    labels[10:13, 8:15] = 8  # class id 7 (LGL): rows 10..12, columns 8..14 -> box (8, 10, 15, 13)
    det = detections_from_probs(one_hot(labels))
    order = np.argsort(det.xyxy[:, 0])
    assert det.xyxy[order].tolist() == [[1, 2, 5, 6], [8, 10, 15, 13]]
    assert [classes.CLASSES[i] for i in det.labels[order]] == ["LLC", "LGL"]
    assert det.scores.tolist() == [1.0, 1.0]
    assert det.probs.shape == (2, 23) and det.probs[order][0, 3] == 1.0 and det.probs.sum() == 2.0


def test_class_probabilities_are_the_renormalised_mean_and_the_score_the_foreground():
    probs = np.zeros((N_LABELS, 4, 4), np.float32)
    probs[0] = 1.0
    # a 2-pixel component: pixel A p_bg 0.2, p_PNN 0.8; pixel B p_bg 0.4, p_PNN 0.2, p_EO 0.4
    probs[:, 1, 1] = 0
    probs[[0, 1], 1, 1] = [0.2, 0.8]
    probs[:, 1, 2] = 0
    probs[[0, 1, 9], 1, 2] = [0.4, 0.2, 0.4]
    det = detections_from_probs(probs, fg_thr=0.5)
    assert det.xyxy.tolist() == [[1, 1, 3, 2]]
    # mean class probs: PNN (0.8 + 0.2) / 2 = 0.5, EO 0.4 / 2 = 0.2 -> renormalised 5/7 and 2/7
    assert det.probs[0, 0] == pytest.approx(5 / 7) and det.probs[0, 8] == pytest.approx(2 / 7)
    assert det.labels.tolist() == [0]
    assert det.scores[0] == pytest.approx((0.8 + 0.6) / 2)


def test_components_below_min_area_are_dropped_and_none_gives_empty():
    labels = np.zeros((10, 10), np.int64)
    labels[0:2, 0:2] = 1  # 4 px = 4% of the image
    labels[5:9, 5:9] = 2  # 16 px
    assert detections_from_probs(one_hot(labels), min_area=0.05).xyxy.tolist() == [[5, 5, 9, 9]]
    empty = detections_from_probs(one_hot(np.zeros((5, 5), np.int64)))
    assert empty.xyxy.shape == (0, 4) and empty.probs.shape == (0, 23)


def test_dice_and_miou_by_hand():
    truth = np.array([[0, 1, 1, 2], [0, 1, 1, 2]])
    pred = np.array([[0, 1, 0, 2], [1, 1, 1, 1]])
    # foreground: truth 6 px, pred 6 px, both 5 -> Dice 2*5 / (6 + 6) = 5/6
    # class 1: inter 3, union 4 + 5 - 3 = 6 -> 0.5; class 2: inter 1, union 2 + 1 - 1 = 2 -> 0.5
    m = seg_metrics(confusion(truth, pred))
    assert m["dice"] == pytest.approx(5 / 6) and m["miou"] == pytest.approx(0.5)
    assert confusion(truth, pred)[1, 0] == 1 and confusion(truth, pred)[2, 1] == 1


def test_refine_takes_the_tight_box_of_each_mask():
    class Fake:
        def segment(self, images, boxes):
            masks = np.zeros((2, 10, 12), bool)
            masks[0, 2:5, 3:7] = True  # rows 2..4, columns 3..6 -> (3, 2, 7, 5)
            return [masks]  # the second mask is empty: its box is kept

    out = refine_boxes(Fake(), np.zeros((10, 12, 3), np.uint8), np.array([[1, 1, 9, 9], [0, 0, 4, 4]]))
    assert out.tolist() == [[3, 2, 7, 5], [0, 0, 4, 4]]


class _BlockModel(torch.nn.Module):
    """A stand-in network: class id 4 (LyB) in the top-left 4 x 4 of an 8 x 8 output, background elsewhere."""

    def forward(self, x):
        logits = torch.full((len(x), N_LABELS, 8, 8), -10.0)
        logits[:, 0] = 10.0
        logits[:, 0, :4, :4] = -10.0
        logits[:, 5, :4, :4] = 10.0
        return logits


def test_predictor_upsamples_to_the_image_and_refines_boxes():
    from train.unet.post import UnetPredictor

    cfg = tiny_cfg(imgsz=8, decoder_channels=[8, 8, 8])
    predictor = UnetPredictor(_BlockModel(), cfg, "cpu")
    image = np.zeros((16, 16, 3), np.uint8)
    # 8 -> 16 bilinear: output column 7 samples source 3.25 (3/4 inside: logit +5), column 8
    # samples 3.75 (-5), so the cell covers columns and rows 0..7 -> box (0, 0, 8, 8)
    det = predictor.predict([image])[0]
    assert det.xyxy.tolist() == [[0, 0, 8, 8]] and classes.CLASSES[det.labels[0]] == "LyB"
    assert predictor.predict([image], conf=1.01)[0].xyxy.shape == (0, 4)

    class Fake:
        def segment(self, images, boxes):
            mask = np.zeros((1, 16, 16), bool)
            mask[0, 1:4, 2:6] = True
            return [mask]

    predictor._refiner = Fake()
    assert predictor.predict([image])[0].xyxy.tolist() == [[2, 1, 6, 4]]


def tiny_cfg(**kw):
    from train.unet.adapter import UnetConfig

    base = {"encoder": "resnet18", "decoder_channels": [16, 8, 8], "imgsz": 64, "epochs": 1, "batch": 4,
            "device": "cpu", "workers": 0, "min_area": 0.0}
    return config.from_dict(UnetConfig, {**base, **kw})


def test_imgsz_must_fit_the_encoder_depth():
    with pytest.raises(config.ConfigError, match="multiple of 8"):
        tiny_cfg(imgsz=60)


@pytest.mark.smoke
def test_cli_smoke_train_resume_predict_and_oof_table(tmp_path, capsys):
    from test_masks import make_dataset

    from cytocore import dataset
    from cytocore.dataset import load_fold
    from infer.fuse import FuseParams, fuse
    from train.__main__ import main as train_main
    from train.unet.adapter import UnetAdapter

    data = tmp_path / f"raw_{tmp_path.name}"
    make_dataset(data, n=6)
    args = ["encoder=resnet18", "decoder_channels=[16,8,8]", "imgsz=64", "epochs=1", "batch=4", "device=cpu",
            "min_area=0.0"]
    assert train_main(["--model", "unet", "--fold", "0", "--data", str(data), "--k", "2", "--seed", "0",
                       "--force", *args]) == 0  # masks made on the way (fallback)
    assert "unet fold 0: challenge" in capsys.readouterr().out
    run = dataset.resolve(data).run_dir("unet", 0)
    files = {p.name for p in run.iterdir()}
    assert files >= {"best.pt", "last.pt", "metrics.csv", "config.yaml", "done.json"}
    metrics = pd.read_csv(run / "metrics.csv")
    assert metrics["epoch"].tolist() == [1]
    assert {"train_loss", "seg_dice", "seg_miou", "challenge", "lr"} <= set(metrics.columns)
    assert 0 <= metrics["seg_dice"].iloc[0] <= 1 and 0 <= metrics["challenge"].iloc[0] <= 1
    oof = predictions.read(dataset.resolve(data).preds_dir("unet", 0) / "oof.parquet")  # valid, maybe empty
    assert set(oof["model"]) <= {"unet"}

    fold = load_fold(data, 2, 0, 0)
    UnetAdapter().train(tiny_cfg(epochs=2), fold, run, resume=True)  # continues at epoch 2
    assert pd.read_csv(run / "metrics.csv")["epoch"].tolist() == [1, 2]

    # fg_thr 0: every pixel is cell, so each image gives exactly one full-image box
    given = dataclasses.replace(tiny_cfg(), imgsz=32, fg_thr=0.0)
    predictor = UnetAdapter().load(run / "best.pt", given, "cpu")
    assert predictor.cfg.imgsz == 64  # the architecture comes from the checkpoint
    from train.oof import predict_fold

    table = predict_fold(predictor, fold, "unet", progress=False)
    assert sorted(table["NAME"]) == sorted(fold.val_images["NAME"])
    assert table[["x1", "y1", "x2", "y2"]].to_numpy().tolist() == [[0, 0, 64, 64]] * 3
    assert predictions.has_probs(table)
    assert np.allclose(table[list(predictions.PROB_COLUMNS)].sum(axis=1), 1.0)
    back = predictions.read(predictions.write(table, tmp_path / "oof.parquet"))
    assert len(back) == 3 and set(back["model"]) == {"unet"} and set(back["fold"]) == {0}
    fused = fuse(back, FuseParams(iou_thr=0.55, mode="agnostic"), oof=True, progress=False)
    assert len(fused) == 3 and set(fused["class"]) <= set(classes.CLASSES)
