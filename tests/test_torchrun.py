"""Two real torchrun processes on the CPU (gloo): agreement, samplers, barriers, rank-0-only prediction and
writes, and the refusal of torchrun for the models that do not train one process per GPU."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from cytocore import paths

pytestmark = pytest.mark.smoke

WORKER = r'''
import json, os, sys
from pathlib import Path
from types import SimpleNamespace

from cytocore import env
env.apply()
from cytocore import paths, predictions
from train import dist, job, oof, runs

out = Path(sys.argv[1])
rank = int(os.environ["RANK"])
assert dist.init(dist.resolve_device(""))
res = {"rank": dist.rank(), "world": dist.world_size(), "device": dist.resolve_device("")}
res["agreed"] = job._agree(f"from-{rank}")
res["shard"] = list(dist.make_sampler(list(range(10)), shuffle=True, seed=1))
res["weighted"] = list(dist.make_sampler(list(range(10)), shuffle=True, weights=[1.0] * 10, seed=1))
calls = []


class Adapter:
    def load(self, weights, cfg, device):
        calls.append("load")
        return object()

    def oof_predictions(self, predictor, cfg, fold_data):
        return None


oof.predict_fold = lambda *a, **k: calls.append("predict") or predictions.empty()
oof.write_oof = lambda preds, fold_data, model: calls.append("write") or Path("oof.parquet")
oof.evaluate = lambda preds, fd: dict.fromkeys(("challenge", "giou_term", "f1_term", "map50"), 0.5)
runs.mark_done = lambda run_dir, record: calls.append("done")
fold = SimpleNamespace(fold=0, dataset=None, root=out, run_dir=lambda m: paths.run_dir("ds", m, 0),
                       preds_dir=lambda m: paths.preds_dir("ds", m, 0))
cfg = SimpleNamespace(device="", conf=0.001)
record = job.run_fold("fake", Adapter(), cfg, fold, resume=False, force=False)
res["calls"], res["record"] = calls, record is not None
dist.barrier()
(out / f"rank{rank}.json").write_text(json.dumps(res))
dist.cleanup()
'''


def _torchrun(args: list[str], env: dict) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]
    return subprocess.run(cmd, cwd=paths.ROOT, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture
def env(tmp_path):
    return {**os.environ, "CYTOKIT_WORK": str(tmp_path / "work"), "PYTHONPATH": str(paths.ROOT),
            "OMP_NUM_THREADS": "1"}


def test_two_gloo_processes_agree_shard_and_only_rank0_predicts(tmp_path, env):
    run_dir = tmp_path / "work" / "runs" / "ds" / "fake" / "fold0"
    run_dir.mkdir(parents=True)
    (run_dir / "trained.json").write_text("{}")  # trained earlier, out-of-fold predictions still to make
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    done = _torchrun([str(script), str(tmp_path)], env)
    assert done.returncode == 0, done.stderr[:3000]
    r0, r1 = (json.loads((tmp_path / f"rank{i}.json").read_text()) for i in (0, 1))
    assert (r0["rank"], r1["rank"], r0["world"]) == (0, 1, 2)
    assert r0["device"] == r1["device"] == "cpu"
    assert r0["agreed"] == r1["agreed"] == "from-0"
    assert sorted(r0["shard"] + r1["shard"]) == list(range(10)) and not set(r0["shard"]) & set(r1["shard"])
    assert len(r0["weighted"]) == len(r1["weighted"]) == 5
    assert r0["calls"] == ["load", "predict", "write", "done"] and r0["record"]
    assert r1["calls"] == [] and not r1["record"]


@pytest.mark.parametrize("model, hint", [("yolov8", "device=0,1 without torchrun"),
                                         ("cls", "one GPU per fold")])
def test_torchrun_is_refused_for_models_that_are_not_one_process_per_gpu(env, model, hint):
    done = _torchrun(["-m", "train", "--model", model, "--fold", "0", "--data", "nowhere"], env)
    assert done.returncode != 0
    text = done.stdout + done.stderr
    assert f"{model}: torchrun (WORLD_SIZE=2) is only for the torchvision models; use {hint}" in text
    assert "Traceback" not in done.stdout
