"""The Python API (``cytokit``), the ``cytokit`` command and the installable package.

The README's Python example is executed as written (smoke) in a folder laid out like the repository
after ``make demo`` (``tiny_run``: a tiny run whose detector sees the truth)."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pandas as pd
import pytest
import tiny_run

import cytokit
from cytocore import metric, paths
from cytokit import cli as kit_cli

README = paths.ROOT / "README.md"
SECTION = "## Predict on new images and the Python API"


def readme_example() -> str:
    text = README.read_text()
    section = text[text.index(SECTION):]
    section = section[:section.index("\n## ", 1)]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert blocks, "the README's API section has no python example"
    return blocks[0]


@pytest.mark.unit
def test_public_names_are_listed_and_loaded_on_first_use():
    assert set(cytokit.API) <= set(dir(cytokit))
    assert callable(cytokit.load_ensemble) and callable(cytokit.score)
    assert cytokit.Ensemble.__name__ == "Ensemble"
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        cytokit.nope  # noqa: B018


@pytest.mark.unit
def test_score_takes_frames_or_paths_and_is_the_metric(tmp_path):
    truth = pd.DataFrame({"trustii_id": [1, 2], "NAME": ["a.jpg", "a.jpg"], "x1": [0.0, 50.0],
                          "y1": [0.0, 50.0], "x2": [10.0, 60.0], "y2": [10.0, 60.0], "class": ["PNN", "LY"]})
    sub = truth.assign(**{"class": ["PNN", "EO"]})
    r = cytokit.score(sub, truth)
    assert r.total == metric.score(truth, sub).total
    # GIoU 1 for both boxes; F1 over PNN, LY, EO: 1, 0, 0 -> 0.2 * 1 + 0.8 * 1/3
    assert r.total == pytest.approx(0.2 + 0.8 / 3)
    truth.to_csv(tmp_path / "truth.csv", index=False)
    sub.to_csv(tmp_path / "sub.csv", index=False)
    assert cytokit.score(tmp_path / "sub.csv", str(tmp_path / "truth.csv")).total == pytest.approx(r.total)


@pytest.mark.unit
def test_load_recipe_applies_overrides_and_names_bad_keys():
    recipe = cytokit.load_recipe(paths.CONFIGS / "demo.yaml", ["k=3"])
    assert recipe.k == 3 and recipe.detectors
    with pytest.raises(ValueError, match="bogus"):
        cytokit.load_recipe(overrides=["bogus=1"])


@pytest.mark.unit
def test_listing_models_writes_no_config_folder(tmp_path, monkeypatch, capsys):
    from train.__main__ import main as train_main

    monkeypatch.setenv("CYTOKIT_WORK", str(tmp_path / "work"))
    assert train_main(["--list"]) == 0
    assert "yolov8" in capsys.readouterr().out
    assert not (tmp_path / "work").exists()


@pytest.mark.unit
def test_cli_usage_and_unknown_commands(capsys):
    assert kit_cli.main([]) == 2
    assert "predict" in capsys.readouterr().out
    assert kit_cli.main(["--help"]) == 0
    assert kit_cli.main(["bogus"]) == 2
    assert "unknown command 'bogus'" in capsys.readouterr().err


@pytest.mark.unit
def test_cli_runs_and_predict_without_a_run_say_what_to_do(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CYTOKIT_WORK", str(tmp_path / "work"))
    assert kit_cli.main(["runs"]) == 0
    assert "no trained run yet" in capsys.readouterr().out
    (tmp_path / "im.jpg").write_bytes(b"")
    assert kit_cli.main(["predict", str(tmp_path / "im.jpg")]) == 1
    assert "make all or make demo" in capsys.readouterr().err


@pytest.fixture(scope="module")
def repo_like(tmp_path_factory):
    """A folder laid out like the repository after make demo, with a tiny run; the current folder."""
    tmp = tmp_path_factory.mktemp("api")
    data, work, dataset_id = tiny_run.build(tmp)
    (tmp / "configs").symlink_to(paths.CONFIGS)
    with pytest.MonkeyPatch.context() as mp, tiny_run.patched(data):
        mp.setenv("CYTOKIT_WORK", str(work))
        mp.chdir(tmp)
        yield tmp, dataset_id


@pytest.mark.smoke
def test_the_readme_python_example_runs_as_written(repo_like, capsys):
    tmp, dataset_id = repo_like
    code = readme_example()
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)  # noqa: S102  the documented example, as written
    boxes = scope["boxes"]
    names = sorted(p.name for p in (tmp / "data" / "demo" / "images").iterdir())
    assert set(boxes["image"]) <= set(names) and len(boxes)
    assert sorted(p.name for p in (tmp / "work" / "predict" / "example").iterdir()) == names
    assert scope["ens"].run.id == dataset_id
    assert 0 < scope["result"].total <= 1
    printed = capsys.readouterr().out
    assert "mean_predicted" in printed and "confidence" in printed


@pytest.mark.smoke
def test_cytokit_predict_command(repo_like, capsys):
    tmp, dataset_id = repo_like
    assert kit_cli.main(["predict", "data/demo/images", "--out", "out", "--conf", "0", "--no-draw"]) == 0
    csv = pd.read_csv(tmp / "out" / "predictions.csv")
    assert len(csv) and not (tmp / "out" / "annotated").exists()
    assert kit_cli.main(["runs"]) == 0
    assert dataset_id in capsys.readouterr().out


@pytest.mark.smoke
def test_the_package_builds_a_wheel_with_the_cytokit_command(tmp_path):
    """``pip wheel .`` (no network: the installed setuptools) holds every package and the console script.
    Built from a copy of the sources, so that setuptools' build/ and egg-info stay out of the repository."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "requirements.txt", "README.md", "LICENSE"):
        shutil.copy(paths.ROOT / name, src / name)
    for package in ("cytokit", "cytocore", "prepare", "train", "infer", "submit", "pipeline", "bench",
                    "tests"):
        shutil.copytree(paths.ROOT / package, src / package, ignore=shutil.ignore_patterns("__pycache__"))
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                          str(src), "-w", str(tmp_path)], capture_output=True, text=True, cwd=tmp_path,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    wheel = next(Path(tmp_path).glob("*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert {"cytokit", "cytocore", "prepare", "train", "infer", "submit", "pipeline", "bench"} <= tops
    assert "tests" not in tops and "cytokit/api.py" in names and "train/yolo/__init__.py" in names
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "cytokit = cytokit.cli:main" in zipfile.ZipFile(wheel).read(entry).decode()
