"""infra/grafana/dashboards/saga-monitoring.json: a well-formed Grafana dashboard whose every
query parses and reads only metrics that GET /metrics exposes (tests/e2e/test_metrics.py checks
the same against the whole running system)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import ALL_DATABASES
from tests.ops.promtext import expression_metric_names

DASHBOARD = Path(__file__).resolve().parents[2] / "infra" / "grafana" / "dashboards" / "saga-monitoring.json"


def dashboard_expressions(dashboard: dict) -> list[tuple[str, str]]:
    """(panel title, expr) for every query of every panel, rows' nested panels included."""
    found = []
    for panel in dashboard["panels"]:
        for inner in [panel, *panel.get("panels", [])]:
            for target in inner.get("targets", []):
                found.append((inner["title"], target["expr"]))
    return found


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def test_the_dashboard_is_well_formed(dashboard):
    assert dashboard["uid"] and dashboard["title"] and dashboard["schemaVersion"] >= 36
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24 and grid["h"] > 0, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], f"panel {panel['title']!r} has no query"
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]


def test_every_query_parses_and_reads_a_metric(dashboard):
    expressions = dashboard_expressions(dashboard)
    assert len(expressions) >= 20
    for title, expr in expressions:
        assert expression_metric_names(expr), f"{title}: {expr} reads no metric"


@pytest.mark.django_db(databases=ALL_DATABASES)
def test_every_metric_the_dashboard_reads_is_exposed(dashboard, scrape, jetstream):
    scrape()  # django-prometheus's per-view series exist once a view has answered
    exposed = scrape().names
    missing = {(title, name) for title, expr in dashboard_expressions(dashboard)
               for name in expression_metric_names(expr) if name not in exposed}
    assert not missing


def test_the_dashboard_covers_the_seed_metrics(dashboard):
    used = {name for _title, expr in dashboard_expressions(dashboard) for name in expression_metric_names(expr)}
    for seed in ("saga_success_rate", "saga_duration_seconds_bucket", "saga_compensation_total",
                 "saga_compensation_success_rate", "order_status_count", "inventory_reservations_active",
                 "payments_processed_total"):
        assert seed in used, seed
