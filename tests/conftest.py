"""Shared fixtures. The servers come from the environment (`make test` starts them)."""
from __future__ import annotations

import gc

import pytest
from django.db import connections
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from a4co import clock as the_clock

ALL_DATABASES = ["default", "orders", "inventory", "payments"]


def pytest_collection_modifyitems(config, items):
    # End-to-end tests run last: they start the whole system against databases of their own.
    items.sort(key=lambda item: "/e2e/" in str(item.fspath))


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup, django_db_blocker):
    """pytest-django's test databases, plus: close every alias's connection before they are dropped
    (aliases sharing one database each hold a connection the drop would otherwise trip over)."""
    yield
    with django_db_blocker.unblock():
        connections.close_all()


@pytest.fixture
def clock():
    """The one clock, for tests that move it (`clock.advance(seconds)`); reset afterwards."""
    the_clock.reset()
    yield the_clock
    the_clock.reset()


def _client_for(django_user_model, username: str, *, staff: bool = False) -> APIClient:
    user = django_user_model.objects.create(username=username, is_staff=staff)
    token = Token.objects.create(user=user)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    client.user = user
    return client


@pytest.fixture
def api(django_user_model) -> APIClient:
    return _client_for(django_user_model, "shop")


@pytest.fixture
def other_api(django_user_model) -> APIClient:
    return _client_for(django_user_model, "other-shop")


@pytest.fixture
def staff_api(django_user_model) -> APIClient:
    return _client_for(django_user_model, "ops", staff=True)


@pytest.fixture
def jetstream():
    """Fresh streams and durable consumers on the test run's NATS; this process's connection renewed."""
    from infra import nats as nats_bus
    from infra.streams import ROUTES, STREAMS

    nats_bus.bridge_reset()
    nats_bus.jetstream_delete_streams_destroying_data([s.name for s in STREAMS])
    nats_bus.jetstream_ensure(STREAMS, [route.consumer for route in ROUTES])
    yield
    nats_bus.bridge_reset()
    gc.collect()  # a stopped consumer runner's worker threads leave their Django connections to the GC
