"""make export and the CPU backends: ONNX / OpenVINO copies checked against torch, chosen by the config."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from cytocore import config, predictions
from cytocore.config import ConfigError
from infer import backends, export, predict, tta

pytestmark = pytest.mark.smoke

IMGSZ = 64


@pytest.fixture(scope="module", autouse=True)
def one_timed_call():
    """Timing is not what these tests check: one call per backend."""
    calls, export.TIMED_CALLS = export.TIMED_CALLS, 1
    yield
    export.TIMED_CALLS = calls


@pytest.fixture(scope="module")
def yolo(tmp_path_factory):
    """YOLOv8n weights (23 classes; random, with a noisy head so scores differ) exported at 64 px, and
    the check images."""
    from ultralytics.nn.tasks import DetectionModel

    folder = tmp_path_factory.mktemp("yolo")
    (folder / "config.yaml").write_text(f"imgsz: {IMGSZ}\n")
    torch.manual_seed(0)
    net = DetectionModel("yolov8n.yaml", nc=23, verbose=False)
    with torch.no_grad():
        head = net.model[-1]
        for p in head.parameters():
            p.add_(torch.randn_like(p) * 0.3)
        for branch in head.cv3:  # class logits around -2 rather than ultralytics' prior of -10
            branch[-1].bias.normal_(-2.0, 1.0)
    weights = folder / "best.pt"
    torch.save({"model": net}, weights)
    images = export.check_images(None, 2)
    record = export.export_yolo("yolov8", 0, weights, [], images)
    return weights, images, record


def test_yolo_export_files_record_and_tolerances(yolo):
    weights, _, record = yolo
    assert backends.onnx_path(weights).is_file() and backends.openvino_path(weights).is_file()
    saved = json.loads(backends.record_path(weights).read_text())
    assert saved == json.loads(json.dumps(record)) and saved["imgsz"] == IMGSZ
    assert set(saved["ms"]) == {"torch", "onnx", "openvino"}
    assert saved["box_diff"] <= export.BOX_TOL and saved["score_diff"] <= export.SCORE_TOL
    assert "-> " in export.line("yolov8 fold0", saved)


@pytest.mark.parametrize("backend", ["onnx", "openvino"])
def test_exported_member_predicts_like_torch(yolo, backend):
    weights, images, _ = yolo
    views = tta.get_views(["identity", "hflip"])
    pairs = [(f"{i}.jpg", im) for i, im in enumerate(images)]
    torch_member = predict.load_member("yolov8", 0, weights)
    ref = predict.predict_arrays(torch_member, pairs, views, "yolov8", 0, conf=0.01)
    member = predict.load_member("yolov8", 0, weights, backend=backend)
    assert member.model is None and member.runner is not None
    got = predict.predict_arrays(member, pairs, views, "yolov8", 0, conf=0.01)
    assert len(ref) > 10 and abs(len(got) - len(ref)) <= 2  # NMS may break a near tie the other way
    cols = ["score", "x1", "y1", "x2", "y2"]
    top, near = (t.sort_values("score", ascending=False).head(10)[cols].to_numpy() for t in (ref, got))
    np.testing.assert_allclose(near[:, 0], top[:, 0], atol=export.SCORE_TOL)
    np.testing.assert_allclose(near[:, 1:], top[:, 1:], atol=export.BOX_TOL * 368 / IMGSZ)


def test_auto_takes_the_fastest_current_export_else_torch(yolo, tmp_path):
    weights, _, record = yolo
    fastest = min(record["ms"], key=record["ms"].get)
    assert backends.choose(weights, "auto") == fastest
    assert backends.choose(weights, "auto", "cuda:0") == "torch"  # GPUs run torch
    assert backends.choose(weights, "auto", imgsz=IMGSZ * 2) == "torch"  # exported at another size
    with pytest.raises(ConfigError, match="exported at 64 px"):
        backends.choose(weights, "onnx", imgsz=128)
    other = tmp_path / "best.pt"
    other.write_bytes(weights.read_bytes())
    assert backends.choose(other, "auto") == "torch"
    with pytest.raises(FileNotFoundError, match="run make export"):
        backends.choose(other, "openvino")
    with pytest.raises(ConfigError, match="valid values are torch, onnx, openvino, auto"):
        backends.choose(weights, "tensorrt")


def test_export_made_from_other_weights_is_not_used(yolo, tmp_path):
    weights, _, _ = yolo
    copy = tmp_path / "best.pt"
    copy.write_bytes(weights.read_bytes())
    rec = json.loads(backends.record_path(weights).read_text())
    rec["weights"] = backends.weights_stamp(copy)
    backends.record_path(copy).write_text(json.dumps(rec))
    assert backends.read_record(copy) is not None
    os.utime(copy, ns=(0, 0))  # retrained: the record no longer matches
    assert backends.read_record(copy) is None and backends.choose(copy, "auto") == "torch"


def test_export_past_the_tolerance_is_removed(yolo, tmp_path, monkeypatch):
    weights, images, _ = yolo
    copy = tmp_path / "best.pt"
    copy.write_bytes(weights.read_bytes())
    (tmp_path / "config.yaml").write_text(f"imgsz: {IMGSZ}\n")
    monkeypatch.setattr(export, "SCORE_TOL", -1.0)
    with pytest.raises(ValueError, match="export differs from torch"):
        export.export_yolo("yolov8", 0, copy, [], images[:1])
    assert not backends.onnx_path(copy).exists() and not backends.openvino_path(copy).parent.exists()
    assert not backends.record_path(copy).exists()


@pytest.mark.parametrize("box_size", [False, True])
def test_classifier_export_and_backend(tmp_path, box_size):
    from infer import blend
    from train import checkpoint
    from train.cls import model as cls_model
    from train.cls.adapter import ClassifierConfig

    cfg = config.from_dict(ClassifierConfig, {"backbone": "resnet10t", "imgsz": 32, "box_size": box_size})
    weights = tmp_path / "cls.pt"
    checkpoint.save(weights, cls_model.build_model("resnet10t", box_size=box_size), config.to_dict(cfg), 0,
                    metric=0.0)
    images = export.check_images(None, 2)
    record = export.export_classifier(weights, images)
    assert record["score_diff"] <= export.SCORE_TOL and set(record["ms"]) == {"torch", "onnx", "openvino"}
    assert record["box_size"] == box_size
    for backend in ("onnx", "openvino"):
        ref, other = (blend.load_members([(weights, None)], "cpu", b)[0] for b in ("torch", backend))
        assert isinstance(other.model, backends.RunnerModule) and other.takes_size == box_size
        # two boxes with the same pixels around them but sizes 110 x 80 and 55 x 40: a size-aware
        # export must see the difference as torch does
        boxes = [np.array([[10.0, 10.0, 120.0, 90.0], [10.0, 10.0, 65.0, 50.0]])] * 2
        got, want = other.classify_boxes(images, boxes), ref.classify_boxes(images, boxes)
        np.testing.assert_allclose(got[0], want[0], atol=1e-4)
        crops = ref.crops(images[0], boxes[0][:1])
        sizes = np.array([[0.0, 0.0], [1.0, 1.0]], np.float32)
        np.testing.assert_allclose(other.classify(np.repeat(crops, 2, 0), False, sizes),
                                   ref.classify(np.repeat(crops, 2, 0), False, sizes), atol=1e-4)
        if box_size:
            p = other.classify(np.repeat(crops, 2, 0), False, sizes)
            assert not np.allclose(p[0], p[1])
            with pytest.raises(ValueError, match="box sizes"):
                other.classify(crops, False)


def test_ensemble_config_backend_key():
    from cytocore import paths
    from infer.config import EnsembleConfig, load_config

    assert load_config(paths.CONFIGS / "ensemble.yaml").backend == "auto"
    with pytest.raises(ConfigError, match="backend='gpu'"):
        EnsembleConfig(backend="gpu", iou_thr=0.55)


def test_make_export_cli_on_a_config(yolo, tmp_path, capsys, monkeypatch):
    from prepare import folds
    from prepare.synth import make as synth

    weights, _, _ = yolo
    monkeypatch.setenv("CYTOKIT_WORK", str(tmp_path / "work"))
    data = tmp_path / "data"
    assert synth.main(["--out", str(data), "--images", "8", "--seed", "0"]) == 0
    assert folds.main(["--data", str(data), "--k", "2", "--seed", "0"]) == 0
    capsys.readouterr()
    cfg = tmp_path / "ens.yaml"
    cfg.write_text(f"members: [{{model: yolov8, folds: [0], weights: {weights}}}, "
                   "{model: fasterrcnn, folds: [0]}]\nclassifier: {}\n")
    assert export.main(["--config", str(cfg), "--data", str(data)]) == 0
    out = capsys.readouterr().out
    assert "yolov8 fold0" in out and "differences to torch" in out
    assert "fasterrcnn fold0: stays on torch" in out


def test_unreadable_image_after_ultralytics_is_imported(tmp_path):
    """ultralytics patches PIL's open to try the pi-heif plugin (not installed) on unknown files."""
    import ultralytics.utils.patches  # noqa: F401

    from cytocore import images

    bad = tmp_path / "x.jpg"
    bad.write_bytes(b"this is not an image")
    with pytest.raises(ValueError, match="not a readable image"):
        images.read_size(bad)
    with pytest.raises(ValueError, match="cannot decode image"):
        images.load_rgb(bad)


