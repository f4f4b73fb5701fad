"""train.checkpoint: the one checkpoint format of the kit's epoch loops, best/last keeping, resume."""
from __future__ import annotations

import math

import pytest
import torch

from cytocore import classes
from train import checkpoint

pytestmark = pytest.mark.unit


def parts(seed: int = 0):
    """A tiny model with its optimizer, scheduler and scaler (what an epoch loop keeps)."""
    torch.manual_seed(seed)
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5 ** step)
    return model, optimizer, scheduler, torch.amp.GradScaler("cuda", enabled=False)


def step(model, optimizer, scheduler) -> None:
    optimizer.zero_grad()
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    scheduler.step()


def test_keep_writes_last_every_epoch_and_best_only_for_a_better_scored_epoch(tmp_path):
    model, optimizer, scheduler, scaler = parts()
    best = -math.inf
    metrics = [None, 0.30, float("nan"), 0.20, 0.35, None]  # None / nan: epochs that were not scored
    kept = []
    for epoch, metric in enumerate(metrics):
        step(model, optimizer, scheduler)
        best = checkpoint.keep(tmp_path, model, {"lr": 0.1}, epoch, metric, best, optimizer, scheduler,
                               scaler, arch="tiny")
        kept.append(torch.load(tmp_path / "best.pt", weights_only=True)["epoch"] if epoch else None)
        last = checkpoint.read(tmp_path / "last.pt", "test")
        assert (last["epoch"], last["best"]) == (epoch, best)
    assert best == 0.35
    assert kept == [None, 1, 1, 1, 4, 4]  # 0-based indices of the best scored epoch so far
    saved = checkpoint.read(tmp_path / "best.pt", "test")
    assert (saved["epoch"], saved["metric"], saved["format"], saved["arch"]) == (4, 0.35, 2, "tiny")
    assert saved["classes"] == list(classes.CLASSES) and saved["config"] == {"lr": 0.1}
    assert "optimizer" not in saved and {"optimizer", "scheduler", "scaler", "best"} <= set(last)
    assert math.isnan(last["metric"])  # the last epoch was not scored


def test_finish_keeps_the_last_weights_when_no_epoch_was_scored(tmp_path):
    model, optimizer, scheduler, scaler = parts()
    best = checkpoint.keep(tmp_path, model, {}, 0, None, -math.inf, optimizer, scheduler, scaler)
    assert best == -math.inf and not (tmp_path / "best.pt").exists()
    assert checkpoint.finish(tmp_path, model, {}, 0) == tmp_path / "best.pt"
    assert math.isnan(checkpoint.read(tmp_path / "best.pt", "test")["metric"])
    stamp = (tmp_path / "best.pt").stat().st_mtime_ns
    checkpoint.finish(tmp_path, model, {}, 0)  # an existing best.pt is left alone
    assert (tmp_path / "best.pt").stat().st_mtime_ns == stamp


def test_restore_continues_with_the_next_epoch_and_the_same_state(tmp_path):
    model, optimizer, scheduler, scaler = parts()
    for epoch in range(3):
        step(model, optimizer, scheduler)
        checkpoint.keep(tmp_path, model, {}, epoch, 0.1 * epoch, 0.1 * epoch, optimizer, scheduler, scaler)
    again = parts(seed=1)
    start, best = checkpoint.restore(tmp_path / "last.pt", "test", *again)
    assert (start, best) == (3, pytest.approx(0.2))
    assert torch.equal(again[0].weight, model.weight)
    assert again[2].state_dict() == scheduler.state_dict()
    assert again[1].param_groups[0]["lr"] == 0.1 * 0.5 ** 3


def test_restore_reads_the_format_1_checkpoints_of_old_runs(tmp_path):
    model, optimizer, scheduler, scaler = parts()
    state = {"model": model.state_dict(), "config": {}, "classes": list(classes.CLASSES), "best": 0.4,
             "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
             "scaler": scaler.state_dict()}
    torch.save({**state, "epoch": 3, "arch": "fasterrcnn"}, tmp_path / "tv.pt")  # torchvision: 3 epochs done
    torch.save({**state, "epoch": 3}, tmp_path / "unet.pt")  # UNet / classifier: index 3 = 4 epochs done
    assert checkpoint.restore(tmp_path / "tv.pt", "torchvision", *parts()) == (3, 0.4)
    assert checkpoint.restore(tmp_path / "unet.pt", "UNet", *parts()) == (4, 0.4)


def test_what_cannot_be_resumed_says_why_in_one_line(tmp_path):
    model, optimizer, scheduler, scaler = parts()
    checkpoint.save(tmp_path / "best.pt", model, {}, 2, metric=0.3)
    with pytest.raises(ValueError) as err:
        checkpoint.restore(tmp_path / "best.pt", "UNet", model, optimizer, scheduler, scaler)
    why = "best.pt: cannot resume from it (no optimizer, scheduler, scaler, best: not a last.pt)"
    assert why in str(err.value)
    assert "\n" not in str(err.value)
    checkpoint.keep(tmp_path, model, {}, 0, 0.1, -math.inf, optimizer, scheduler, scaler)
    bigger = torch.nn.Linear(3, 4)
    other = torch.optim.SGD(bigger.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="last.pt: does not fit the model or optimizer of this") as err:
        checkpoint.restore(tmp_path / "last.pt", "UNet", bigger, other, scheduler, scaler)
    assert "\n" not in str(err.value)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pt: not UNet weights: it starts with"):
        checkpoint.read(tmp_path / "junk.pt", "UNet")
