"""Resume that holds: process groups of training jobs, late kills of YOLO runs, recorded settings on resume,
the classifier's RNG streams, ``amp: false`` in validation, the rescoring cadence."""
from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest

from train import parallel

pytestmark = pytest.mark.unit  # the tests that start processes are marked smoke as well

FAKE_JOB = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
open(sys.argv[1], "w").write(str(child.pid))
time.sleep(600)
"""


def _dead(pid: int) -> bool:
    """True when ``pid`` is gone or a zombie (a reparented grandchild waits for init to reap it)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (FileNotFoundError, IndexError):
        return True


def _wait(predicate, timeout: float = 20.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.05)
    return False


@pytest.mark.smoke
def test_stopping_the_runner_ends_each_job_and_its_grandchildren(tmp_path, monkeypatch):
    """Ctrl-C in the runner: every running job's process group gets the signal, the grandchild (an
    ultralytics DDP worker in real life) included; the job did not share the runner's process group."""
    script = tmp_path / "fake_job.py"
    script.write_text(FAKE_JOB)
    pid_file = tmp_path / "grandchild.pid"
    monkeypatch.setattr(parallel, "STOP_GRACE_S", 5.0, raising=False)
    seen: dict[str, int] = {}

    def echo(line: str) -> None:
        if "jobs done" in line and pid_file.exists() and pid_file.read_text():
            seen["grandchild"] = int(pid_file.read_text())
            raise KeyboardInterrupt  # the user's Ctrl-C, delivered to the runner only

    job = parallel.Job("fake fold 0", [sys.executable, str(script), str(pid_file)], tmp_path / "fake.log")
    with pytest.raises(KeyboardInterrupt):
        parallel.run_jobs([job], 1, echo=echo, heartbeat=0.0)
    grandchild = seen["grandchild"]
    assert _wait(lambda: _dead(grandchild)), "the job's grandchild outlived the stopped job"


@pytest.mark.smoke
def test_a_job_that_ends_leaves_nothing_running(tmp_path):
    script = tmp_path / "fake_job.py"
    script.write_text(FAKE_JOB.replace("time.sleep(600)\n", "", 1).rstrip() + "\n")  # exits at once
    pid_file = tmp_path / "grandchild.pid"
    job = parallel.Job("fake fold 2", [sys.executable, str(script), str(pid_file)], tmp_path / "fake.log")
    (outcome,) = parallel.run_jobs([job], 1, echo=lambda line: None)
    assert outcome.status == "ok"
    grandchild = int(pid_file.read_text())
    assert _wait(lambda: _dead(grandchild)), "a grandchild outlived its finished job"


@pytest.mark.smoke
def test_a_job_runs_in_its_own_process_group_and_stop_signals_the_group(tmp_path):
    script = tmp_path / "fake_job.py"
    script.write_text(FAKE_JOB)
    pid_file = tmp_path / "grandchild.pid"
    job = parallel.Job("fake fold 1", [sys.executable, str(script), str(pid_file)], tmp_path / "fake.log")
    running = parallel._Running(job, 0, dict(os.environ))
    assert _wait(lambda: pid_file.exists() and pid_file.read_text() != "")
    grandchild = int(pid_file.read_text())
    assert os.getpgid(running.proc.pid) == running.proc.pid != os.getpgid(0)
    assert os.getpgid(grandchild) == running.proc.pid
    running.stop(grace=5.0)
    assert running.proc.returncode == -signal.SIGTERM
    assert _wait(lambda: _dead(grandchild))


# -- amp: false in validation --------------------------------------------------------------------------

class _Recorder:
    """Stands in for ``torch.autocast``: records ``enabled`` of each use (on a CPU-only machine)."""

    def __init__(self):
        self.enabled: list[bool] = []

    def __call__(self, device_type, dtype=None, enabled=True, cache_enabled=None):
        import contextlib

        self.enabled.append(bool(enabled))
        return contextlib.nullcontext()