def test_a_broken_export_falls_back_to_torch_under_auto_and_keys_the_cache(yolo, tmp_path, caplog):
    """A corrupt export whose record still matches the weights: backend auto predicts with torch after
    one warning; backend onnx / openvino is a one-line error naming make export. The cached tables'
    key records the backend and its export file, so switching backend predicts again."""
    import logging
    import shutil

    from infer import cache, predict

    weights, _, _ = yolo
    folder = tmp_path / "run"
    folder.mkdir()
    copy = folder / "best.pt"
    shutil.copy2(weights, copy)
    shutil.copy2(weights.parent / "config.yaml", folder / "config.yaml")
    rec = json.loads(backends.record_path(weights).read_text())
    rec["weights"], rec["ms"] = backends.weights_stamp(copy), {"onnx": 1.0}
    backends.record_path(copy).write_text(json.dumps(rec))
    backends.onnx_path(copy).write_bytes(b"not an onnx model")
    with caplog.at_level(logging.WARNING):
        predictor = predict.load_member("yolov8", 0, copy, "cpu", [], "auto")
    assert predictor.runner is None  # torch's forward pass, not the broken export
    assert "its onnx export does not load" in caplog.text and "predicting with torch" in caplog.text
    with pytest.raises(ConfigError, match="its onnx export does not load.*run make export again"):
        predict.load_member("yolov8", 0, copy, "cpu", [], "onnx")
    on_onnx = predict.member_backend("yolov8", copy, "cpu", [], "auto")
    assert on_onnx["backend"] == "onnx" and on_onnx["export_bytes"] == len(b"not an onnx model")
    assert predict.member_backend("yolov8", copy, "cpu", [], "torch") == {"backend": "torch"}
    from PIL import Image

    Image.fromarray(export.check_images(None, 1)[0]).save(tmp_path / "a.jpg")
    onnx_meta = cache.member_meta(copy, ["identity"], 0.001, 0, ["a.jpg"], tmp_path, on_onnx)
    torch_meta = cache.member_meta(copy, ["identity"], 0.001, 0, ["a.jpg"], tmp_path, {"backend": "torch"})
    assert onnx_meta["backend"] == "onnx" and torch_meta["backend"] == "torch"
    table = tmp_path / "test.parquet"
    cache.cached_table(table, torch_meta, lambda: predictions.empty())
    assert cache.is_fresh(table, torch_meta) and not cache.is_fresh(table, onnx_meta)
