"""The devstack's web logs no line per request unless asked for (DEVSTACK_WEB_ACCESS_LOG=1)."""
from __future__ import annotations

from devstack import procfile


def test_no_access_log_by_default(monkeypatch):
    monkeypatch.delenv("DEVSTACK_WEB_ACCESS_LOG", raising=False)
    assert "--access-logfile" not in procfile.PROCESSES["web"]
    assert procfile.argv_extra("web") == []


def test_access_log_when_asked_for(monkeypatch):
    monkeypatch.setenv("DEVSTACK_WEB_ACCESS_LOG", "1")
    assert procfile.argv_extra("web") == ["--access-logfile", "-"]
    assert procfile.argv_extra("worker") == []
