"""Test set-up: offline environment, a private work folder, the shared data paths."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from cytocore import env, paths

SHARED = paths.shared_dir()
CYTOLOGIA = paths.cytologia_dir()
BCCD = paths.bccd_dir()


def pytest_configure(config):
    # One private work folder for the whole run: nothing lands in the repo's work/
    # or in ~/.config / ~/.cache.
    os.environ.pop("CYTOKIT_MAKEVARS", None)  # `make test`: messages spell Python flags (cytocore.makevars)
    if "CYTOKIT_WORK" not in os.environ:
        import tempfile

        os.environ["CYTOKIT_WORK"] = tempfile.mkdtemp(prefix="cytokit-test-work-")
    if "CYTOKIT_WEIGHTS" not in os.environ:  # pretrained: auto finds nothing here, whatever weights/ holds
        import tempfile

        os.environ["CYTOKIT_WEIGHTS"] = tempfile.mkdtemp(prefix="cytokit-test-weights-")
    env.apply()
    import matplotlib.font_manager  # noqa: F401  builds the font cache (it runs fc-list) before any test


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    if not has_cuda:
        skip = pytest.mark.skip(reason="needs a CUDA GPU")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def real_train_csv() -> Path:
    """The challenge's real train.csv, read in place; skip when ../shared is absent."""
    path = CYTOLOGIA / "train.csv"
    if not path.exists():
        pytest.skip("../shared/cytologia/train.csv is not available")
    return path


@pytest.fixture(scope="session")
def real_test_csv() -> Path:
    path = CYTOLOGIA / "test.csv"
    if not path.exists():
        pytest.skip("../shared/cytologia/test.csv is not available")
    return path


@pytest.fixture(scope="session")
def bccd_dir() -> Path:
    """The small real BCCD blood smear set, read in place; skip when absent."""
    if not (BCCD / "BCCD" / "JPEGImages").exists():
        pytest.skip("../shared/data/bccd is not available")
    return BCCD


@pytest.fixture(autouse=True)
def _unit_tier_starts_no_process(request, monkeypatch):
    """The unit tier is pure: a unit test that starts a process (subprocess, multiprocessing, os.fork)
    fails here, so it has to be marked smoke. The tiering itself checks it, not a reviewer."""
    marks = {m.name for m in request.node.iter_markers()}
    if "unit" not in marks or marks & {"smoke", "slow"}:
        return

    def refuse(*args, **kwargs):
        raise AssertionError(f"{request.node.nodeid}: a unit test started a process; mark it smoke")

    import subprocess

    monkeypatch.setattr(subprocess.Popen, "__init__", refuse)
    monkeypatch.setattr(os, "fork", refuse)
    monkeypatch.setattr(os, "posix_spawn", refuse, raising=False)
