"""Classes, config loading, prediction table, offline environment, atomic writes."""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cytocore import classes, config, env, io, predictions

pytestmark = pytest.mark.unit


def test_23_exact_codes():
    assert len(classes.CLASSES) == 23 == len(set(classes.CLASSES))
    for trap in ("LH_lyAct", "Lysee", "LyB", "MoB", "Thromb", "Er"):
        assert trap in classes.CLASS_TO_ID
    assert classes.CLASSES[0] == "PNN" and classes.CLASSES[-1] == "SS"
    assert set(classes.FULL_NAMES) == set(classes.CLASSES)


@pytest.mark.parametrize(
    "typo,expected",
    [("LH_LyAc", "LH_lyAct"), ("lysee", "Lysee"), ("Lysée", "Lysee"), ("pnn", "PNN"), ("Thrombo", "Thromb"),
     ("zzzzzz", None), ("", None), (float("nan"), None)],
)
def test_suggest(typo, expected):
    assert classes.suggest(typo) == expected


@dataclasses.dataclass
class _Cfg:
    epochs: int = 10  # number of epochs
    lr: float = 0.01  # learning rate
    device: str = "cpu"  # cpu or cuda
    scales: list[float] = dataclasses.field(default_factory=lambda: [1.0])  # TTA scales
    weights: Path | None = None  # local weights file


def test_config_precedence_and_types(tmp_path):
    yml = tmp_path / "m.yaml"
    yml.write_text("epochs: 3\nlr: 1\n")
    cfg = config.load(_Cfg, yml, ["device=cuda", "scales=[1.0,1.25]", "weights=/x/w.pt", "epochs=4"])
    assert cfg == _Cfg(epochs=4, lr=1.0, device="cuda", scales=[1.0, 1.25], weights=Path("/x/w.pt"))
    assert isinstance(cfg.lr, float)
    out = config.save(cfg, tmp_path / "run" / "config.yaml")
    assert config.load(_Cfg, out) == cfg


def test_config_unknown_key_lists_valid_ones(tmp_path):
    valid = "valid keys: device, epochs, lr, scales, weights"
    with pytest.raises(config.ConfigError, match=f"unknown key.*epoch.*{valid}"):
        config.load(_Cfg, None, ["epoch=3"])
    yml = tmp_path / "bad.yaml"
    yml.write_text("batchsize: 3\n")
    with pytest.raises(config.ConfigError, match="bad.yaml: unknown key"):
        config.load(_Cfg, yml)


def test_config_bad_type_and_syntax():
    with pytest.raises(config.ConfigError, match="epochs must be int"):
        config.load(_Cfg, None, ["epochs=ten"])
    with pytest.raises(config.ConfigError, match="key=value"):
        config.parse_overrides(["epochs"])


def _table(n=2, probs=True):
    p = np.full((n, 23), 1 / 23) if probs else None
    return predictions.make("a.jpg", [[1, 2, 30, 40]] * n, [0.9] * n, [0, 22][:n], 360, 370, "yolov8", 0,
                            probs=p)


def test_prediction_round_trip(tmp_path):
    df = _table()
    assert list(df["class"]) == ["PNN", "SS"]
    path = predictions.write(df, tmp_path / "p" / "oof.parquet")
    back = predictions.read(path)
    pd.testing.assert_frame_equal(back, predictions.validate(df))
    assert predictions.has_probs(back)
    assert list(predictions.empty().columns) == list(predictions.COLUMNS)


@pytest.mark.parametrize(
    "mutate,message",
    [
        (lambda d: d.drop(columns="score"), "missing column"),
        (lambda d: d.assign(x2=0.0), "invalid xyxy"),
        (lambda d: d.assign(score=1.5), r"\[0, 1\]"),
        (lambda d: d.assign(**{"class": "Lysée"}), "unknown class"),
        (lambda d: d.drop(columns="p_SS"), "all of p_"),
        (lambda d: d.assign(extra=1), "unexpected column"),
    ],
)
def test_prediction_contract_violations(mutate, message):
    with pytest.raises(ValueError, match=message):
        predictions.validate(mutate(_table()))


def test_atomic_writes_are_readable_like_plain_files(tmp_path):
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    written = io.atomic_write_text(tmp_path / "sub.csv", "x")
    assert written.stat().st_mode & 0o777 == plain.stat().st_mode & 0o777  # not mkstemp's 0600


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.csv"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with io.atomic_write(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert list(tmp_path.iterdir()) == [target]


def test_data_error_counts_every_problem():
    problems = [io.Problem("t.csv", "bad", line=i) for i in range(2, 300)]
    text = str(io.DataError(problems))
    assert "t.csv:2: error: bad" in text
    assert text.splitlines()[-1] == "298 error(s), 0 warning(s)"
    assert "more problem(s) not shown" in text


def test_cli_turns_user_errors_into_exit_1(capsys):
    def main(argv):
        raise io.DataError([io.Problem("x.csv", "unknown class 'Q'", line=3, column="class")])

    assert io.cli(main, []) == 1
    err = capsys.readouterr().err
    assert "x.csv:3: error: column 'class': unknown class 'Q'" in err and "Traceback" not in err


def test_offline_env_is_project_local(tmp_path, monkeypatch):
    for key in env.offline_variables(tmp_path):
        monkeypatch.delenv(key, raising=False)
    values = env.apply(tmp_path / "cfg")
    assert values["YOLO_OFFLINE"] == "1" and values["HF_HUB_OFFLINE"] == "1"
    home = str(Path.home())
    for key in ("YOLO_CONFIG_DIR", "MPLCONFIGDIR", "XDG_CACHE_HOME", "TORCH_HOME"):
        assert values[key].startswith(str(tmp_path)) and not values[key].startswith(home + "/.")
    font_dir = Path(values["YOLO_CONFIG_DIR"])
    assert (font_dir / "Arial.ttf").stat().st_size > 10_000
    assert (font_dir / "Arial.Unicode.ttf").exists()
    assert (font_dir / "Ultralytics" / "Arial.ttf").exists()  # where ultralytics' plots look
    assert os.environ["MPLBACKEND"] == "Agg"
