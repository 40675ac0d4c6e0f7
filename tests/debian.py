"""Tools some tests need from Debian's packages, installed on first use when missing (as root),
so that a clean CI machine runs those tests instead of skipping them."""
from __future__ import annotations

import os
import shutil
import subprocess

import pytest


def debian_tool(executable: str, *packages: str) -> str:
    """The path of `executable`, installing `packages` with apt-get first if it is missing.

    Fails the test (never skips it) when the tool is missing and cannot be installed here.
    """
    found = shutil.which(executable)
    if found:
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.fail(f"{executable} is missing and cannot be installed here: run "
                    f"`apt-get install -y {' '.join(packages)}` as root")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    # Another test run on the machine may be installing at the same moment: wait for its dpkg
    # lock instead of failing on it.
    wait = ["-o", "DPkg::Lock::Timeout=600"]
    subprocess.run(["apt-get", *wait, "update", "-qq"], check=True, env=env, timeout=900)
    subprocess.run(["apt-get", *wait, "install", "-y", "-qq", "--no-install-recommends", *packages],
                   check=True, env=env, timeout=1500)
    found = shutil.which(executable)
    assert found, f"apt-get installed {' '.join(packages)} but {executable} is not on PATH"
    return found
