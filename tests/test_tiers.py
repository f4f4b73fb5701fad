"""The test tiers themselves: a unit test cannot start a process (tests/conftest.py refuses it)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.unit


def test_a_unit_test_cannot_start_a_process():
    with pytest.raises(AssertionError, match="mark it smoke"):
        subprocess.run([sys.executable, "-c", "pass"], check=False)
    with pytest.raises(AssertionError, match="mark it smoke"):
        os.fork()


@pytest.mark.smoke
def test_a_smoke_test_may_start_one():
    assert subprocess.run([sys.executable, "-c", "pass"], check=False).returncode == 0
