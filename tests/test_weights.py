"""Pretrained weights: the catalogue against the installed packages, ``pretrained: auto|none|PATH``, the
renamed key, and one error for every bad weights file of every model kind."""
from __future__ import annotations

import json
import logging
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from cytocore import paths
from cytocore.config import ConfigError
from cytocore.io import cli
from train import registry
from train.weights import WeightsError, catalog, normalise, resolve
from train.weights.check import check_file
from train.weights.load import load_matching, read_tensors

pytestmark = pytest.mark.unit


@pytest.fixture
def weights_dir(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "weights"
    folder.mkdir()
    monkeypatch.setenv("CYTOKIT_WEIGHTS", str(folder))
    return folder


def test_torchvision_entries_match_the_installed_weights_enums():
    import torchvision
    from torch.hub import HASH_REGEX

    tv = [e for e in catalog.ENTRIES if e.upstream.startswith("torchvision:")]
    assert len(tv) == 5
    for e in tv:
        enum, _, member = e.upstream.partition(":")[2].partition(".")
        found = getattr(torchvision.models.detection, enum, None) or getattr(torchvision.models, enum)
        weights = found[member]
        assert e.url == weights.url and e.file == Path(weights.url).name
        assert e.sha256 == HASH_REGEX.search(e.file).group(1) and len(e.sha256) == 8
        assert e.mb == pytest.approx(weights.meta["_file_size"], abs=0.1)


def test_ultralytics_entries_are_its_release_assets():
    import inspect

    from ultralytics.utils.downloads import GITHUB_ASSETS_NAMES, GITHUB_ASSETS_REPO, attempt_download_asset

    release = inspect.signature(attempt_download_asset).parameters["release"].default
    assert catalog.ULTRALYTICS == f"https://github.com/{GITHUB_ASSETS_REPO}/releases/download/{release}"
    yolo = [e for e in catalog.ENTRIES if e.loader == "ultralytics"]
    assert {e.name for e in yolo} == {f"{f}{s}{'u' if f == 'yolov5' else ''}"
                                      for f in ("yolov5", "yolov8", "yolo11") for s in "nsm"}
    for e in yolo:
        assert e.file in GITHUB_ASSETS_NAMES and e.url == f"{catalog.ULTRALYTICS}/{e.file}"


def test_timm_entries_are_their_pretrained_cfg_hub_files():
    import timm

    for e in (e for e in catalog.ENTRIES if e.upstream.startswith("timm:")):
        cfg = timm.models.get_pretrained_cfg(e.name)
        assert cfg is not None and cfg.hf_hub_id == f"timm/{e.name}" and cfg.num_classes == 1000
        assert e.url == f"https://huggingface.co/{cfg.hf_hub_id}/resolve/main/model.safetensors"
        assert e.loader == f"timm:{e.name.partition('.')[0]}"


def test_default_set_holds_what_every_default_config_starts_from():
    default = {e.name for e in catalog.select("default")}
    for name in registry.names():
        key = registry.get(name)().pretrained_key(registry.load_config(name))
        entry = catalog.match(key)
        assert entry is not None and entry.name in default, f"{name} ({key}) has no file in SET=default"
        assert registry.load_config(name).pretrained == "auto"
    assert {e.name for e in catalog.select("all")} == {e.name for e in catalog.ENTRIES}
    assert [e.name for e in catalog.select("yolov8s,medsam_vit_b")] == ["yolov8s", "medsam_vit_b"]
    with pytest.raises(ConfigError, match="SET=yolov9: unknown; valid: default, all or a file name"):
        catalog.select("yolov9")


def test_entries_are_unique_and_checked_somehow():
    n = len(catalog.ENTRIES)
    assert len({e.name for e in catalog.ENTRIES}) == len({e.file for e in catalog.ENTRIES}) == n
    keys = [k for e in catalog.ENTRIES for k in e.models]
    assert len(keys) == len(set(keys))
    medsam = catalog.by_name()["medsam_vit_b"]
    assert medsam.md5 == "3bb6db55bd0c9ca30b61248bca72f8d6" and medsam.loader == "sam:vit_b"


def test_pretrained_values_and_what_the_log_says(weights_dir, caplog):
    assert [normalise(v) for v in (None, "", "null", "None", False, "auto", "AUTO", "w.pt")] == \
        ["none", "none", "none", "none", "none", "auto", "auto", "w.pt"]
    caplog.set_level(logging.INFO, "train.weights")
    assert resolve("none", "yolo:yolov8n", "yolov8 fold 0") is None
    assert resolve("auto", "yolo:yolov8n", "yolov8 fold 0") is None
    assert "yolov8 fold 0: pretrained: auto -> from scratch" in caplog.text and "make weights" in caplog.text
    (weights_dir / "yolov8n.pt").write_bytes(b"stand-in")
    assert resolve("auto", "yolo:yolov8n", "yolov8 fold 0") == weights_dir / "yolov8n.pt"
    assert f"pretrained: auto -> {weights_dir / 'yolov8n.pt'} (ultralytics yolov8n, COCO)" in caplog.text
    assert resolve("auto", "cls:resnet10t", "cls") is None
    assert "no pretrained file is known for resnet10t" in caplog.text
    with pytest.raises(WeightsError, match="nope.pt: weights file not found"):
        resolve(str(weights_dir / "nope.pt"), "yolo:yolov8n", "yolov8 fold 0")


def test_the_old_weights_key_is_an_error_as_an_override_and_read_in_old_run_configs(tmp_path):
    for name in ("yolov8", "fasterrcnn", "cls", "unet"):
        renamed = r"^override: weights is now called pretrained \(write pretrained=\.\.\.\)"
        with pytest.raises(ConfigError, match=renamed):
            registry.load_config(name, ["weights=w.pt"])
    old = tmp_path / "config.yaml"  # a run folder written before the rename
    old.write_text("epochs: 3\nweights: null\n")
    from cytocore.config import load
    from train.yolo.adapter import UltraConfig

    assert load(UltraConfig, old).pretrained == "none"
    old.write_text("weights: /x/coco.pt\n")
    assert load(UltraConfig, old).pretrained == "/x/coco.pt"


@pytest.mark.smoke  # starts a process
def test_make_weights_and_the_weights_variable_reach_their_commands():
    def dry(*args: str) -> str:
        return subprocess.run(["make", "-n", "-C", str(paths.ROOT), *args], capture_output=True, text=True,
                              check=True).stdout

    assert "-m pipeline.weights --recipe 'configs/recipe.yaml'" in dry("weights")  # the recipe's files
    assert "-m pipeline.weights --recipe 'my r.yaml'" in dry("weights", "RECIPE=my r.yaml")
    assert "-m train.weights --set all" in dry("weights", "SET=all")
    assert "pretrained=none" in dry("train", "WEIGHTS=none")
    assert re.search(r"\bweights=", dry("train", "WEIGHTS=x.pt")) is None


# --- pretrained: auto picks the catalogue file and adapts the head -----------------------------------

def test_yolo_auto_passes_the_coco_checkpoint_to_ultralytics(weights_dir, tmp_path):
    from types import SimpleNamespace

    from ultralytics import YOLO

    from train.yolo.adapter import Yolov8Adapter

    fold = SimpleNamespace(yolo_yaml=Path("/d/data.yaml"), fold=0)
    assert Yolov8Adapter().train_args(registry.load_config("yolov8"), fold, tmp_path)["pretrained"] is False
    assert json.loads((tmp_path / "pretrained.json").read_text()) == {"pretrained": "auto", "file": None}
    torch.save({"model": YOLO("yolov8n.yaml").model}, weights_dir / "yolov8n.pt")  # an 80-class stand-in
    assert check_file(weights_dir / "yolov8n.pt", "ultralytics").startswith("ultralytics model")
    args = Yolov8Adapter().train_args(registry.load_config("yolov8"), fold, tmp_path)
    assert args["pretrained"] == str(weights_dir / "yolov8n.pt")
    record = json.loads((tmp_path / "pretrained.json").read_text())  # what make report shows
    assert record == {"pretrained": "auto", "file": str(weights_dir / "yolov8n.pt")}
    scratch = registry.load_config("yolov8", ["pretrained=none"])
    assert Yolov8Adapter().train_args(scratch, fold, tmp_path)["pretrained"] is False


@pytest.mark.smoke  # builds every model kind
def test_torchvision_coco_heads_are_left_to_their_fresh_23_class_init(weights_dir):
    from torchvision.models import detection

    from train.tv.adapter import build_model

    coco = detection.fasterrcnn_mobilenet_v3_large_fpn(weights=None, weights_backbone=None)  # 91 classes
    state = {k: v for k, v in coco.state_dict().items() if not k.endswith("num_batches_tracked")}  # frozen BN
    entry = catalog.match("tv:fasterrcnn_mobilenet_v3_large_fpn")
    torch.save(state, entry.path)
    assert check_file(entry.path, entry.loader).endswith("M parameters")  # what make weights runs
    path = resolve("auto", "tv:fasterrcnn_mobilenet_v3_large_fpn", "test")
    model = build_model("fasterrcnn_mobilenet_v3_large_fpn", registry.load_config("fasterrcnn_mobilenet"))
    left = load_matching(model, read_tensors(path, "torchvision"), path, "fasterrcnn_mobilenet")
    assert sorted(left) == [f"roi_heads.box_predictor.{p}.{t}" for p in ("bbox_pred", "cls_score")
                            for t in ("bias", "weight")]
    key = "backbone.body.0.0.weight"
    assert torch.equal(model.state_dict()[key], state[key])

    retina = detection.retinanet_resnet50_fpn_v2(weights=None, weights_backbone=None)
    kit = build_model("retinanet_resnet50_fpn_v2", registry.load_config("retinanet"))
    left = load_matching(kit, retina.state_dict(), "coco-stand-in", "retinanet")
    assert sorted(left) == [f"head.classification_head.cls_logits.{t}" for t in ("bias", "weight")]


def test_timm_imagenet_file_starts_the_classifier_with_a_new_head(weights_dir):
    import timm
    from safetensors.torch import save_file

    from cytocore import classes
    from train.cls import model as cls_model

    entry = catalog.match("cls:efficientnet_b0")
    src = timm.create_model("efficientnet_b0", pretrained=False)  # 1000 ImageNet classes, like the hub file
    save_file(src.state_dict(), entry.path)
    assert check_file(entry.path, entry.loader).startswith("360 tensors")
    model = cls_model.build_model("efficientnet_b0", weights=resolve("auto", "cls:efficientnet_b0", "test"))
    assert model.get_classifier().out_features == classes.NUM_CLASSES
    torch.testing.assert_close(model.state_dict()["conv_stem.weight"], src.state_dict()["conv_stem.weight"])


def test_unet_encoder_starts_from_torchvision_imagenet_resnet(weights_dir):
    import torchvision

    from train.unet.adapter import build_model

    entry = catalog.match("unet:resnet18")
    src = torchvision.models.resnet18()
    torch.save(src.state_dict(), entry.path)
    assert check_file(entry.path, entry.loader).startswith("122 tensors")
    model = build_model(registry.load_config("unet"), resolve("auto", "unet:resnet18", "test"))
    torch.testing.assert_close(model.encoder.conv1.weight, src.conv1.weight)
    torch.save(torchvision.models.resnet34().state_dict(), weights_dir / "r34.pth")
    with pytest.raises(WeightsError, match="not torchvision resnet18 weights: unexpected keys 80 .layer1.2"):
        check_file(weights_dir / "r34.pth", entry.loader)


# --- one error, one line, for every kind of bad weights file --------------------------------------

@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    from prepare import folds
    from prepare.synth import make as synth

    root = tmp_path_factory.mktemp("weights-errors")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CYTOKIT_WORK", str(root / "work"))
        data = root / "tiny"
        assert synth.main(["--out", str(data), "--images", "6", "--seed", "5"]) == 0
        assert folds.main(["--data", str(data), "--k", "2", "--seed", "0"]) == 0
        yield data


KIND_ARGS = {"yolov8": ["imgsz=64", "plots=false"], "fasterrcnn_mobilenet": ["imgsz=64", "max_size=96"],
             "cls": ["backbone=resnet10t", "imgsz=32"], "unet": ["imgsz=64"]}


@pytest.mark.smoke  # builds every model kind
@pytest.mark.parametrize("content", [b"", b"epoch 3 weights\n"], ids=["zero-bytes", "text"])
def test_every_model_kind_refuses_a_bad_file_in_one_line(tiny_data, tmp_path, capsys, content):
    from train.__main__ import main as train_main

    bad = tmp_path / "bad.pt"
    bad.write_bytes(content)
    for model, extra in KIND_ARGS.items():
        args = ["--fold", "0", "--data", str(tiny_data), "--k", "2", "--seed", "0", "--force", "epochs=1"]
        code = cli(train_main, ["--model", model, *args, "workers=0", f"pretrained={bad}", *extra])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 1 and len(err) == 1 and err[0].startswith(f"{bad}: "), (model, err)
        assert ("empty file (0 bytes)" if not content else "it starts with 'epoch 3") in err[0], (model, err)


def dinobloom_standin(path: Path, **timm_kwargs) -> dict:
    """A random DinoBloom-S file at ``path``: every tensor timm's ViT-S/14 at 224 px has, by name and shape
    (the hub file has no head); ``timm_kwargs`` build another shape of it instead. Returns the tensors."""
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(0)
    kwargs = {"img_size": 224, **timm_kwargs}
    state = timm.create_model("vit_small_patch14_dinov2", pretrained=False, **kwargs).state_dict()
    save_file(state, path)
    return state


@pytest.mark.smoke  # builds a ViT-S (22 M parameters)
def test_dinobloom_s_is_a_vit_s14_at_224_px_with_imagenet_normalisation():
    from train.cls import data as cls_data
    from train.cls import model as cls_model

    entry = catalog.by_name()["dinobloom_s"]
    assert entry.loader == "timm:dinobloom_s" and catalog.match("cls:dinobloom_s") is entry
    assert entry.sets == ("all",) and len(entry.sha256) == 64  # the hub's full SHA-256 of the file
    spec = cls_model.BACKBONES["dinobloom_s"]
    assert spec.imgsz == 224 and spec.mean == (0.485, 0.456, 0.406) and spec.std == (0.229, 0.224, 0.225)
    assert np.allclose(spec.mean, cls_data.MEAN) and np.allclose(spec.std, cls_data.STD)  # the kit's crops
    model = cls_model.build_model("dinobloom_s", box_size=True)
    vit = model.backbone
    assert vit.patch_embed.patch_size == (14, 14) and vit.num_features == 384
    assert tuple(vit.pos_embed.shape) == (1, (224 // 14) ** 2 + 1, 384)  # 16 x 16 patches + the class token
    logits = cls_model.forward(model.eval(), torch.zeros(2, 3, 224, 224), torch.zeros(2, 2))
    assert logits.shape == (2, 23)


@pytest.mark.smoke  # builds a ViT-S (22 M parameters)
def test_dinobloom_file_loads_through_the_kit_and_a_wrong_shape_is_refused(weights_dir):
    from train.cls import model as cls_model

    entry = catalog.by_name()["dinobloom_s"]
    state = dinobloom_standin(entry.path)
    assert check_file(entry.path, entry.loader).startswith("174 tensors, 21.6 M parameters")
    assert round(entry.path.stat().st_size / 1e6, 1) == entry.mb == 86.5  # the size the hub lists for it
    model = cls_model.build_model("dinobloom_s", weights=resolve("auto", "cls:dinobloom_s", "test"),
                                  box_size=True)
    own = model.backbone.state_dict()
    assert set(own) == set(state)  # the file starts every backbone tensor; the head is new
    torch.testing.assert_close(own["pos_embed"], state["pos_embed"])
    torch.testing.assert_close(own["blocks.11.mlp.fc2.weight"], state["blocks.11.mlp.fc2.weight"])
    # DINOv2's own 518 px position embedding (1370 tokens) is another network's file: one line, naming it
    wrong = weights_dir / "dinov2_518.safetensors"
    dinobloom_standin(wrong, img_size=518)
    for refuse in (lambda: check_file(wrong, entry.loader),
                   lambda: cls_model.build_model("dinobloom_s", weights=wrong)):
        with pytest.raises(WeightsError) as exc:
            refuse()
        assert len(str(exc.value).splitlines()) == 1 and str(exc.value).startswith(f"{wrong}: ")
        assert "pos_embed" in str(exc.value)


def test_dinobloom_takes_only_its_224_px_crops():
    assert registry.load_config("cls", ["backbone=dinobloom_s", "imgsz=224"]).backbone == "dinobloom_s"
    with pytest.raises(ConfigError, match="backbone dinobloom_s takes 224 px crops .*, not imgsz=96"):
        registry.load_config("cls", ["backbone=dinobloom_s", "imgsz=96"])