@pytest.mark.parametrize("amp", [True, False])
def test_the_kit_s_yolo_validation_runs_fp32_when_amp_is_off(monkeypatch, amp):
    """The per-epoch rescoring (``EpochEnd`` -> ``UltraPredictor``) on a CUDA device autocasts only with
    ``amp: true`` (ultralytics' own validation follows ``trainer.amp`` already)."""
    import torch

    from cytocore.config import from_dict
    from train.yolo.adapter import UltraConfig
    from train.yolo.predict import UltraPredictor

    recorder = _Recorder()
    monkeypatch.setattr(torch, "autocast", recorder)
    predictor = UltraPredictor(None, from_dict(UltraConfig, {"amp": amp}), "cpu")
    predictor.device, predictor.model = torch.device("cuda"), (lambda t: t)  # a GPU simulated
    predictor.forward(torch.zeros(1, 27, 4))
    assert recorder.enabled == ([True] if amp else [])


@pytest.mark.parametrize("amp", [True, False])
def test_classifier_validation_and_prediction_honour_amp(monkeypatch, amp):
    import numpy as np
    import torch

    from cytocore import classes
    from train.cls import adapter as cls_adapter
    from train.cls import model as cls_model
    from train.cls.predictor import ClassifierPredictor

    recorder = _Recorder()
    monkeypatch.setattr(torch, "autocast", recorder)
    cls_model.autocast("cuda:0", amp)
    assert recorder.enabled == [amp]
    cls_model.autocast("cpu", True)
    assert recorder.enabled[-1] is False  # never on a CPU

    seen: list[tuple[str, bool]] = []
    real = cls_model.autocast
    monkeypatch.setattr(cls_model, "autocast",
                        lambda device, on: (seen.append((device, on)), real(device, on))[1])
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, classes.NUM_CLASSES))
    loader = [(torch.zeros(2, 3, 8, 8), torch.zeros(2, 2), torch.tensor([0, 1]))]
    cls_adapter.evaluate(net, loader, "cpu", amp)
    cfg = type("Cfg", (), {"amp": amp, "batch": 4, "tta": False, "imgsz": 8})()
    ClassifierPredictor(net, cfg, "cpu").classify(np.zeros((2, 8, 8, 3), np.uint8))
    assert seen == [("cpu", amp), ("cpu", amp)]


# -- changed settings on an interrupted run ------------------------------------------------------------

class _Stop(Exception):
    pass


def test_a_resumed_run_goes_on_with_its_recorded_settings_and_says_so(tmp_path, caplog):
    """``python -m train --resume epochs=20`` on a run started with epochs=14: it resumes with 14 (what
    its checkpoint continues), one line names the difference, config.yaml still says 14; runtime keys
    (device, workers) come from the new call."""
    import logging
    from types import SimpleNamespace

    from cytocore import config as kit_config
    from train import job, registry

    run = tmp_path / "runs" / "yolov8" / "fold0"
    run.mkdir(parents=True)
    started = registry.load_config("yolov8", ["epochs=14", "imgsz=320", "device=cpu"])
    kit_config.save(started, run / "config.yaml")
    (run / "last.pt").write_bytes(b"ckpt")
    fold_data = SimpleNamespace(fold=0, run_dir=lambda m: run, preds_dir=lambda m: tmp_path / "preds" / m)
    used = []

    class Adapter:
        def train(self, cfg, fold_data, run_dir, resume=False):
            used.append((cfg, resume, (run_dir / "config.yaml").read_text()))
            raise _Stop

    cfg = registry.load_config("yolov8", ["epochs=20", "imgsz=320", "device=0", "workers=2"])
    caplog.set_level(logging.WARNING, logger="train")
    with pytest.raises(_Stop):
        job.run_fold("yolov8", Adapter(), cfg, fold_data, resume=True, force=False)
    (given, resume, saved), = used
    assert resume and (given.epochs, given.imgsz, given.device, given.workers) == (14, 320, "0", 2)
    assert "epochs: 14" in saved and "epochs: 20" not in saved
    lines = [r.getMessage() for r in caplog.records if "settings it started with" in r.getMessage()]
    assert lines == ["yolov8 fold 0: resumes with the settings it started with, not this call's "
                     "(epochs 14 -> 20); --force trains it again with them"]


