"""Faults and bad inputs after ``make folds``, through the command lines: one line naming the path or
value, exit status 1, no traceback, nothing half-written, nothing left that blocks the next run.

OS faults (read-only folder, full disk, permission denied) are made by patching the system calls
for one folder, since the tests run as root.
"""
from __future__ import annotations

import dataclasses
import errno
import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from cytocore import classes, dataset, env, images, io, paths, predictions
from train import registry
from train.base import Adapter, Detections, Predictor

pytestmark = pytest.mark.unit


@pytest.fixture
def work(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("CYTOKIT_WORK", str(tmp_path / "work"))
    return tmp_path / "work"


def make_data(root: Path) -> Path:
    """Four 48 x 40 train images with a box each and two test images."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    lines = ["NAME,x1,y1,x2,y2,class"]
    for i, name in enumerate(["tr0.jpg", "tr1.jpg", "tr2.jpg", "tr3.jpg", "te0.jpg", "te1.jpg"]):
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(root / "images" / name)
        if name.startswith("tr"):
            lines.append(f"{name},2,2,30,30,{['PNN', 'MO', 'EO', 'LY'][i]}")
    (root / "train.csv").write_text("\n".join(lines) + "\n")
    (root / "test.csv").write_text("trustii_id,NAME\n2,te0.jpg\n3,te1.jpg\n")
    return root


def cli(main, argv, capsys) -> tuple[int, str, str]:
    rc = io.cli(main, [str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return rc, out, err


def folds(data: Path, capsys) -> tuple[int, str, str]:
    from prepare import folds as prepare_folds

    return cli(prepare_folds.main, ["--data", data, "--k", "2"], capsys)


def leftovers(folder: Path) -> list[str]:
    """Temporary files or folders of atomic writes left under ``folder``."""
    return sorted(str(p) for p in folder.rglob("*") if ".tmp" in p.name)


def refuse_under(monkeypatch, folder: Path, code: int) -> None:
    """Make creating folders and files under ``folder`` fail with ``code`` (EROFS, EACCES, ...)."""
    folder = str(folder)
    real_mkdir, real_open = os.mkdir, os.open

    def mkdir(path, *args, **kwargs):
        if os.fspath(path).startswith(folder):
            raise OSError(code, os.strerror(code), os.fspath(path))
        return real_mkdir(path, *args, **kwargs)

    def open_(path, flags, *args, **kwargs):
        if os.fspath(path).startswith(folder) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise OSError(code, os.strerror(code), os.fspath(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", mkdir)
    monkeypatch.setattr(os, "open", open_)


def test_read_only_work_folder(work, tmp_path, monkeypatch, capsys):
    data = make_data(tmp_path / "raw")
    refuse_under(monkeypatch, work, errno.EROFS)
    rc, _, err = folds(data, capsys)
    assert rc == 1 and len(err.strip().splitlines()) == 1
    assert err.startswith(str(work)) and ": read-only file system (outputs go under" in err
    assert "set CYTOKIT_WORK to a writable folder" in err
    monkeypatch.undo()
    monkeypatch.setenv("CYTOKIT_WORK", str(work))
    assert folds(data, capsys)[0] == 0


def test_disk_full_leaves_nothing_half_written(work, tmp_path, monkeypatch, capsys):
    data = make_data(tmp_path / "raw")
    real = pd.DataFrame.to_csv

    def cut_short(self, path_or_buf=None, *args, **kwargs):
        if path_or_buf is not None and str(path_or_buf).startswith(str(work)):
            Path(path_or_buf).write_text("NAME,wid")  # a part, then the disk is full
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(self, path_or_buf, *args, **kwargs)

    monkeypatch.setattr(pd.DataFrame, "to_csv", cut_short)
    rc, _, err = folds(data, capsys)
    assert rc == 1 and len(err.strip().splitlines()) == 1
    assert ": no space left on the device (nothing half-written is kept); free some space" in err
    assert leftovers(work) == [] and dataset.prepared(data) == []
    monkeypatch.setattr(pd.DataFrame, "to_csv", real)
    assert folds(data, capsys)[0] == 0  # nothing left behind blocks the next run


def test_font_copy_cut_short_is_replaced(tmp_path, monkeypatch):
    import shutil

    config_dir = tmp_path / "config"
    monkeypatch.setenv("YOLO_CONFIG_DIR", str(config_dir / "ultralytics"))
    monkeypatch.setenv("MPLCONFIGDIR", str(config_dir / "matplotlib"))
    env.apply(config_dir)
    font = config_dir / "ultralytics" / "Arial.ttf"
    if not font.exists():
        pytest.skip("no matplotlib font to copy")
    whole = font.read_bytes()
    font.write_bytes(whole[:1000])  # what a full disk left behind before copies were atomic
    env.apply(config_dir)
    assert font.read_bytes() == whole

    font.unlink()
    real = shutil.copyfile

    def disk_full(src, dst, *args, **kwargs):
        Path(dst).write_bytes(Path(src).read_bytes()[:1000])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(shutil, "copyfile", disk_full)
    with pytest.raises(OSError, match="No space left"):
        env.apply(config_dir)
    assert not font.exists() and leftovers(config_dir) == []
    monkeypatch.setattr(shutil, "copyfile", real)
    env.apply(config_dir)
    assert font.read_bytes() == whole


def test_submissions_follow_the_work_folder(work, monkeypatch):
    assert paths.submissions_dir() == work.resolve() / "submissions"
    monkeypatch.delenv("CYTOKIT_WORK")
    assert paths.submissions_dir() == paths.ROOT / "submissions"


def test_write_submission_to_a_read_only_folder(work, tmp_path, monkeypatch, capsys):
    from submit import write

    data = make_data(tmp_path / "raw")
    preds = predictions.make("te0.jpg", [[1, 1, 20, 20]], [0.9], [classes.CLASS_TO_ID["MO"]], 48, 40, "m", 0)
    preds_path = predictions.write(preds, tmp_path / "preds.parquet")
    argv = ["--preds", preds_path, "--test", data / "test.csv", "--images", data / "images"]
    rc, _, err = cli(write.main, argv, capsys)  # the default folder: under CYTOKIT_WORK
    assert rc == 0 and (work / "submissions" / "submission.csv").exists(), err
    locked = tmp_path / "locked"
    locked.mkdir()
    refuse_under(monkeypatch, locked, errno.EACCES)
    rc, _, err = cli(write.main, [*argv, "--out", locked], capsys)
    assert rc == 1 and len(err.strip().splitlines()) == 1
    assert err.startswith(f"{locked}/submission_") and err.strip().endswith(": permission denied")
    assert list(locked.iterdir()) == []


def test_bad_training_settings_leave_no_run_folder(work, tmp_path, capsys):
    from train import __main__ as train_main

    data = make_data(tmp_path / "raw")
    assert folds(data, capsys)[0] == 0
    for args, expected in ((["epochs=-3"], "epochs=-3: must be >= 1"),
                           (["imgsz=100"], "imgsz=100: must be a positive multiple of 32"),
                           (["batch=0"], "batch=0: must be >= 1 (or -1: ultralytics picks)")):
        rc, _, err = cli(train_main.main, ["--model", "yolov8", "--data", data, *args], capsys)
        assert rc == 1 and err.strip() == expected
    assert not (work / "runs").exists()
    for model in ("fasterrcnn_mobilenet", "cls", "unet"):
        with pytest.raises(registry.ConfigError, match=r"^epochs=-3: must be >= 1$"):
            registry.load_config(model, ["epochs=-3"])


@dataclasses.dataclass
class FakeConfig:
    """The settings of the fake model."""

    device: str = "cpu"  # where it runs
    conf: float = 0.001  # detection threshold


class Whole(Predictor):
    def predict(self, images_, conf=0.001):
        return [
            Detections(np.array([[1.0, 1.0, 30.0, 30.0]]), np.array([0.9]), np.array([0])) for _ in images_
        ]


class CrashOnce(Adapter):
    """Fails its first start before any checkpoint (out of memory, say), then trains."""

    name = "crashonce"
    config_cls = FakeConfig
    starts = 0

    def train(self, cfg, fold_data, run_dir, resume=False):
        CrashOnce.starts += 1
        (Path(run_dir) / "last.pt").symlink_to("ultralytics/weights/last.pt")  # as the YOLO adapter does
        if CrashOnce.starts == 1:
            raise MemoryError("CUDA out of memory")
        (Path(run_dir) / "best.pt").write_bytes(b"w")
        return Path(run_dir) / "best.pt"

    def load(self, weights, cfg, device="cpu"):
        return Whole()


def test_a_failed_start_does_not_block_the_next_run(work, tmp_path, monkeypatch, capsys, caplog):
    from train import __main__ as train_main

    monkeypatch.setitem(registry.MODELS, "crashonce", "tests:CrashOnce")
    real_get = registry.get
    monkeypatch.setattr(registry, "get", lambda name: CrashOnce if name == "crashonce" else real_get(name))
    data = make_data(tmp_path / "raw")
    assert folds(data, capsys)[0] == 0
    argv = ["--model", "crashonce", "--data", str(data)]
    with pytest.raises(MemoryError):
        io.cli(train_main.main, argv)
    run_dir = dataset.resolve(data).run_dir("crashonce", 0)
    assert (run_dir / "config.yaml").exists()
    with caplog.at_level(logging.WARNING):
        rc, _, err = cli(train_main.main, argv, capsys)
    assert rc == 0, err
    assert "an earlier start stopped before its first checkpoint; starting over" in caplog.text
    assert (run_dir / "done.json").exists()


def infer_setup(work: Path, tmp_path: Path, monkeypatch, capsys) -> tuple[Path, Path]:
    from infer import predict

    data = make_data(tmp_path / "raw")
    assert folds(data, capsys)[0] == 0
    monkeypatch.setattr(predict, "load_member", lambda *a, **k: Whole())
    weights = dataset.resolve(data).run_dir("m", 0) / "best.pt"
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"w")
    cfg = tmp_path / "ensemble.yaml"
    cfg.write_text(yaml.safe_dump({"members": [{"model": "m", "folds": [0]}], "tta": ["identity"],
                                   "fusion": "wbf", "viz_images": 0, "predict_oof": False}))
    return data, cfg


def test_missing_test_image_at_inference(work, tmp_path, monkeypatch, capsys):
    from submit import __main__ as submit_main

    data, cfg = infer_setup(work, tmp_path, monkeypatch, capsys)
    (data / "images" / "te1.jpg").unlink()
    rc, _, err = cli(submit_main.main, ["--config", cfg, "--data", data], capsys)
    assert rc == 1 and err.strip() == f"{data / 'images'}: 1 of 2 image(s) not found: te1.jpg"
    assert not (work / "submissions").exists()


def test_truncated_test_image_is_predicted_with_a_warning(work, tmp_path, monkeypatch, capsys, caplog):
    from submit import __main__ as submit_main

    data, cfg = infer_setup(work, tmp_path, monkeypatch, capsys)
    image = data / "images" / "te1.jpg"
    image.write_bytes(image.read_bytes()[:-300])
    with caplog.at_level(logging.WARNING):
        rc, _, err = cli(submit_main.main, ["--config", cfg, "--data", data], capsys)
    assert rc == 0, err
    assert f"{image}: image file is truncated; decoded as far as it goes" in caplog.text
    sub = pd.read_csv(work / "submissions" / "submission.csv")
    assert sub["NAME"].tolist() == ["te0.jpg", "te1.jpg"]


def test_unreadable_images_are_one_line_errors(tmp_path):
    with pytest.raises(images.ImageError) as exc:
        images.load_rgb(tmp_path / "gone.jpg")
    assert str(exc.value) == f"{tmp_path / 'gone.jpg'}: image not found"
    (tmp_path / "text.jpg").write_text("not an image")
    with pytest.raises(ValueError, match=r"text.jpg: cannot decode image \(cannot identify image file"):
        images.load_rgb(tmp_path / "text.jpg")
    with pytest.raises(images.ImageError, match="text.jpg: not a readable image"):
        images.read_size(tmp_path / "text.jpg")
