"""Fixtures for the devstack's own tests (servers started here, not the test run's)."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest


@pytest.fixture
def scratch(tmp_path) -> Path:
    """A directory the unprivileged postgres account can reach when we run as root.

    Under `devstack test`, inside DEVSTACK_TMPDIR (mode 0711). Otherwise a fresh mkdtemp directory
    (mode 0711), removed afterwards: not pytest's tmp_path, whose /tmp/pytest-of-<user> parent
    every starting pytest session resets to 0700, locking the postgres account out mid-test.
    """
    base = os.environ.get("DEVSTACK_TMPDIR")
    if base:
        path = Path(base) / f"devstack-{tmp_path.name}"
        path.mkdir()
        yield path
        return
    path = Path(tempfile.mkdtemp(prefix="devstack-tests-"))
    os.chmod(path, 0o711)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
