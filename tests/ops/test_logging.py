"""Structured logs (a4co/logging.py): one JSON object per line with the saga's ids, from the
log_context the consumer runner sets, from the request, or from the message text."""
from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.http import HttpResponseNotFound
from django.test import RequestFactory
from django.urls import resolve
from django.utils.log import log_response

from a4co.logging import ContextFilter, JsonFormatter, current_log_context, log_context, process_kind
from tests.conftest import ALL_DATABASES
from tests.factories import ProductFactory, order_body
from tests.pump import pump

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def json_lines():
    """Every record logged (DEBUG included), formatted as the JSON handler would: call it to get
    the parsed lines so far."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(ContextFilter())
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    yield lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    root.removeHandler(handler)
    root.setLevel(old_level)


def test_a_line_is_one_json_object_with_the_context(json_lines):
    log = logging.getLogger("saga.test")
    with log_context(order_id="o-1", event_id="e-1", consumer="payment-service"):
        with log_context(saga_id="s-1", event_id="e-2"):
            log.info("inner %s", "step")
        log.warning("outer")
    log.info("outside")
    inner, outer, outside = json_lines()
    assert inner["message"] == "inner step" and inner["level"] == "INFO" and inner["logger"] == "saga.test"
    assert inner["time"].endswith("Z") and inner["pid"] == os.getpid() and inner["process"] == "test"
    assert (inner["orderId"], inner["sagaId"], inner["eventId"], inner["consumer"]) == ("o-1", "s-1", "e-2",
                                                                                          "payment-service")
    assert (outer["eventId"], "sagaId" in outer) == ("e-1", False)
    assert not {"orderId", "eventId", "consumer", "sagaId"} & set(outside)
    assert current_log_context() == {}


def test_ids_written_in_the_message_fill_in_what_the_context_does_not_know(json_lines):
    log = logging.getLogger("saga.services")
    log.info("saga moved orderId=o-7 sagaId=s-7 trigger=timeout STARTED -> COMPENSATING eventId=")
    with log_context(order_id="o-ctx"):
        log.info("saga moved orderId=o-text sagaId=s-8")
    from_text, both = json_lines()
    assert (from_text["orderId"], from_text["sagaId"], "eventId" in from_text) == ("o-7", "s-7", False)
    assert (both["orderId"], both["sagaId"]) == ("o-ctx", "s-8")


def test_an_exception_stays_on_its_line(json_lines):
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logging.getLogger("infra.consumers").exception("handler failed orderId=o-3")
    [line] = json_lines()
    assert "RuntimeError: boom" in line["exception"] and line["orderId"] == "o-3"


def test_a_request_log_names_the_order_of_the_url(json_lines):
    request = RequestFactory().get("/api/v1/orders/o-42")
    request.resolver_match = resolve("/api/v1/orders/o-42")
    log_response("Not Found: %s", request.path, response=HttpResponseNotFound(), request=request)
    [line] = json_lines()
    assert (line["orderId"], line["path"], line["method"], line["statusCode"]) == ("o-42", "/api/v1/orders/o-42",
                                                                                   "GET", 404)


def test_log_context_refuses_unknown_fields():
    with pytest.raises(TypeError, match="orderid"), log_context(orderid="x"):
        pass


@pytest.mark.parametrize("argv, kind", [
    (["/venv/lib/python3.11/site-packages/gunicorn/__main__.py", "a4co.wsgi:application"], "web"),
    (["/venv/lib/python3.11/site-packages/celery/__main__.py", "-A", "a4co", "worker"], "worker"),
    (["/venv/lib/python3.11/site-packages/celery/__main__.py", "-A", "a4co", "beat"], "beat"),
    (["manage.py", "run_consumers", "--only", "payment-service"], "consumers"),
    (["manage.py", "migrate_all"], "command:migrate_all"),
    (["-c"], "python"),
])
def test_the_process_kind_comes_from_the_command_line(argv, kind, monkeypatch):
    monkeypatch.delenv("A4CO_PROCESS_KIND", raising=False)
    assert process_kind(argv) == kind
    monkeypatch.setenv("A4CO_PROCESS_KIND", "web-canary")
    assert process_kind(argv) == "web-canary"


@pytest.mark.django_db(databases=ALL_DATABASES)
def test_every_line_of_a_saga_run_by_the_consumers_carries_its_ids(api, json_lines,
                                                                   django_capture_on_commit_callbacks):
    ProductFactory(product_id="oil", available_quantity=10)
    response = api.post("/api/v1/orders", order_body(("oil", 2, "12.50")), format="json")
    order_id = response.json()["orderId"]
    # The saga logs a move once its transaction commits (this test's never does: run the hooks),
    # with the ids of the message that moved it.
    with django_capture_on_commit_callbacks(using="orders", execute=True):
        pump()
    lines = [line for line in json_lines() if line["logger"].startswith(("saga", "inventory", "payments", "orders",
                                                                         "infra.consumers"))]
    assert len(lines) >= 6  # each consumer's "handled" (DEBUG), the saga's moves, ...
    assert all(line.get("orderId") == order_id for line in lines), [line for line in lines
                                                                   if line.get("orderId") != order_id]
    handled = [line for line in lines if line["message"].startswith("handled ")]
    assert handled and all(line.get("eventId") and line.get("consumer") and line.get("subject") for line in handled)
    moves = [line for line in lines if line["message"].startswith("saga moved")]
    assert moves and all(line.get("sagaId") and line.get("consumer") in ("order-service-inventory",
                                                                          "order-service-payment")
                         for line in moves)


@pytest.mark.django_db(databases=ALL_DATABASES)
def test_a_duplicate_delivery_logs_no_saga_move(api, caplog, django_capture_on_commit_callbacks):
    from infra.consumers import Outcome, delivery_handle
    from infra.streams import ROUTES
    from tests.pump import pending_rows

    route = next(r for r in ROUTES if r.key == "order-service-inventory@INVENTORY")
    ProductFactory(product_id="oil", available_quantity=10)
    assert api.post("/api/v1/orders", order_body(("oil", 1, "2.00")), format="json").status_code == 201
    pump(only={"orders.created"})
    (row,) = pending_rows({"inventory.reserved"})
    data = json.dumps(row.payload).encode()
    caplog.set_level(logging.INFO, logger="saga.services")
    outcomes = []
    with django_capture_on_commit_callbacks(using="orders", execute=True):
        for delivered in (1, 2):  # the second: a redelivery after a lost ack
            outcomes.append(delivery_handle(route, subject=row.subject, data=data, msg_id=str(row.id),
                                            num_delivered=delivered)[0])
    assert outcomes == [Outcome.HANDLED, Outcome.DUPLICATE]
    moves = [r.getMessage() for r in caplog.records if r.getMessage().startswith("saga moved")]
    assert len(moves) == 1 and "STARTED -> PAYMENT_PROCESSING" in moves[0], moves


def test_log_format_json_switches_every_process_to_json_celery_included():
    script = ("import django, logging; django.setup(); "
              "logging.getLogger('saga.services').info('saga moved orderId=o-9 sagaId=s-9'); "
              "from a4co.celery import app; app.log.setup(loglevel='INFO'); "  # what a worker does at start
              "logging.getLogger('infra.relay').warning('after celery set up its logging orderId=o-10')")
    env = {**os.environ, "LOG_FORMAT": "json", "DJANGO_SETTINGS_MODULE": "a4co.settings.test",
           "A4CO_PROCESS_KIND": "worker"}
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=60, check=True)
    lines = [json.loads(line) for line in result.stderr.splitlines() if line.strip()]
    assert [(line["orderId"], line["process"]) for line in lines] == [("o-9", "worker"), ("o-10", "worker")]
    assert lines[0]["sagaId"] == "s-9"


def test_an_unknown_log_format_is_a_configuration_error():
    env = {**os.environ, "LOG_FORMAT": "xml", "DJANGO_SETTINGS_MODULE": "a4co.settings.test"}
    result = subprocess.run([sys.executable, "-c", "import django; django.setup()"], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "LOG_FORMAT must be 'plain' or 'json'" in result.stderr
