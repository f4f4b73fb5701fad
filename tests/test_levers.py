"""pipeline.levers (make levers): arms x training seeds as separate make all runs, their rows, the paired
differences over seeds, what round two won back, the kept results, and the noisy copy of the data."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from cytocore.config import ConfigError
from pipeline import levers

pytestmark = pytest.mark.unit

TEST = {0: 0.90, 1: 0.88, 2: 0.93}  # the clean labels' test score per training seed
NOISY = {0: 0.84, 1: 0.85, 2: 0.86}
CLEANED = {0: 0.88, 1: 0.86, 2: 0.90}


def data_folder(tmp_path: Path) -> Path:
    raw = tmp_path / "raw"
    (raw / "images").mkdir(parents=True)
    rows = "".join(f"{i}.jpg,0,0,{50 + i},60,{'PNN' if i % 2 else 'LY'}\n" for i in range(40))
    (raw / "train.csv").write_text("NAME,x1,y1,x2,y2,class\n" + rows)
    (raw / "test.csv").write_text("trustii_id,NAME\n1,t.jpg\n")
    return raw


def study_file(tmp_path: Path, data: Path, **extra) -> Path:
    path = tmp_path / "cleaning.yaml"
    arms = [{"name": "clean labels"},
            {"name": "noisy", "noise": {"p_class": 0.1, "seed": 2},
             "overrides": ["clean={policy: [relabel], conf: 0.4}"], "round_two": "noisy, cleaned"}]
    path.write_text(json.dumps({"recipe": "configs/demo.yaml", "data": str(data), "seeds": [0, 1, 2],
                                "arms": arms, **extra}))
    return path


class FakeRuns:
    """subprocess.run of ``python -m pipeline``: writes the report a run would, scored by seed and arm."""

    def __init__(self) -> None:
        self.calls: list[dict] = []

    def __call__(self, cmd, env, log, echo):
        seed = int(cmd[cmd.index("--member") + 1].removeprefix("seed="))
        data = Path(cmd[cmd.index("--data") + 1])
        work = Path(env["CYTOKIT_WORK"])
        self.calls.append({"seed": seed, "data": data, "work": work, "cmd": cmd})
        noisy = "noise" in data.name
        report = {"data": str(data), "score": (NOISY if noisy else TEST)[seed], "giou_term": 0.9,
                  "f1_term": 0.8, "oof_check": {"ensemble": 0.5 + seed / 100}}
        if any(c.startswith("clean=") for c in cmd):
            report["clean"] = {"data": str(work / f"clean-{seed}"),
                               "round_two": {"score": CLEANED[seed], "oof_check": {"ensemble": 0.6}}}
        if any(c.startswith("pseudo=") for c in cmd):
            report["pseudo"] = {"round_two": {"score": 0.95, "oof_check": {"ensemble": 0.7}}}
        logs = work / "logs" / f"run{len(self.calls)}"
        logs.mkdir(parents=True)
        (logs / "report.json").write_text(json.dumps(report))
        return 0


@pytest.fixture
def fake(monkeypatch, tmp_path):
    monkeypatch.setenv("CYTOKIT_WORK", str(tmp_path / "work"))
    runs = FakeRuns()
    monkeypatch.setattr(levers, "launch", runs)
    return runs


def sha(folder: Path) -> dict[str, str]:
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    return {str(p): hashlib.sha1(p.read_bytes()).hexdigest() for p in files}


def test_a_study_runs_each_arm_and_seed_once_and_says_what_round_two_won_back(tmp_path, fake, capsys):
    raw = data_folder(tmp_path)
    before = sha(raw)
    path = study_file(tmp_path, raw)
    assert levers.main(["--study", str(path)]) == 0
    assert len(fake.calls) == 6  # 2 arms x 3 seeds
    assert sha(raw) == before  # the noisy arm trains on a copy
    noisy = {c["data"] for c in fake.calls if "noise" in c["data"].name}
    assert len(noisy) == 1 and (next(iter(noisy)) / "noise.csv").exists()
    assert all(f"seed={c['seed']}" in c["cmd"] for c in fake.calls)
    assert len({c["work"] for c in fake.calls}) == 6  # one work folder per data x seed
    out = capsys.readouterr().out.rsplit("test labels:", 1)[1]  # the last table: every run in
    gap = np.mean([TEST[s] - NOISY[s] for s in TEST])
    gain = np.mean([CLEANED[s] - NOISY[s] for s in TEST])
    assert f"won back {gain:+.4f} of the {gap:.4f}" in out and f"= {100 * gain / gap:.0f} %" in out
    g = np.array([CLEANED[s] - NOISY[s] for s in TEST])
    half = stats.t.ppf(0.975, 2) * g.std(ddof=1) / np.sqrt(3)
    assert (f"round two minus round one [{g.mean() - half:+.4f}, {g.mean() + half:+.4f}], "
            "up on 3 of 3 seeds") in out
    d = np.array([CLEANED[s] - TEST[s] for s in TEST])
    half = stats.t.ppf(0.975, 2) * d.std(ddof=1) / np.sqrt(3)
    line = next(x for x in out.splitlines() if x.startswith("noisy, cleaned"))
    assert f"{d.mean():+.4f} [{d.mean() - half:+.4f}, {d.mean() + half:+.4f}], up on 0 of 3 seeds" in line
    assert f"{np.mean(list(CLEANED.values())):9.4f}" in line
    stored = json.loads((levers.root_of(path) / levers.RESULTS).read_text())
    assert stored["noisy|seed1"]["rows"]["noisy, cleaned"]["test"] == CLEANED[1]

    assert levers.main(["--study", str(path)]) == 0  # everything kept
    assert len(fake.calls) == 6
    arms = json.loads(path.read_text())
    arms["arms"][1]["overrides"] = ["clean={policy: [relabel], conf: 0.5}"]
    path.write_text(json.dumps(arms))
    assert levers.main(["--study", str(path), "--seeds", "1"]) == 0  # only the changed arm, only seed 1
    assert [(c["seed"], "noise" in c["data"].name) for c in fake.calls[6:]] == [(1, True)]


def test_arms_on_the_same_data_and_seed_share_a_work_folder(tmp_path, fake):
    raw = data_folder(tmp_path)
    path = tmp_path / "pseudo.yaml"
    arms = [{"name": "off"}, {"name": "on", "overrides": ["pseudo={conf: 0.9}"]}]
    path.write_text(json.dumps({"recipe": "configs/demo.yaml", "data": str(raw), "seeds": [0], "arms": arms}))
    levers.main(["--study", str(path)])
    assert fake.calls[0]["work"] == fake.calls[1]["work"]  # round one is trained once
    other = tmp_path / "another.yaml"
    other.write_text(path.read_text())
    levers.main(["--study", str(other)])
    assert fake.calls[2]["work"] == fake.calls[0]["work"]  # so is another study's on the same data and seed
    assert levers.root_of(other) != levers.root_of(path)  # each study keeps its own results


def test_out_of_fold_rows_are_compared_only_on_the_same_train_labels(tmp_path, fake, capsys):
    raw = data_folder(tmp_path)
    path = study_file(tmp_path, raw)
    study = json.loads(path.read_text())
    study["arms"].append({"name": "pseudo", "overrides": ["pseudo={conf: 0.9}"]})
    path.write_text(json.dumps(study))
    levers.main(["--study", str(path), "--seeds", "0", "1"])
    oof = capsys.readouterr().out.rsplit("out-of-fold", 1)[1].split("results:")[0]
    lines = {line[:34].strip(): line for line in oof.splitlines()[2:] if line.strip()}
    assert "not compared" in lines["noisy"] and "not compared" in lines["noisy, cleaned"]
    assert "up on 2 of 2 seeds" in lines["pseudo, round two"]  # pseudo-labels: round one's images and labels
    assert "+0.1950" in lines["pseudo, round two"]  # 0.7 - mean(0.50, 0.51)
    store = levers.root_of(path) / levers.RESULTS
    stored = json.loads(store.read_text())
    for result in stored.values():  # rows as an older kit stored them: no labels
        for row in result["rows"].values():
            row.pop("labels")
    store.write_text(json.dumps(stored))
    assert levers.main(["--study", str(path), "--seeds", "0", "1", "--table"]) == 0
    assert levers.row_labels(levers.refresh(stored, levers.load(path)))["noisy"].startswith("raw-noise")


def test_a_failed_run_names_its_log_and_keeps_the_finished_ones(tmp_path, fake, monkeypatch):
    path = study_file(tmp_path, data_folder(tmp_path))

    def second_fails(*args):
        return 1 if len(fake.calls) == 1 else fake(*args)

    monkeypatch.setattr(levers, "launch", second_fails)
    with pytest.raises(RuntimeError, match=r"noisy, seed 0: make all exited 1; see .*noisy-seed0\.log"):
        levers.main(["--study", str(path)])
    stored = json.loads((levers.root_of(path) / levers.RESULTS).read_text())
    assert list(stored) == ["clean labels|seed0"]


def test_paired_differences_and_the_t_interval_over_seeds():
    a, b = {0: 0.5, 1: 0.7, 2: 0.6, 3: 0.9}, {0: 0.4, 1: 0.5, 2: 0.6}
    d = levers.paired(a, b)
    assert d["seeds"] == [0, 1, 2] and d["up"] == 2
    assert np.allclose(d["diff"], [0.1, 0.2, 0.0]) and d["mean"] == pytest.approx(0.1)
    half = stats.t.ppf(0.975, 2) * 0.1 / np.sqrt(3)
    assert (d["lo"], d["hi"]) == pytest.approx((0.1 - half, 0.1 + half))
    one = levers.paired({0: 0.5}, {0: 0.4})
    assert one["lo"] is None and one["mean"] == pytest.approx(0.1)
    assert levers.paired({1: 0.5}, {0: 0.4}) is None


def test_a_study_without_arms_or_with_twin_names_is_refused(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(json.dumps({"recipe": "configs/demo.yaml", "data": "data/demo", "arms": []}))
    with pytest.raises(ConfigError, match="s.yaml: arms: give at least one arm"):
        levers.load(path)
    path.write_text(json.dumps({"recipe": "configs/demo.yaml", "data": "data/demo",
                                "arms": [{"name": "a"}, {"name": "a"}]}))
    with pytest.raises(ConfigError, match="two arms are named alike"):
        levers.load(path)
    path.write_text(json.dumps({"recipe": "configs/demo.yaml", "data": "data/demo",
                                "arms": [{"name": "a", "overide": []}]}))
    with pytest.raises(ConfigError, match="overide"):
        levers.load(path)


def test_the_shipped_studies_load():
    for path in sorted((levers.paths.CONFIGS / "levers").glob("*.yaml")):
        study = levers.load(path)
        assert study.arms and study.seeds and (levers.paths.ROOT / study.recipe).exists()


def test_progress_echoes_steps_scores_and_a_heartbeat_a_minute():
    shown = levers.Progress(every_s=60)
    lines = [("== train ==", 0), ("07:06 INFO cytocore.images: reading", 1), ("  [0/4 jobs done, 1 min]", 2),
             ("  [0/4 jobs done, 1 min]", 30), ("    yolov8 fold 0: epoch 5/14", 31),
             ("  [1/4 jobs done, 2 min]", 63), ("== train: 371.0 s (CPU 700 s)", 64),
             ("test score: 0.9262 (GIoU term 0.9279, F1 term 0.9258) in 8.9 min", 65)]
    assert [shown(text, t) for text, t in lines] == [
        "== train ==", None, "[0/4 jobs done, 1 min]", None, None, "[1/4 jobs done, 2 min]",
        "== train: 371.0 s (CPU 700 s)", "test score: 0.9262 (GIoU term 0.9279, F1 term 0.9258) in 8.9 min"]


@pytest.mark.smoke  # starts a process
def test_launch_keeps_the_whole_log_and_returns_the_exit_status(tmp_path):
    log, seen = tmp_path / "run.log", []
    script = "print('== folds =='); print('detail'); print('test score: 0.5'); raise SystemExit(3)"
    code = levers.launch([levers.sys.executable, "-c", script], dict(levers.os.environ), log, seen.append)
    assert code == 3 and seen == ["== folds ==", "test score: 0.5"]
    assert log.read_text().splitlines() == ["== folds ==", "detail", "test score: 0.5"]


def test_what_the_cleaning_did_to_the_injected_errors(tmp_path):
    from infer.label_audit import CHANGES_FILE
    from prepare import noise

    raw, noisy, cleaned = data_folder(tmp_path), tmp_path / "noisy", tmp_path / "cleaned"
    assert noise.main(["--data", str(raw), "--out", str(noisy), "--p-class", "0.2", "--p-jitter", "0.1",
                       "--seed", "3"]) == 0
    record = pd.read_csv(noisy / "noise.csv")
    wrong = record[record["kind"] == "class"].reset_index(drop=True)
    jittered = record[record["kind"] == "jitter"]
    correct = sorted(set(range(40)) - set(record["row"]))
    assert len(wrong) >= 3 and len(jittered) and len(correct) >= 2
    changes = [  # 2 class errors set right, 1 set to another wrong class, 1 jittered box refined,
        (wrong.at[0, "row"], "relabel", wrong.at[0, "true_class"]),  # 2 correct labels changed, 1 box added
        (wrong.at[1, "row"], "relabel", wrong.at[1, "true_class"]),
        (wrong.at[2, "row"], "relabel", wrong.at[2, "class"]),
        (jittered["row"].iloc[0], "refine", ""),
        (correct[0], "relabel", "LY"), (correct[1], "drop", ""), (None, "add", "LY")]
    cleaned.mkdir()
    pd.DataFrame(changes, columns=["row", "action", "class"]).to_csv(cleaned / CHANGES_FILE, index=False)
    got = levers.against_noise(noisy, cleaned)
    assert got == {"errors": {"class": len(wrong), "jitter": len(jittered)}, "fixed": 2, "changed_errors": 4,
                   "false_alarms": 2, "added": 1}
    assert levers.against_noise(raw, cleaned) is None  # no noise record: the clean data

    report = {"data": str(noisy), "score": 0.8,
              "clean": {"data": str(cleaned), "round_two": {"score": 0.85}}}
    arm = levers.Arm(name="noisy", round_two="noisy, cleaned")
    results = {"noisy|seed0": {"rows": levers.rows_of(report, arm)}}
    line = levers.audits(results, levers.Study(recipe="r", data="d", seeds=[0], arms=[arm]))[1]
    assert line == (f"noisy, cleaned, seed 0: of the injected errors ({len(wrong)} class, "
                    f"{len(jittered)} jitter), 2 relabelled to their true class, 4 changed; "
                    "2 correct labels changed, 1 boxes added")


@pytest.mark.smoke  # starts a process
def test_a_cli_prints_each_line_when_printed_into_a_pipe():
    """Into a pipe or a file (nohup, a SLURM job's output) a kit command's lines come as they are printed:
    the first line arrives while the command is still running, not at its exit."""
    import select
    import subprocess
    import sys

    code = ("import time; from cytocore import io; "
            "io.cli(lambda argv: (print('step one'), time.sleep(60)))")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    with subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env,
                          cwd=levers.paths.ROOT) as proc:
        try:
            ready, _, _ = select.select([proc.stdout], [], [], 30)
            assert ready and proc.stdout.readline() == "step one\n"
        finally:
            proc.kill()
