"""README, Makefile, CI and the test tiers stay in step.

Every `make X` the README shows is a target, every target with `## help` is shown in the README, CI
lints then tests, and every test carries its tier (unit, smoke or slow).
"""
from __future__ import annotations

import re
import subprocess
import tomllib

import pytest

from cytocore import paths

pytestmark = pytest.mark.unit

MAKEFILE = (paths.ROOT / "Makefile").read_text()
README = (paths.ROOT / "README.md").read_text()


def _targets() -> set[str]:
    return set(re.findall(r"^([a-zA-Z_-]+):", MAKEFILE, flags=re.M))


def _documented() -> set[str]:
    """The targets with a ``## help`` text (what ``make help`` lists)."""
    return set(re.findall(r"^([a-zA-Z_-]+):.*## ", MAKEFILE, flags=re.M))


def _shown(readme: str) -> set[str]:
    return set(re.findall(r"\bmake ([a-z][a-z-]*)", readme))


def test_readme_commands_are_makefile_targets():
    shown = _shown(README)
    assert {"demo", "test"} <= shown
    missing = shown - _targets()
    assert not missing, f"README shows make targets the Makefile lacks: {sorted(missing)}"


def test_every_documented_target_is_in_the_readme():
    missing = _documented() - _shown(README)
    assert not missing, f"Makefile targets with ## help that the README never shows: {sorted(missing)}"
    assert {"setup", "demo-data", "clean", "lint", "test-unit"} <= _shown(README)


def test_the_two_way_check_can_fail():
    assert _documented() - _shown(re.sub(r"make clean\b(?!-)", "", README)) == {"clean"}
    assert _shown(README + "\nmake deploy\n") - _targets() == {"deploy"}


def test_every_phony_target_has_help_text():
    phony = re.search(r"^\.PHONY: (.*)$", MAKEFILE, flags=re.M).group(1).split()
    documented = set(re.findall(r"^([a-zA-Z_-]+):.*## ", MAKEFILE, flags=re.M))
    assert set(phony) - {"help"} <= documented
    assert set(phony) <= _targets()


@pytest.mark.smoke  # starts a process
def test_make_help_is_the_default_and_lists_targets():
    out = subprocess.run(["make", "-s", "-C", str(paths.ROOT)], capture_output=True, text=True,
                         check=True).stdout
    for target in ("demo", "test", "folds", "train", "submission", "score", "bench"):
        assert f"make {target} " in out


def test_ci_lints_then_runs_make_test():
    steps = [line.strip() for line in (paths.ROOT / ".ci" / "run").read_text().splitlines()
             if line.startswith("make ")]
    assert steps == ["make lint", "make test"]


@pytest.mark.smoke  # starts a process
def test_lint_and_unit_targets_run_the_pinned_tools():
    out = subprocess.run(["make", "-n", "-C", str(paths.ROOT), "lint", "test-unit"], capture_output=True,
                         text=True, check=True).stdout
    assert "-m ruff check ." in out and '-m pytest -m "unit and not smoke and not slow"' in out
    pins = dict(line.split("==") for line in (paths.ROOT / "requirements.txt").read_text().splitlines()
                if "==" in line and not line.startswith("#"))
    assert "ruff" in pins
    config = tomllib.loads((paths.ROOT / "pyproject.toml").read_text())
    assert {"E", "F", "W", "I", "B", "UP"} <= set(config["tool"]["ruff"]["lint"]["select"])
    markers = config["tool"]["pytest"]["ini_options"]["markers"]
    assert {"unit", "smoke", "slow", "gpu"} <= {m.split(":")[0] for m in markers}


def test_every_collected_test_has_a_tier(request):
    tiers = {"unit", "smoke", "slow"}
    untiered = [item.nodeid for item in request.session.items
                if not tiers & {m.name for m in item.iter_markers()}]
    assert not untiered, f"tests without a tier marker (unit, smoke or slow): {untiered[:10]}"


def test_benchmark_training_settings_are_valid_config_keys():
    """A renamed key (lr0 -> lr) must not leave `make bench` training with a refused setting."""
    from bench import bench_jobs
    from train import registry

    cfg = registry.load_config("yolov8", bench_jobs.OVERRIDES)
    assert cfg.lr == 0.002 and cfg.epochs == 4
