"""Classifier crops, samplers, MixUp/CutMix, losses, local weights and GT matching (train/cls_*.py)."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from cytocore import classes
from cytocore.config import ConfigError, load
from cytocore.paths import ROOT
from train.cls import data as cls_data
from train.cls import model as cls_model
from train.cls.adapter import ClassifierConfig
from train.weights import WeightsError

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("box, margin, window", [
    ((10, 20, 50, 60), 16, (0, 4, 66, 76)),            # left margin clipped: floor(10 - 16) = -6 -> 0
    ((-5, 70, 95.5, 90), 16, (0, 54, 100, 80)),        # box over the border: ceil(95.5 + 16) = 112 -> 100
    ((120, 10, 130, 20), 16, (99, 0, 100, 36)),        # box right of the image: one pixel column kept
    ((20.5, 30.2, 40.7, 50.9), 0, (20, 30, 41, 51)),   # floor / ceil of fractional coordinates
])
def test_crop_window_clips_margins_at_borders(box, margin, window):
    assert cls_data.crop_window(np.array(box), 100, 80, margin) == window


def test_extract_crop_is_the_window():
    image = np.arange(80 * 100 * 3, dtype=np.uint32).reshape(80, 100, 3).astype(np.uint8)
    crop = cls_data.extract_crop(image, np.array([30, 30, 50, 50]), 5, 30)  # window 25..55 = 30 px
    np.testing.assert_array_equal(crop, image[25:55, 25:55])
    assert cls_data.extract_crop(image, None, 0, 16).shape == (16, 16, 3)


def test_match_truth_takes_best_giou_among_top_n():
    truth = pd.DataFrame({"NAME": ["a", "a", "b"], "x1": [0, 20, 5], "y1": [0, 20, 5], "x2": [10, 30, 15],
                          "y2": [10, 30, 15], "class": ["PNN", "EO", "LY"], "width": 100, "height": 80})
    preds = pd.DataFrame({"NAME": ["a", "a", "a"], "x1": [0.0, 21, 20], "y1": [0.0, 21, 20],
                          "x2": [10.0, 31, 30], "y2": [10.0, 31, 30], "score": [0.9, 0.8, 0.1]})
    m = cls_data.match_truth(truth, preds)
    # image a keeps its top-2 predictions (rows 0, 1): the perfect row 2 is out
    assert m["pred_index"].tolist() == [0, 1, -1]
    assert m.loc[1, ["x1", "y1", "x2", "y2"]].tolist() == [21, 21, 31, 31]
    assert m.loc[1, "giou"] == pytest.approx(81 / 119 - (121 - 119) / 121)
    assert m.loc[2, ["x1", "y1", "x2", "y2"]].tolist() == [0, 0, 99, 79]  # the writer's filler box
    assert m["class"].tolist() == ["PNN", "EO", "LY"]
    assert cls_data.match_truth(truth, preds, top_n=False)["pred_index"].tolist() == [0, 2, -1]


def test_balanced_sampler_weights():
    labels = np.array([0, 0, 0, 0, 1])
    sampler = cls_data.make_sampler(labels, "balanced", 1.0, 0)
    np.testing.assert_allclose(sampler.weights.numpy(), [1 / 4] * 4 + [1.0])
    sampler = cls_data.make_sampler(labels, "balanced", 0.5, 0)
    np.testing.assert_allclose(sampler.weights.numpy(), [4 ** -0.5] * 4 + [1.0])
    assert cls_data.make_sampler(labels, "random", 1.0, 0) is None
    with pytest.raises(ValueError, match="valid: random, balanced"):
        cls_data.make_sampler(labels, "uniform", 1.0, 0)


@pytest.mark.parametrize("mixup, cutmix", [(0.4, 0.0), (0.0, 1.0)])
def test_mix_batch_targets_follow_the_mixed_pixels(mixup, cutmix):
    x = torch.stack([torch.zeros(3, 8, 8), torch.ones(3, 8, 8)])
    y = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    xm, ym = cls_data.mix_batch(x, y, mixup, cutmix, np.random.default_rng(3))
    share_of_sample_1 = float(xm[0].mean())  # sample 0 is all 0, sample 1 all 1
    assert float(ym[0, 1]) == pytest.approx(share_of_sample_1)
    assert ym.sum(1).tolist() == pytest.approx([1.0, 1.0])
    assert cls_data.mix_batch(x, y, 0.0, 0.0, np.random.default_rng(0))[0] is x


def test_soft_loss_values():
    logits = torch.tensor([[0.0, 0.0], [2.0, 0.0]])
    target = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    ce = torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1]))
    assert cls_model.soft_loss(logits, target, "ce").item() == pytest.approx(ce.item())
    assert cls_model.soft_loss(logits, target, "focal", gamma=0.0).item() == pytest.approx(ce.item())
    # row 0: p = 1/2 -> (1 - 1/2)^2 * ln 2; row 1: p = 1/(1+e^2) -> (1 - p)^2 * -ln p
    p1 = 1 / (1 + math.e ** 2)
    expected = (0.25 * math.log(2) + (1 - p1) ** 2 * -math.log(p1)) / 2
    assert cls_model.soft_loss(logits, target, "focal", gamma=2.0).item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.smoke
def test_local_pretrained_weights(tmp_path):
    src = cls_model.build_model("resnet10t", num_classes=10)
    torch.save({"state_dict": src.state_dict()}, tmp_path / "r10.pth")
    model = cls_model.build_model("resnet10t", weights=tmp_path / "r10.pth")  # head 10 -> 23: skipped
    assert model.get_classifier().out_features == classes.NUM_CLASSES
    key = next(iter(src.state_dict()))
    torch.testing.assert_close(model.state_dict()[key], src.state_dict()[key])
    torch.save(cls_model.build_model("resnet18").state_dict(), tmp_path / "r18.pth")
    with pytest.raises(ValueError, match="r18.pth: weights do not fit this backbone; .*shape mismatch"):
        cls_model.build_model("resnet10t", weights=tmp_path / "r18.pth")
    (tmp_path / "notes.pth").write_text("not weights")
    with pytest.raises(WeightsError, match="notes.pth: not timm weights: it starts with"):
        cls_model.build_model("resnet10t", weights=tmp_path / "notes.pth")
    with pytest.raises(WeightsError, match="absent.pth: timm weights file not found"):
        cls_model.build_model("resnet10t", weights=tmp_path / "absent.pth")
    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(WeightsError, match="empty.pth: empty file .0 bytes."):
        cls_model.build_model("resnet10t", weights=tmp_path / "empty.pth")
    from safetensors.torch import save_file

    save_file(src.state_dict(), tmp_path / "r10.safetensors")  # timm's hub format
    model = cls_model.build_model("resnet10t", weights=tmp_path / "r10.safetensors")
    torch.testing.assert_close(model.state_dict()[key], src.state_dict()[key])
    with pytest.raises(ValueError, match="backbone 'no_such_net'"):
        cls_model.build_model("no_such_net")


def test_config_file_and_errors():
    cfg = load(ClassifierConfig, ROOT / "configs" / "cls.yaml", ["backbone=resnet10t", "imgsz=32"])
    assert (cfg.mode, cfg.margin, cfg.backbone, cfg.imgsz) == ("crop", 16, "resnet10t", 32)
    with pytest.raises(ConfigError, match="valid keys: .*backbone"):
        load(ClassifierConfig, None, ["backbones=resnet18"])
    with pytest.raises(ConfigError, match="mode: 'box' is not one of crop, full"):
        load(ClassifierConfig, None, ["mode=box"])


def test_resolve_device():
    from cytocore.config import ConfigError

    assert cls_model.resolve_device("cpu") == "cpu"
    assert cls_model.resolve_device("") == ("cuda:0" if torch.cuda.is_available() else "cpu")
    if torch.cuda.is_available():
        assert cls_model.resolve_device("0") == "cuda:0"
    else:
        with pytest.raises(ConfigError, match="CUDA is not available"):
            cls_model.resolve_device("1")


def test_box_size_features_are_log_whole_pixel_sides_over_the_reference():
    feats = cls_data.box_size_features(np.array([[10, 20, 138, 276], [0, 0, 64.4, 31.6]]))
    # 128 x 256 -> log(128 / 128), log(256 / 128); 64.4 x 31.6 -> whole pixels 64 x 32 -> log(1/2), log(1/4)
    np.testing.assert_allclose(feats, [[0.0, math.log(2)], [math.log(0.5), math.log(0.25)]], rtol=1e-6)
    assert feats.dtype == np.float32 and feats.shape == (2, 2)
    assert cls_data.box_size_features(np.array([5, 5, 5, 9]))[0, 0] == pytest.approx(math.log(1 / 128))
    whole = cls_data.image_size_features([np.zeros((60, 50, 3), np.uint8)])
    np.testing.assert_allclose(whole, np.log([[50 / 128, 60 / 128]]), rtol=1e-6)


def test_size_aware_model_sees_the_box_size(tmp_path):
    torch.manual_seed(0)
    model = cls_model.build_model("resnet10t", box_size=True).eval()
    assert isinstance(model, cls_model.SizeAwareClassifier) and cls_model.takes_size(model)
    assert model.head.in_features == model.backbone.num_features + 2
    assert cls_model.size_aware_state(model.state_dict())
    x = torch.zeros(2, 3, 32, 32)
    small, large = torch.tensor([[-1.0, -1.0]] * 2), torch.tensor([[1.0, 1.0]] * 2)
    with torch.no_grad():  # same pixels, only the size differs
        assert not torch.allclose(cls_model.forward(model, x, small), cls_model.forward(model, x, large))
    with pytest.raises(ValueError, match="box sizes"):
        cls_model.forward(model, x)
    plain = cls_model.build_model("resnet10t").eval()
    assert not cls_model.size_aware_state(plain.state_dict()) and not cls_model.takes_size(plain)
    with torch.no_grad():  # a plain model ignores sizes
        torch.testing.assert_close(cls_model.forward(plain, x, small), cls_model.forward(plain, x, large))
    # local weights go to the backbone; the head is new
    src = cls_model.build_model("resnet10t", num_classes=10)
    torch.save(src.state_dict(), tmp_path / "r10.pth")
    loaded = cls_model.build_model("resnet10t", weights=tmp_path / "r10.pth", box_size=True)
    key = next(iter(src.state_dict()))
    torch.testing.assert_close(loaded.backbone.state_dict()[key], src.state_dict()[key])
    crops = np.random.default_rng(0).integers(0, 255, (3, 32, 32, 3), dtype=np.uint8)
    sizes = np.array([[-1, -1], [0, 0], [1, 1]], np.float32)
    probs = cls_model.predict_probs(model, crops, "cpu", tta=True, batch=2, sizes=sizes)
    assert probs.shape == (3, classes.NUM_CLASSES)
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-5)
    views = cls_model.view_probs(model, crops, "cpu", 2, sizes)
    np.testing.assert_array_equal(cls_model.combine(views, True), probs)


def _two_images(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (90, 120, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(rng.integers(0, 255, (60, 50, 3), dtype=np.uint8)).save(tmp_path / "b.png")
    return pd.DataFrame({"NAME": ["a.png", "a.png", "b.png"], "x1": [10, -8, 30], "y1": [20, 5, 40],
                         "x2": [50, 30, 58], "y2": [70, 33, 75], "class": ["PNN", "EO", "LY"]})


def test_cached_crops_equal_decoded_crops(tmp_path):
    table, rng = _two_images(tmp_path), np.random.default_rng(1)
    args = (table, tmp_path, 24, 6, "none", 0.1)
    plain, cached = cls_data.CropDataset(*args), cls_data.CropDataset(*args, cache_bytes=2**30)
    assert plain.cached_bytes == 0 and all(p is None for p in plain.patches)
    assert 0 < cached.cached_bytes < 90 * 120 * 3 + 60 * 50 * 3  # the reachable pixels, not whole images
    for i in range(len(table)):
        for _ in range(50):  # any jittered box reaches only cached pixels
            box = cls_data.jitter_box(plain.xyxy[i], 0.1, rng)
            a, b = plain._pixels(i, box), cached._pixels(i, box)
            np.testing.assert_array_equal(a[0], b[0])
            assert a[1:] == b[1:]
    x, size, y = cached[2]
    assert x.shape == (3, 24, 24) and y == classes.CLASS_TO_ID["LY"] and size.shape == (2,)
    full = cls_data.CropDataset(table, tmp_path, 24, 6, full=True, cache_bytes=2**30)
    assert full.cached_bytes == 90 * 120 * 3 + 60 * 50 * 3  # image a counted once for its two rows
    # full mode: the size is the image's (b.png: 50 x 60)
    np.testing.assert_allclose(full[2][1].numpy(), np.log([50 / 128, 60 / 128]), rtol=1e-6)


def test_crop_cache_stops_at_its_budget(tmp_path):
    table = _two_images(tmp_path)
    first = cls_data.CropDataset(table.iloc[:1], tmp_path, 24, 6, cache_bytes=2**30).cached_bytes
    partial = cls_data.CropDataset(table, tmp_path, 24, 6, cache_bytes=first)
    assert partial.cached_bytes == first and partial.patches[0] is not None
    assert partial.patches[1] is None and partial.patches[2] is None  # decoded per crop instead
    plain = cls_data.CropDataset(table, tmp_path, 24, 6)
    for i in range(3):
        torch.testing.assert_close(partial[i][0], plain[i][0])
    assert 0 < cls_data.cache_budget()


def test_checkpoint_from_before_box_size_loads_and_predicts(tmp_path, caplog):
    from cytocore import config
    from train import checkpoint
    from train.cls.adapter import ClassifierAdapter

    cfg = config.to_dict(config.from_dict(ClassifierConfig, {"backbone": "resnet10t", "imgsz": 32}))
    old = {k: v for k, v in cfg.items() if k not in ("box_size", "cache")}  # written before these keys
    checkpoint.save(tmp_path / "old.pt", cls_model.build_model("resnet10t"), old, 0, metric=0.0)
    pred = ClassifierAdapter().load(tmp_path / "old.pt")
    assert not pred.cfg.box_size and not pred.takes_size
    image = np.random.default_rng(0).integers(0, 255, (60, 80, 3), dtype=np.uint8)
    probs = pred.classify_boxes([image], [np.array([[5, 5, 40, 40], [20, 10, 70, 55]])])[0]
    assert probs.shape == (2, classes.NUM_CLASSES) and np.allclose(probs.sum(1), 1.0)
    assert "box_size" not in caplog.text  # nothing to complain about

    checkpoint.save(tmp_path / "sized.pt", cls_model.build_model("resnet10t", box_size=True), cfg, 0,
                    metric=0.0)
    sized = ClassifierAdapter().load(tmp_path / "sized.pt", {"tta": False})
    assert sized.cfg.box_size and sized.takes_size and not sized.cfg.tta
    crops = sized.crops(image, np.array([[5, 5, 40, 40]]))
    small = cls_data.box_size_features(np.array([[5, 5, 40, 40]]))
    # the same pixels scored as a 35-px and as a 350-px box: only the size input differs
    large = small + math.log(10)
    assert not np.allclose(sized.classify(crops, sizes=small), sized.classify(crops, sizes=large))
    np.testing.assert_array_equal(sized.classify_boxes([image], [np.array([[5, 5, 40, 40]])])[0],
                                  sized.classify(crops, sizes=small))
    assert sized.classify_images([image]).shape == (1, classes.NUM_CLASSES)
    with pytest.raises(ValueError, match="box sizes"):
        sized.classify(crops)
    # a config that disagrees with the weights: the weights decide, with a warning
    checkpoint.save(tmp_path / "liar.pt", cls_model.build_model("resnet10t"), cfg, 0, metric=0.0)
    assert not ClassifierAdapter().load(tmp_path / "liar.pt").takes_size
    assert "config says box_size True but the weights are plain" in caplog.text
