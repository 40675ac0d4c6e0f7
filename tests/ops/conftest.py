"""Fixtures for the observability tests: a fresh metrics cache per test (the test's rows roll
back, the cache would not), and scraping GET /metrics in-process."""
from __future__ import annotations

import pytest
from django.test import Client

from infra import metrics
from tests.ops.promtext import Scrape


@pytest.fixture(autouse=True)
def _metrics_caches():
    metrics.saga_cache_clear()
    metrics.nats_cache_clear()
    yield
    metrics.saga_cache_clear()
    metrics.nats_cache_clear()


@pytest.fixture
def scrape():
    """GET /metrics (no credentials, like Prometheus) -> Scrape; asserts a 200 text answer."""
    client = Client()

    def get() -> Scrape:
        response = client.get("/metrics")
        assert response.status_code == 200, response.content[:500]
        assert response["Content-Type"].startswith("text/plain; version=0.0.4")
        return Scrape(response.content.decode())

    return get

