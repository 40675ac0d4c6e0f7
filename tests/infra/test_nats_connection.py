"""Our own close of a NATS connection is not reported as a disconnection (nats-py calls the
disconnected callback on close() too)."""
from __future__ import annotations

import asyncio
import logging

from infra import nats as nats_bus


def test_closing_a_connection_logs_no_disconnection(jetstream, caplog):
    async def connect_and_close():
        client = await nats_bus._connect("a4co-test-close")
        await client.flush()
        assert client.is_connected
        await client.close()

    with caplog.at_level(logging.WARNING, logger="infra.nats"):
        asyncio.run(connect_and_close())
    assert not [r for r in caplog.records if "disconnected" in r.getMessage()]