def test_make_all_retrains_an_interrupted_run_whose_settings_changed(tmp_path):
    from types import SimpleNamespace

    from cytocore import config as kit_config
    from pipeline import recipe as rc
    from pipeline import run as orch
    from train import registry

    ds = SimpleNamespace(id="d_k2_s1", k=2, seed=1, data=tmp_path / "data",
                         run_dir=lambda m, f: tmp_path / "runs" / m / f"fold{f}",
                         preds_dir=lambda m, f: tmp_path / "preds" / m / f"fold{f}")
    run = ds.run_dir("yolov8", 0)
    run.mkdir(parents=True)
    (run / "last.pt").write_bytes(b"ckpt")  # interrupted: no done.json
    kit_config.save(registry.load_config("yolov8", ["epochs=14", "workers=8"]), run / "config.yaml")
    lines: list[str] = []
    recipe = rc.RecipeConfig(k=2, detectors=[{"model": "yolov8", "folds": [0], "overrides": ["epochs=20"]}])
    (only,), skipped = orch.plan(recipe, ds, lines.append)
    assert "--force" in only.argv and "--resume" not in only.argv and skipped == []
    assert lines == ["  retrain yolov8 fold 0: its settings differ from the recipe's (epochs 14 -> 20); "
                     "it was interrupted, and resuming would keep its old settings"]
    same = rc.RecipeConfig(k=2, detectors=[{"model": "yolov8", "folds": [0], "overrides": ["epochs=14"]}])
    (only,), _ = orch.plan(same, ds, lines.append)  # workers differ: a runtime key, the run resumes
    assert "--resume" in only.argv and "--force" not in only.argv and len(lines) == 1


# -- a YOLO job killed after its last epoch --------------------------------------------------------------

def test_training_over_reads_the_state_ultralytics_refuses_to_resume():
    from train.yolo.adapter import training_over

    args = {"epochs": 10, "patience": 3}
    assert training_over({"epoch": -1, "train_args": args})  # stripped: the final validation had begun
    assert training_over({"epoch": 9, "train_args": args})  # the last epoch saved, its scoring cut short
    assert not training_over({"epoch": 8, "train_args": args, "stopper": {"best_epoch": 8}})
    assert training_over({"epoch": 4, "train_args": args, "stopper": {"best_epoch": 2}})  # early stop at 5
    no_patience = {**args, "patience": 0}
    assert not training_over({"epoch": 4, "train_args": no_patience, "stopper": {"best_epoch": 2}})


TINY_YOLO = ["epochs=2", "imgsz=64", "batch=2", "workers=0", "conf=0.0", "predict_batch=4", "plots=false",
             "warmup_epochs=0", "mosaic=0.0", "val_every=1"]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    """8 synthetic images, folds k=2 seed 0, in a work folder of this module's own."""
    from prepare import folds
    from prepare.synth import make as synth

    root = tmp_path_factory.mktemp("resume")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CYTOKIT_WORK", str(root / "work"))
        data = root / "tiny"
        assert synth.main(["--out", str(data), "--images", "8", "--seed", "3"]) == 0
        assert folds.main(["--data", str(data), "--k", "2", "--seed", "0"]) == 0
        yield data


def _train(data: Path, *extra: str) -> int:
    from train.__main__ import main

    return main(["--model", "yolov8", "--fold", "0", "--data", str(data), "--k", "2", "--seed", "0", *extra])


def _kill_in_final_validation(monkeypatch):
    """Ultralytics' final evaluation stops in its validator, after it stripped last.pt (epoch -1)."""
    from train.yolo.trainer import KitTrainer

    original = KitTrainer.final_eval

    def killed(self):
        class Validator:
            args = self.validator.args

            def __call__(self, **kwargs):
                raise KeyboardInterrupt("killed during the final validation")

        self.validator = Validator()
        original(self)

    monkeypatch.setattr(KitTrainer, "final_eval", killed, raising=False)


