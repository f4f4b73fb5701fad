"""The model registry and the model configs: names, lazy imports, commented YAMLs, key checks."""
from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest
import yaml

from cytocore import config, paths
from cytocore.config import ConfigError
from train import registry

pytestmark = pytest.mark.unit

ALL = ("yolov5", "yolov8", "yolo11", "fasterrcnn", "fasterrcnn_mobilenet", "retinanet", "unet", "cls",
       "cls_full")


def test_registry_names_and_targets():
    assert registry.names() == ["yolov5", "yolov8", "yolo11", "fasterrcnn", "fasterrcnn_mobilenet",
                                "retinanet", "unet", "cls", "cls_full"]
    assert registry.MODELS["unet"] == "train.unet.adapter:UnetAdapter"
    assert registry.MODELS["cls"] == "train.cls.adapter:ClassifierAdapter"
    assert registry.MODELS["cls_full"] == "train.cls.adapter:FullImageAdapter"


@pytest.mark.smoke  # starts a process
def test_import_registry_stays_light():
    code = "import sys, train.registry; print([m for m in ('torch', 'ultralytics') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], cwd=paths.ROOT, capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]"


def test_unknown_model_lists_valid_names():
    with pytest.raises(ConfigError) as err:
        registry.get("yolov9")
    assert "unknown model 'yolov9'" in str(err.value)
    valid = "valid models: yolov5, yolov8, yolo11, fasterrcnn, fasterrcnn_mobilenet, retinanet, unet, cls"
    assert valid in str(err.value)
    with pytest.raises(ConfigError, match="valid models"):
        registry.config_path("YOLOv8")


def test_missing_adapter_module_or_class_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(registry.MODELS, "ghost", "train.no_such_module:GhostAdapter")
    with pytest.raises(ConfigError, match="ghost.*train.no_such_module is not available"):
        registry.get("ghost")
    monkeypatch.setitem(registry.MODELS, "ghost2", "train.registry:NoSuchAdapter")
    with pytest.raises(ConfigError, match="train.registry has no class NoSuchAdapter"):
        registry.get("ghost2")


@pytest.mark.parametrize("name", ALL)
def test_every_model_config_agrees_with_its_family_yaml(name):
    cls = registry.get(name).config_cls
    assert config.defaults_path(cls) == registry.config_path(name)
    assert config.check_defaults(cls, name) == []
    assert config.to_dict(registry.load_config(name)) == config.file_defaults(cls, name)


def test_one_config_per_family_and_its_model_sections():
    files = {name: registry.config_path(name).name for name in ALL}
    assert files == {"yolov5": "yolo.yaml", "yolov8": "yolo.yaml", "yolo11": "yolo.yaml",
                     "fasterrcnn": "tv.yaml", "fasterrcnn_mobilenet": "tv.yaml", "retinanet": "tv.yaml",
                     "unet": "unet.yaml", "cls": "cls.yaml", "cls_full": "cls.yaml"}
    assert sorted(p.name for p in paths.CONFIGS.glob("*.yaml")) == sorted(
        {*files.values(), "demo.yaml", "recipe.yaml", "bccd.yaml", "ensemble.yaml", "folds.yaml",
         "masks.yaml", "rehearsal.yaml"})
    assert (registry.load_config("cls").mode, registry.load_config("cls_full").mode) == ("crop", "full")
    assert registry.load_config("fasterrcnn_mobilenet").rpn_proposals == 500
    with pytest.raises(ConfigError, match="unknown key.*roi_samples"):
        registry.load_config("retinanet", ["roi_samples=64"])


def _drifted_configs(tmp_path, monkeypatch, edit) -> None:
    """A copy of configs/ with configs/unet.yaml edited by ``edit``, used as the kit's configs."""
    import shutil

    shutil.copytree(paths.CONFIGS, tmp_path / "configs")
    path = tmp_path / "configs" / "unet.yaml"
    path.write_text(edit(path.read_text()))
    monkeypatch.setattr(paths, "CONFIGS", tmp_path / "configs")


@pytest.mark.parametrize("edit, problem", [
    (lambda t: t.replace("dice_weight: 1.0", "dice_weights: 1.0"), "dice_weights are not fields"),
    (lambda t: t.replace("fg_thr: 0.5                  # ", "fg_thr: 0.5  ").replace("1 - p(background)", ""),
     "no comment on 'fg_thr"),
    (lambda t: "\n".join(line for line in t.splitlines() if not line.startswith("min_area")),
     "no value for min_area"),
    (lambda t: t.replace("imgsz: 256", "imgsz: big"), "imgsz must be int"),
])
def test_the_agreement_check_fails_when_yaml_and_dataclass_drift(tmp_path, monkeypatch, edit, problem):
    from train.unet.adapter import UnetConfig

    _drifted_configs(tmp_path, monkeypatch, edit)
    problems = config.check_defaults(UnetConfig, "unet")
    assert any(problem in p for p in problems), problems


def test_a_dataclass_default_beside_the_yaml_is_a_drift():
    @dataclasses.dataclass
    class Twice:
        DEFAULTS = "unet.yaml"
        encoder: str = "resnet18"  # a second home for a default

    assert "Twice.encoder has a default in the dataclass too" in config.check_defaults(Twice)


