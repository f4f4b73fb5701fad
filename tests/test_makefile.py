"""README, Makefile and CI stay in step: every `make X` the README shows exists and is documented."""
from __future__ import annotations

import re
import subprocess

from cytokit import paths

MAKEFILE = (paths.ROOT / "Makefile").read_text()
README = (paths.ROOT / "README.md").read_text()


def _targets() -> set[str]:
    return set(re.findall(r"^([a-zA-Z_-]+):", MAKEFILE, flags=re.M))


def test_readme_commands_are_makefile_targets():
    shown = set(re.findall(r"\bmake ([a-z][a-z-]*)", README))
    assert {"demo", "test"} <= shown
    missing = shown - _targets()
    assert not missing, f"README shows make targets the Makefile lacks: {sorted(missing)}"


def test_every_phony_target_has_help_text():
    phony = re.search(r"^\.PHONY: (.*)$", MAKEFILE, flags=re.M).group(1).split()
    documented = set(re.findall(r"^([a-zA-Z_-]+):.*## ", MAKEFILE, flags=re.M))
    assert set(phony) - {"help"} <= documented
    assert set(phony) <= _targets()


def test_make_help_is_the_default_and_lists_targets():
    out = subprocess.run(["make", "-s", "-C", str(paths.ROOT)], capture_output=True, text=True, check=True).stdout
    for target in ("demo", "test", "folds", "train", "submission", "score", "bench"):
        assert f"make {target} " in out


def test_ci_runs_make_test():
    assert "make test" in (paths.ROOT / ".ci" / "run").read_text()


def test_train_variables_reach_the_command():
    out = subprocess.run(
        ["make", "-n", "-C", str(paths.ROOT), "train", "MODEL=yolov5", "FOLD=2", "EPOCHS=3", "IMGSZ=320", "RESUME=1",
         "ARGS=lr0=0.02"],
        capture_output=True, text=True, check=True,
    ).stdout
    assert "-m train --model yolov5 --fold 2" in out
    assert "epochs=3" in out and "imgsz=320" in out and "--resume" in out and "lr0=0.02" in out
