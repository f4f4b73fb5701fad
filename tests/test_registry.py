"""The model registry and the model configs: names, lazy imports, commented YAMLs, key checks."""
from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest
import yaml

from cytokit import paths
from cytokit.config import ConfigError
from train import registry

MINE = ("yolov5", "yolov8", "yolo11", "fasterrcnn", "fasterrcnn_mobilenet", "retinanet")


def test_registry_names_and_targets():
    assert registry.names() == ["yolov5", "yolov8", "yolo11", "fasterrcnn", "fasterrcnn_mobilenet",
                                "retinanet", "unet", "cls", "cls_full"]
    assert registry.MODELS["unet"] == "train.unet.adapter:UnetAdapter"
    assert registry.MODELS["cls"] == "train.cls.adapter:ClassifierAdapter"
    assert registry.MODELS["cls_full"] == "train.cls.adapter:FullImageAdapter"


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


@pytest.mark.parametrize("name", MINE)
def test_config_yaml_has_every_key_commented_and_loads(name):
    path = registry.config_path(name)
    cls = registry.get(name).config_cls
    fields = [f.name for f in dataclasses.fields(cls)]
    data = yaml.safe_load(path.read_text())
    assert list(data) == fields  # every key, in the dataclass order
    key_lines = [line for line in path.read_text().splitlines() if line and not line.startswith("#")]
    assert len(key_lines) == len(fields)
    for line in key_lines:
        assert " # " in line and line.split(" # ", 1)[1].strip(), f"{path.name}: no comment on {line!r}"
    cfg = registry.load_config(name)
    assert dataclasses.asdict(cfg) == dataclasses.asdict(cls(**{k: v for k, v in data.items()}))


def test_yolov5_config_says_original_weights_do_not_load():
    text = registry.config_path("yolov5").read_text()
    assert "YOLOv5u" in text and "original yolov5 repository" in text and "do not load" in text


@pytest.mark.parametrize("name", ["yolov8", "fasterrcnn"])
def test_unknown_config_key_names_the_valid_ones(name):
    with pytest.raises(ConfigError) as err:
        registry.load_config(name, ["epoch=3"])
    assert "unknown key(s) epoch" in str(err.value) and "epochs" in str(err.value)


def test_makefile_overrides_are_keys_of_every_detector_config():
    for name in MINE:
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


def test_run_config_reads_the_saved_config(tmp_path, monkeypatch):
    from train import runs
    from train.yolo.adapter import UltraConfig

    monkeypatch.setenv("CYTOKIT_WORK", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="no trained run of yolov8 fold 1"):
        registry.run_config("yolov8", 1)
    runs.save_config(UltraConfig(imgsz=320, size="s"), paths.run_dir("yolov8", 1))
    cfg = registry.run_config("yolov8", 1, ["conf=0.01"])
    assert (cfg.imgsz, cfg.size, cfg.conf) == (320, "s", 0.01)
