"""The OpenAPI 3 schema (drf-spectacular): it generates without a single warning, describes every
/api/v1 endpoint with its error answers, and it and Swagger UI are served without authentication."""
from __future__ import annotations

import re

import pytest
import yaml
from django.core.management import call_command
from django.urls import URLPattern, URLResolver

from a4co.urls import api_v1


def api_v1_paths() -> set[str]:
    """Every /api/v1 route in the URLconf, written the OpenAPI way (`{order_id}`)."""
    paths = set()

    def walk(patterns, prefix):
        for entry in patterns:
            route = prefix + str(entry.pattern)
            if isinstance(entry, URLResolver):
                walk(entry.url_patterns, route)
            elif isinstance(entry, URLPattern):
                paths.add(re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", route))

    walk(api_v1, "/api/v1/")
    return paths


@pytest.fixture(scope="module")
def schema(tmp_path_factory) -> dict:
    target = tmp_path_factory.mktemp("openapi") / "schema.yaml"
    # --validate checks it against the OpenAPI 3 specification; --fail-on-warn turns any warning
    # (a view whose body could not be described, a name collision, ...) into an error.
    call_command("spectacular", validate=True, fail_on_warn=True, file=str(target))
    return yaml.safe_load(target.read_text())


def test_the_schema_lists_every_api_v1_endpoint(schema):
    documented = {path for path in schema["paths"] if path.startswith("/api/v1/")}
    assert documented == api_v1_paths()
    assert {"/healthz", "/readyz"} <= set(schema["paths"])


def operations(schema):
    for path, methods in schema["paths"].items():
        for method, operation in methods.items():
            yield path, method, operation


def test_every_operation_describes_its_answers(schema):
    for path, method, operation in operations(schema):
        responses = operation["responses"]
        where = f"{method.upper()} {path}"
        assert operation.get("summary") and operation.get("operationId"), where
        assert any(code.startswith("2") for code in responses), where
        for code, response in responses.items():
            assert response.get("content") or code == "204", f"{where} {code} has no body described"
        if not path.startswith("/api/v1/") or path.endswith("/stripe/webhook"):
            continue  # open endpoints
        assert operation["security"] == [{"tokenAuth": []}], where
        assert "401" in responses, where
        if "{" in path and method == "get":
            assert "404" in responses, where
        if "requestBody" in operation or method == "get" and path == "/api/v1/orders":
            assert "400" in responses, where


def test_validation_errors_name_the_fields(schema):
    errors = schema["components"]["schemas"]["OrderCreateValidationError"]["properties"]
    assert {"detail", "code", "customerId", "items", "Idempotency-Key", "nonFieldErrors"} <= set(errors)
    assert errors["customerId"] == {"type": "array", "items": {"type": "string"},
                                    "description": "Why `customerId` was rejected."}


def test_staff_only_and_conflicts_are_described(schema):
    paths = schema["paths"]
    assert "403" in paths["/api/v1/sagas/{order_id}"]["get"]["responses"]
    assert "403" in paths["/api/v1/inventory/products/{product_id}"]["put"]["responses"]
    assert "409" in paths["/api/v1/orders/{order_id}/cancel"]["post"]["responses"]
    assert "409" in paths["/api/v1/orders"]["post"]["responses"]
    item = schema["components"]["schemas"]["OrderCreateRequest"]["properties"]["items"]
    assert item["items"] == {"$ref": "#/components/schemas/OrderItemRequest"}


def test_schema_and_docs_are_open(client):
    response = client.get("/api/schema/")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("application/vnd.oai.openapi")
    docs = client.get("/api/docs/")
    assert docs.status_code == 200
    html = docs.content.decode()
    assert "swagger-ui" in html and "/static/drf_spectacular_sidecar/swagger-ui-dist/" in html
