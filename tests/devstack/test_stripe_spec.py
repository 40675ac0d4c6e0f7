"""The Stripe stand-in logs no line per request unless asked for (DEVSTACK_STRIPE_ACCESS_LOG=1)."""
from __future__ import annotations

from devstack.servers import stripe_spec


def test_no_access_log_by_default(tmp_path, monkeypatch):
    monkeypatch.delenv("DEVSTACK_STRIPE_ACCESS_LOG", raising=False)
    assert "--access-log" not in stripe_spec(tmp_path, 18999).argv


def test_access_log_when_asked_for(tmp_path, monkeypatch):
    monkeypatch.setenv("DEVSTACK_STRIPE_ACCESS_LOG", "1")
    assert stripe_spec(tmp_path, 18999).argv[-1] == "--access-log"
