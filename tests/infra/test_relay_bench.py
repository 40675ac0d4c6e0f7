"""relay_bench works end to end (the figures themselves are in docs/benchmarks.md)."""
import io
import re

import pytest
from django.core.management import call_command

from orders.models import OutboxMessage
from tests.conftest import ALL_DATABASES

pytestmark = pytest.mark.django_db(databases=ALL_DATABASES, transaction=True)


@pytest.mark.parametrize("relays", [1, 2])
def test_relay_bench_publishes_every_row_once_and_cleans_up(relays):
    out = io.StringIO()
    call_command("relay_bench", messages=3000, batch=500, relays=relays, stdout=out)
    assert "published 3000 messages" in out.getvalue() and "stream holds 3000" in out.getvalue()
    assert re.search(r"^machine: .+, \d+ CPUs?, CPython [\d.]+ \(.+\); CPU probe \d+ ms before .+"
                     r"; wake probe \d+ µs on one CPU", out.getvalue(), re.MULTILINE)
    assert not OutboxMessage.objects.exists()
