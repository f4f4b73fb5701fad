"""Pieces of the torchvision loop: schedule, balanced sampling, dataset, DDP helpers, weights loading."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DistributedSampler

from cytocore.config import ConfigError, from_dict
from train import dist
from train.tv.adapter import FasterRCNNConfig, TvConfig, build_model
from train.tv.data import CocoDetection, augmentations
from train.tv.engine import lr_factor
from train.weights import WeightsError
from train.weights.load import load_matching, read_tensors

pytestmark = pytest.mark.unit


def test_lr_factor_warmup_then_cosine():
    # total 100 iterations, 10 of warm-up from 0.001, cosine down to 0.01
    assert lr_factor(0, 100, 10, 0.01) == pytest.approx(0.001)
    assert lr_factor(5, 100, 10, 0.01) == pytest.approx(0.001 + 0.999 * 5 / 10)
    assert lr_factor(10, 100, 10, 0.01) == pytest.approx(1.0)
    assert lr_factor(55, 100, 10, 0.01) == pytest.approx(0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi / 2)))
    assert lr_factor(100, 100, 10, 0.01) == pytest.approx(0.01)
    assert lr_factor(0, 100, 0, 0.01) == pytest.approx(1.0)  # no warm-up


@pytest.fixture
def coco(tmp_path):
    """Four images: A (PNN + Lysee, one box over the left edge), B (PNN), C (PNN, PNN), D (no box)."""
    images, anns = [], []
    boxes = {"A": [(0, (-5, 10, 20, 20)), (1, (30, 30, 10, 10))], "B": [(0, (5, 5, 10, 10))],
             "C": [(0, (1, 1, 8, 8)), (0, (20, 20, 8, 8))], "D": []}
    for i, (name, items) in enumerate(boxes.items(), start=1):
        Image.fromarray(np.full((48, 64, 3), 100 + i, np.uint8)).save(tmp_path / f"{name}.jpg")
        images.append({"id": i, "file_name": f"{name}.jpg", "width": 64, "height": 48})
        for cls, bbox in items:
            anns.append({"id": len(anns) + 1, "image_id": i, "bbox": list(bbox), "category_id": cls + 1,
                         "area": bbox[2] * bbox[3], "iscrowd": 0})
    path = tmp_path / "coco.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": []}))
    return path


def test_dataset_targets_and_balanced_weights(coco):
    ds = CocoDetection(coco, coco.parent, label_offset=1, augment="none")
    assert len(ds) == 4
    image, target = ds[0]
    assert image.shape == (3, 48, 64) and image.dtype == torch.float32 and float(image.max()) <= 1.0
    # xywh (-5, 10, 20, 20) -> xyxy (-5, 10, 15, 30) clipped to (0, 10, 15, 30); labels = class id + 1
    np.testing.assert_allclose(target["boxes"].numpy(), [[0, 10, 15, 30], [30, 30, 40, 40]])
    assert target["labels"].tolist() == [1, 2]
    assert ds[3][1]["boxes"].shape == (0, 4)
    # class counts: PNN 4, Lysee 1 -> A 1/1, B 1/4, C 1/4, D (no box) 1/total boxes = 1/5
    assert ds.balanced_weights() == pytest.approx([1.0, 0.25, 0.25, 0.2])
    retina = CocoDetection(coco, coco.parent, label_offset=0, augment="default")
    assert retina[0][1]["labels"].max() <= 1


def test_unknown_augmentation_preset():
    with pytest.raises(ConfigError, match="valid presets are default, light, none"):
        augmentations("heavy")


def test_devices():
    assert dist.resolve_device("cpu") == "cpu"
    assert dist.gpu_ids("0,1") == [0, 1] and dist.gpu_ids("cuda:1") == [1] and dist.gpu_ids("2") == [2]
    assert dist.gpu_ids("cpu") == [] and dist.gpu_ids("auto") == [0]  # device=cpu must not raise
    with pytest.raises(ConfigError, match="expected cpu, auto, a GPU index"):
        dist.gpu_ids("gpu-one")
    if not torch.cuda.is_available():
        assert dist.resolve_device("") == "cpu" and dist.resolve_device("auto") == "cpu"
        with pytest.raises(ConfigError, match="CUDA is not available"):
            dist.resolve_device("0")


def test_cpu_threads_leave_a_core_free():
    import os

    before = torch.get_num_threads()
    try:
        assert dist.set_cpu_threads(3) == 3 and torch.get_num_threads() == 3
        assert dist.set_cpu_threads(0) == min(8, max(1, os.cpu_count() - 1)) == torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def test_weighted_distributed_sampler_splits_one_draw():
    weights = [1.0, 2.0, 3.0, 4.0, 5.0]
    ranks = [dist.WeightedDistributedSampler(weights, 2, r, seed=7) for r in range(2)]
    for s in ranks:
        s.set_epoch(3)
    draw = torch.multinomial(torch.tensor(weights, dtype=torch.double), 6, True,
                             generator=torch.Generator().manual_seed(10)).tolist()
    assert list(ranks[0]) == draw[0::2] and list(ranks[1]) == draw[1::2]
    assert len(ranks[0]) == 3


def test_ddp_path_with_gloo_world_size_one(tmp_path):
    assert dist.init("cpu", init_method=f"file://{tmp_path / 'store'}", world=1, rank_=0)
    try:
        assert dist.is_distributed() and dist.world_size() == 1 and dist.is_main()
        sampler = dist.make_sampler(list(range(6)), shuffle=False)
        assert isinstance(sampler, DistributedSampler) and list(sampler) == [0, 1, 2, 3, 4, 5]
        weighted = dist.make_sampler(list(range(6)), True, weights=[0, 0, 1, 0, 0, 0], seed=1)
        assert list(weighted) == [2] * 6
        model = torch.nn.Linear(2, 1)
        net = dist.wrap(model, "cpu")
        assert isinstance(net, torch.nn.parallel.DistributedDataParallel) and dist.unwrap(net) is model
        net(torch.ones(3, 2)).sum().backward()
        np.testing.assert_allclose(model.weight.grad.numpy(), [[3.0, 3.0]])
        dist.barrier()
    finally:
        dist.cleanup()
    assert not dist.is_distributed()
    assert dist.wrap(model, "cpu") is model


def test_models_sized_for_the_kit():
    cfg = from_dict(TvConfig, {"imgsz": 320, "max_size": 512})
    small = from_dict(FasterRCNNConfig, {"imgsz": 320, "max_size": 512, "roi_samples": 64,
                                         "rpn_proposals": 300})
    frcnn = build_model("fasterrcnn_mobilenet_v3_large_fpn", small)
    assert frcnn.roi_heads.box_predictor.cls_score.out_features == 24  # background + 23
    assert frcnn.transform.min_size == (320,) and frcnn.transform.max_size == 512
    assert frcnn.roi_heads.fg_bg_sampler.batch_size_per_image == 64
    assert frcnn.rpn._post_nms_top_n == {"training": 300, "testing": 300}
    assert frcnn.rpn._pre_nms_top_n == {"training": 600, "testing": 600}
    retina = build_model("retinanet_resnet50_fpn_v2", cfg)
    assert retina.head.classification_head.num_classes == 23
    with pytest.raises(ConfigError, match="unknown torchvision architecture"):
        build_model("ssd300_vgg16", cfg)


def test_weights_files_are_read_safely_and_checked(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Linear(3, 1))
    with pytest.raises(WeightsError, match="none.pt: torchvision weights file not found"):
        read_tensors(tmp_path / "none.pt", "torchvision")
    (tmp_path / "notes.pt").write_text("not a checkpoint")
    with pytest.raises(WeightsError, match="notes.pt: not torchvision weights: it starts with .not a check"):
        read_tensors(tmp_path / "notes.pt", "torchvision")
    torch.save([torch.zeros(2)], tmp_path / "list.pt")
    with pytest.raises(WeightsError, match="not a torchvision state dict"):
        read_tensors(tmp_path / "list.pt", "torchvision")
    torch.save({"model": model.state_dict(), "epoch": 3}, tmp_path / "kit.pt")  # a kit checkpoint
    state = read_tensors(tmp_path / "kit.pt", "torchvision")
    assert set(state) == {"0.weight", "0.bias", "1.weight", "1.bias"}

    other = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Linear(3, 5))  # another head
    assert load_matching(other, state, tmp_path / "kit.pt", "test") == ["1.weight", "1.bias"]
    assert torch.equal(other[0].weight, model[0].weight)
    with pytest.raises(WeightsError, match="does not fit this test model: 2 .1.weight, 1.bias. tensors"):
        load_matching(other, state, tmp_path / "kit.pt", "test", strict=True)
    with pytest.raises(WeightsError, match="no tensor fits"):
        load_matching(torch.nn.Linear(7, 7), state, tmp_path / "kit.pt", "test")