def _kill_in_last_scoring(monkeypatch):
    """The kit's challenge scoring of the last epoch stops (last.pt holds that epoch, metrics.csv not)."""
    from train.yolo.trainer import EpochEnd

    original = EpochEnd.record

    def killed(self, row, final, *args):
        if final:
            raise KeyboardInterrupt("killed while scoring the last epoch")
        original(self, row, final, *args)

    monkeypatch.setattr(EpochEnd, "record", killed)


@pytest.mark.smoke
@pytest.mark.parametrize("kill, select", [(_kill_in_final_validation, "fitness"),  # only fitness runs it
                                          (_kill_in_last_scoring, "challenge")])
def test_a_yolo_run_killed_after_its_last_epoch_finishes_on_resume(tiny_data, monkeypatch, kill, select):
    import json

    import pandas as pd

    from cytocore import dataset, predictions

    run = dataset.resolve(tiny_data).run_dir("yolov8", 0)
    with monkeypatch.context() as mp:
        kill(mp)
        with pytest.raises(KeyboardInterrupt):
            _train(tiny_data, "--force", *TINY_YOLO, f"select={select}")
    assert (run / "last.pt").exists() and not (run / "done.json").exists()
    # no --force (ultralytics: "nothing to resume")
    assert _train(tiny_data, "--resume", *TINY_YOLO, f"select={select}") == 0
    done = json.loads((run / "done.json").read_text())
    metrics = pd.read_csv(run / "metrics.csv")
    assert metrics["epoch"].tolist() == [1, 2]
    column = "challenge" if select == "challenge" else "ul_fitness"
    assert metrics[column].between(0, 1).all()
    oof = predictions.read(dataset.resolve(tiny_data).preds_dir("yolov8", 0) / predictions.OOF_FILE)
    assert done["n_predictions"] == len(oof) > 0 and 0 <= done["challenge"] <= 1


# -- the classifier's random streams ----------------------------------------------------------------------

def _cell_table(root: Path, n: int = 10):
    """``n`` 40 x 48 px images, one coloured square each (PNN red, EO blue), as a crop table."""
    import numpy as np
    import pandas as pd
    from PIL import Image

    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    rows = []
    for i in range(n):
        im = np.full((40, 48, 3), 235, np.uint8)
        code = ("PNN", "EO")[i % 2]
        x, y = int(rng.integers(0, 30)), int(rng.integers(0, 22))
        im[y:y + 16, x:x + 16] = (200, 40, 40) if code == "PNN" else (40, 40, 200)
        Image.fromarray(im).save(root / "images" / f"im{i:02d}.png")
        rows.append({"NAME": f"im{i:02d}.png", "x1": x, "y1": y, "x2": x + 16, "y2": y + 16, "class": code})
    return pd.DataFrame(rows), root / "images"


def _cls_cfg(**kw):
    from cytocore import config
    from train.cls.adapter import ClassifierConfig

    base = {"backbone": "resnet10t", "imgsz": 32, "epochs": 2, "batch": 4, "workers": 0, "device": "cpu",
            "augment": "default", "jitter": 0.1, "mixup": 0.4, "cutmix": 1.0, "mix_prob": 0.5,
            "pretrained": "none", "seed": 5}
    return config.from_dict(ClassifierConfig, {**base, **kw})


