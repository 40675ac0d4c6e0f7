"""A batch being handled keeps its messages' ack deadlines away (infra.consumers.ack_deadlines_keep),
against the real JetStream server: a message held past its ack wait is not redelivered while
the keeper runs, and is once it stops."""
from __future__ import annotations

import asyncio
import contextlib

from infra.consumers import ack_deadlines_keep
from infra.nats import ConsumerSpec, StreamSpec, jetstream_delete_streams_destroying_data, jetstream_session

STREAM = StreamSpec("ACKKEEP", ("ackkeep.*",))
SPEC = ConsumerSpec("ackkeep-test", "ACKKEEP", ("ackkeep.held",))


def test_a_held_batch_is_not_redelivered_while_its_deadlines_are_kept(settings):
    settings.CONSUMER_ACK_WAIT_SECONDS = 1

    async def scenario():
        async with jetstream_session("a4co-ackkeep-test") as session:
            await session.ensure([STREAM], [SPEC])
            await session._nc.jetstream().publish("ackkeep.held", b"{}")
            pull = await session.pull(SPEC)
            (held,) = await pull.fetch(10, timeout=5)
            assert held.num_delivered == 1
            keeper = asyncio.create_task(ack_deadlines_keep([held], interval=0.3))
            try:
                # Three ack waits long: nothing is handed out again meanwhile.
                assert await pull.fetch(10, timeout=3) == []
            finally:
                keeper.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await keeper
            # Without the keeper, the ack wait runs out and JetStream delivers it again.
            (again,) = await pull.fetch(10, timeout=5)
            assert again.num_delivered == 2 and again.stream_sequence == held.stream_sequence
            await again.ack()

    try:
        asyncio.run(scenario())
    finally:
        jetstream_delete_streams_destroying_data([STREAM.name])