def test_a_drifted_yaml_is_refused_at_load_naming_the_file(tmp_path, monkeypatch):
    _drifted_configs(tmp_path, monkeypatch, lambda t: t.replace("dice_weight: 1.0", "dice_weights: 1.0"))
    with pytest.raises(ConfigError, match="unet.yaml: unknown key\\(s\\) dice_weights"):
        registry.load_config("unet")


@pytest.mark.parametrize("name, old, new", [("yolov8", "lr0", "lr"), ("yolo11", "iou", "nms_iou"),
                                            ("fasterrcnn", "min_lr_ratio", "lrf"),
                                            ("unet", "eval_every", "val_every")])
def test_an_old_key_in_an_override_names_the_new_one(name, old, new):
    with pytest.raises(ConfigError) as err:
        registry.load_config(name, [f"{old}=2"])
    assert str(err.value) == f"override: {old} is now called {new} (write {new}=...)"
    assert "\n" not in str(err.value)


def test_one_name_per_idea_across_families():
    keys = {name: set(config.to_dict(registry.load_config(name))) for name in ALL}
    for idea in ("epochs", "batch", "imgsz", "device", "pretrained", "seed", "workers", "lr", "conf", "amp"):
        assert all(idea in k for k in keys.values()), idea
    for name in ("yolov8", "fasterrcnn", "unet"):
        assert "val_every" in keys[name]
    for name in ("yolov8", "fasterrcnn"):
        assert {"lrf", "nms_iou", "max_det", "predict_batch", "warmup_epochs"} <= keys[name]
    assert not set().union(*keys.values()) & {"lr0", "iou", "eval_every", "min_lr_ratio", "weights"}


def test_the_wbf_iou_threshold_has_one_home():
    import inspect

    from infer import fuse, wbf
    from infer.config import load_config

    assert inspect.signature(wbf.fuse_image).parameters["iou_thr"].default is inspect.Parameter.empty
    assert {f.name: f.default for f in dataclasses.fields(fuse.FuseParams)}["iou_thr"] is dataclasses.MISSING
    home = config.read_yaml(paths.CONFIGS / "ensemble.yaml")["iou_thr"]
    mine = paths.work_dir() / "no_iou.yaml"
    mine.parent.mkdir(parents=True, exist_ok=True)
    mine.write_text("members: [{model: yolov8}]\n")
    assert load_config(mine).iou_thr == home == load_config(paths.CONFIGS / "ensemble.yaml").iou_thr


def test_yolov5_config_says_original_weights_do_not_load():
    text = registry.config_path("yolov5").read_text()
    assert "YOLOv5u" in text and "original yolov5 repository" in text and "do not load" in text


@pytest.mark.parametrize("name", ["yolov8", "fasterrcnn", "unet", "cls"])
def test_unknown_config_key_names_the_valid_ones(name):
    with pytest.raises(ConfigError) as err:
        registry.load_config(name, ["epoch=3"])
    assert "unknown key(s) epoch" in str(err.value) and "epochs" in str(err.value)


def test_makefile_overrides_are_keys_of_every_model_config():
    for name in ALL:
        cfg = registry.load_config(name, ["epochs=2", "imgsz=96", "batch=3", "device=cpu", "pretrained=w.pt"])
        assert (cfg.epochs, cfg.imgsz, cfg.batch, cfg.device, cfg.pretrained) == (2, 96, 3, "cpu", "w.pt")
    assert registry.load_config("yolov8", ["device=0"]).device == "0"  # YAML int -> str
    assert registry.load_config("yolov8", ["device=0,1"]).device == "0,1"


def test_bad_enumerated_values_are_refused():
    with pytest.raises(ConfigError, match="valid sizes are n, s, m, l, x"):
        registry.load_config("yolo11", ["size=q"])
    with pytest.raises(ConfigError, match="challenge, fitness"):
        registry.load_config("yolov8", ["select=map"])
    with pytest.raises(ConfigError, match="sgd, adamw"):
        registry.load_config("retinanet", ["optimizer=adam"])


def test_run_config_reads_the_saved_config(tmp_path, monkeypatch, caplog):
    from train import runs

    monkeypatch.setenv("CYTOKIT_WORK", str(tmp_path))
    run = paths.run_dir("d_k2_s0", "yolov8", 1)
    default = registry.load_config("yolov8").imgsz
    assert registry.run_config("yolov8", run).imgsz == default  # no run there: the defaults
    runs.save_config(registry.load_config("yolov8", ["imgsz=320", "size=s"]), run)
    cfg = registry.run_config("yolov8", run, ["conf=0.01"])
    assert (cfg.imgsz, cfg.size, cfg.conf) == (320, "s", 0.01)


def test_a_run_saved_with_old_key_names_still_loads(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("CYTOKIT_WORK", str(tmp_path))
    saved = config.to_dict(registry.load_config("unet", ["val_every=3"]))
    saved["eval_every"] = saved.pop("val_every")
    del saved["refine_arch"]  # a key added after the run: its default today
    path = paths.run_dir("d_k2_s0", "unet", 0) / "config.yaml"
    path.parent.mkdir(parents=True)
    path.write_text(yaml.safe_dump(saved))
    cfg = registry.run_config("unet", path.parent)
    assert (cfg.val_every, cfg.refine_arch) == (3, "vit_b")
    assert "key eval_every is now called val_every" in caplog.text