@pytest.mark.smoke  # trains three tiny classifiers, as tests/test_cls_train.py does
def test_a_resumed_classifier_draws_what_the_straight_run_draws(tmp_path, monkeypatch):
    """2 epochs straight vs 1 epoch, killed, then resumed: the same weights, bit for bit (sampling,
    dropout, jitter, augmentation and mixing of epoch 2 do not replay epoch 1's draws)."""
    import torch

    from train import checkpoint, runs
    from train.cls import adapter as cls_adapter

    monkeypatch.setattr(runs, "plot_curves", lambda table, path: path)  # not what this test is about
    table, images = _cell_table(tmp_path / "data")
    train, val = table.iloc[:8], table.iloc[8:]
    straight = cls_adapter.fit(_cls_cfg(), train, val, images, tmp_path / "straight")
    again = cls_adapter.fit(_cls_cfg(), train, val, images, tmp_path / "again")

    original = checkpoint.save

    def killed_after_epoch_1(path, model, config, epoch, **state):
        original(path, model, config, epoch, **state)
        if Path(path).name == checkpoint.LAST and epoch == 0:
            raise KeyboardInterrupt("killed after epoch 1")

    monkeypatch.setattr(checkpoint, "save", killed_after_epoch_1)
    with pytest.raises(KeyboardInterrupt):
        cls_adapter.fit(_cls_cfg(), train, val, images, tmp_path / "resumed")
    monkeypatch.setattr(checkpoint, "save", original)
    resumed = cls_adapter.fit(_cls_cfg(), train, val, images, tmp_path / "resumed", resume=True)

    def weights(run: Path) -> dict:
        return torch.load(run / checkpoint.LAST, weights_only=True)["model"]

    for name, value in weights(straight.parent).items():
        assert torch.equal(value, weights(again.parent)[name]), name  # the same seed: the same run
        assert torch.equal(value, weights(resumed.parent)[name]), name


def test_crop_jitter_is_seeded_per_epoch_and_worker(tmp_path):
    import numpy as np
    import torch

    from train.cls import data as cls_data

    table, images = _cell_table(tmp_path / "data", 4)

    def crops(epoch: int, seed: int = 0) -> list:
        ds = cls_data.CropDataset(table, images, 32, 4, "default", 0.2, seed=seed)
        ds.set_epoch(epoch)
        return [ds[i] for i in (0, 1, 0)]  # row 0 drawn twice (a balanced sampler's rare class)

    first, same, later, other = crops(0), crops(0), crops(1), crops(0, seed=1)
    for a, b in zip(first, same):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])  # the same seed and epoch: the same crops
    assert not torch.equal(first[0][1], first[2][1])  # a row drawn twice gets two jitters
    assert not np.allclose(first[0][1], later[0][1]) and not np.allclose(first[0][1], other[0][1])


# -- rescoring cadence -------------------------------------------------------------------------------------

def test_rescoring_every_n_epochs_by_default_and_always_the_last_one(tmp_path, monkeypatch):
    """configs/yolo.yaml's ``val_every`` (5): epochs 5, 10... and the last are scored with the challenge
    metric; so is the epoch early stopping ends on (``trainer.stop``), which is the last one too."""
    from types import SimpleNamespace

    import pandas as pd

    from cytocore.config import from_dict
    from train.yolo import trainer as ultra_trainer
    from train.yolo.adapter import UltraConfig

    cfg = from_dict(UltraConfig, {})
    assert cfg.val_every == 5
    scored = []
    monkeypatch.setattr(ultra_trainer, "UltraPredictor", lambda *a, **k: None)
    monkeypatch.setattr(ultra_trainer.oof, "predict_fold", lambda *a, **k: None)
    monkeypatch.setattr(ultra_trainer.oof, "evaluate", lambda *a: (scored.append(1), {"challenge": 0.5})[1])
    last = tmp_path / "last.pt"
    last.write_text("weights")
    trainer = SimpleNamespace(epochs=12, tloss=None, metrics={}, fitness=0.1, ema=SimpleNamespace(ema=None),
                              device="cpu", last=last, stop=False, label_loss_items=lambda loss, prefix: {},
                              args=SimpleNamespace(val=True))
    callback = ultra_trainer.EpochEnd(None, tmp_path, cfg, "yolov8")
    for epoch in range(7):
        trainer.epoch, trainer.stop = epoch, epoch == 6  # early stopping ends the run at epoch 7
        ultra_trainer.UltraVal(cfg.val_every, cfg.select)(trainer)
        callback(trainer)
    table = pd.read_csv(tmp_path / "metrics.csv")
    assert table.dropna(subset=["challenge"])["epoch"].tolist() == [5, 7] and len(scored) == 2
