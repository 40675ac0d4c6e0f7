"""infra/prometheus/prometheus.yml and alerts.yml: they parse, the scrape job points at the app's
/metrics, every alert is complete, parses as PromQL, reads only exposed metrics and links to its
runbook in docs/operations.md. With promtool installed (Debian's `prometheus` package), its own
checks and the rule unit tests in alerts_test.yml run too; without it those are skipped and the
checks above stand alone."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import ALL_DATABASES
from tests.debian import debian_tool
from tests.ops.promtext import PROMETHEUS_SYNTHETIC, expression_metric_names

REPO = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = REPO / "infra" / "prometheus"
OPERATIONS = REPO / "docs" / "operations.md"
DURATION = re.compile(r"^(\d+(ms|s|m|h|d|w|y))+$")


@pytest.fixture(scope="module")
def promtool() -> str:
    """promtool, from Debian's `prometheus` package (installed on first use if missing)."""
    return debian_tool("promtool", "prometheus")


def load(name: str) -> dict:
    return yaml.safe_load((PROMETHEUS_DIR / name).read_text())


def alert_rules() -> list[dict]:
    return [rule for group in load("alerts.yml")["groups"] for rule in group["rules"]]


def runbook_anchors() -> set[str]:
    """GitHub-style anchors of the markdown headings in docs/operations.md."""
    anchors = set()
    for line in OPERATIONS.read_text().splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            anchors.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return anchors


def test_the_scrape_config_points_at_the_apps_metrics_and_loads_the_alerts():
    config = load("prometheus.yml")
    for rule_file in config["rule_files"]:
        assert (PROMETHEUS_DIR / rule_file).is_file(), rule_file
    assert "alerts.yml" in config["rule_files"]
    [job] = [job for job in config["scrape_configs"] if job["job_name"] == "a4co-saga"]
    assert job["metrics_path"] == "/metrics"
    targets = [t for static in job["static_configs"] for t in static["targets"]]
    assert targets and all(re.fullmatch(r"[\w.\-]+:\d+", t) for t in targets)
    assert DURATION.match(config["global"]["scrape_interval"])


def test_every_alert_is_complete_and_parses():
    rules = alert_rules()
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names))
    anchors = runbook_anchors()
    for rule in rules:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations", "keep_firing_for"}, rule["alert"]
        assert re.fullmatch(r"[A-Z][A-Za-z0-9]+", rule["alert"])
        assert DURATION.match(rule["for"]), rule["alert"]
        assert rule["labels"]["severity"] in {"critical", "warning"}, rule["alert"]
        assert {"summary", "description", "runbook"} <= set(rule["annotations"]), rule["alert"]
        document, _, anchor = rule["annotations"]["runbook"].partition("#")
        assert document == "docs/operations.md" and anchor in anchors, f"{rule['alert']}: no section #{anchor}"
        assert expression_metric_names(rule["expr"]), rule["alert"]


def test_the_alerts_cover_what_ops_must_hear_about():
    used = {name for rule in alert_rules() for name in expression_metric_names(rule["expr"])}
    for topic, metric in {
        "stuck sagas": "a4co_saga_past_deadline_oldest_seconds",
        "outbox lag": "a4co_outbox_oldest_pending_age_seconds",
        "consumer backlog": "a4co_jetstream_consumer_pending_messages",
        "dead letters": "a4co_dead_letters_open_messages",
        "compensation failures": "a4co_saga_instances",
        "payment failure rate": "payments_processed_total",
    }.items():
        assert metric in used, topic
    compensation = next(rule for rule in alert_rules() if "a4co_saga_instances" in rule["expr"])
    assert 'status="COMPENSATION_FAILED"' in compensation["expr"]


@pytest.mark.django_db(databases=ALL_DATABASES)
def test_the_alerts_read_only_exposed_metrics(scrape, jetstream):
    exposed = scrape().names | PROMETHEUS_SYNTHETIC
    missing = {(rule["alert"], name) for rule in alert_rules()
               for name in expression_metric_names(rule["expr"]) if name not in exposed}
    assert not missing


def test_promtool_accepts_the_config_and_the_rules(promtool):
    for args in (["check", "config", str(PROMETHEUS_DIR / "prometheus.yml")],
                 ["check", "rules", str(PROMETHEUS_DIR / "alerts.yml")]):
        result = subprocess.run([promtool, *args], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr


def test_the_alert_rules_pass_their_unit_tests(promtool):
    result = subprocess.run([promtool, "test", "rules", "alerts_test.yml"], cwd=Path(__file__).parent,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.django_db(databases=ALL_DATABASES)
def test_promtool_lints_the_exposition_clean_but_for_the_seed_name(scrape, promtool):
    result = subprocess.run([promtool, "check", "metrics"], input=scrape().text, capture_output=True, text=True,
                            timeout=60)
    problems = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    # order_status_count is the seed's name, kept as operators chart it, although promtool
    # reserves the _count suffix for histograms and summaries.
    assert all(line.startswith("order_status_count ") for line in problems), problems
