"""infra.nats.PullConsumer against the real JetStream server: a fetch returns as soon as a message
is there (not when its batch is full), and one open pull request serves the fetches that follow
until it is used up or expires; then the next fetch asks again. The consumer's own info (its
waiting pull requests, its messages handed out) shows what was asked of the server. Messages
that arrived for the next fetch keep their ack deadlines while the handler is busy."""
from __future__ import annotations

import asyncio

from infra.consumers import _arrived_deadlines_keep
from infra.nats import ConsumerSpec, StreamSpec, jetstream_delete_streams_destroying_data, jetstream_session

STREAM = StreamSpec("PULLTEST", ("pulltest.*",))
SPEC = ConsumerSpec("pulltest-consumer", "PULLTEST", ("pulltest.event",))


async def _until(condition, *, timeout: float = 5.0, message: str) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await condition():
        assert asyncio.get_running_loop().time() < deadline, message
        await asyncio.sleep(0.02)


async def _waiting(info, count: int) -> bool:
    return (await info()).num_waiting == count


async def _handed_out(info, count: int) -> bool:
    return (await info()).num_ack_pending == count


def _run(scenario) -> None:
    """Run `await scenario(js, pull, info)` against a fresh stream and consumer."""
    async def main():
        async with jetstream_session("a4co-pull-test") as session:
            await session.ensure([STREAM], [SPEC])
            js = session._nc.jetstream()

            async def info():
                return await js.consumer_info(STREAM.name, SPEC.name)

            await scenario(js, await session.pull(SPEC), info)

    try:
        asyncio.run(main())
    finally:
        jetstream_delete_streams_destroying_data([STREAM.name])


def test_a_fetch_returns_with_the_first_message_and_the_open_request_serves_the_next_fetch():
    async def scenario(js, pull, info):
        fetching = asyncio.create_task(pull.fetch(10, timeout=30))
        await _until(lambda: _waiting(info, 1), message="the fetch's pull request never reached the server")
        await js.publish("pulltest.event", b'{"n": 1}')
        # Far sooner than the 30 s timeout or a batch of 10.
        (first,) = await asyncio.wait_for(fetching, 5)
        assert first.json() == {"n": 1}
        await first.ack()

        # Published while nobody fetches: the request still open (9 more to go) brings them.
        for n in (2, 3, 4):
            await js.publish("pulltest.event", f'{{"n": {n}}}'.encode())
        await _until(lambda: _handed_out(info, 3), message="the open request did not bring them")
        assert (await info()).num_waiting == 1  # the same request: no new one was sent
        rest = await asyncio.wait_for(pull.fetch(10, timeout=30), 5)
        assert [d.json()["n"] for d in rest] == [2, 3, 4]
        for delivery in rest:
            await delivery.ack()
        assert (await info()).num_waiting == 1

    _run(scenario)


def test_a_used_up_or_expired_request_is_asked_again():
    async def scenario(js, pull, info):
        # Nothing there: the request lingers for the timeout, expires, and the fetch is empty
        # (the server's "request timeout" status is not a delivery).
        assert await pull.fetch(5, timeout=0.3) == []
        await _until(lambda: _waiting(info, 0), message="the expired request is still waiting")

        for n in (1, 2, 3):
            await js.publish("pulltest.event", f'{{"n": {n}}}'.encode())
        # A request for 2 is used up by the first two messages; the third needs a new one.
        first = await asyncio.wait_for(pull.fetch(2, timeout=30), 5)
        while len(first) < 2:
            first += await asyncio.wait_for(pull.fetch(2 - len(first), timeout=30), 5)
        assert [d.json()["n"] for d in first] == [1, 2]
        (third,) = await asyncio.wait_for(pull.fetch(2, timeout=30), 5)
        assert third.json() == {"n": 3}
        for delivery in (*first, third):
            await delivery.ack()

    _run(scenario)


def test_a_fetch_ends_by_its_own_timeout_while_an_earlier_request_stays_open():
    async def scenario(js, pull, info):
        await js.publish("pulltest.event", b'{"n": 1}')
        (first,) = await asyncio.wait_for(pull.fetch(10, timeout=30), 5)  # its request lingers 30 s
        await first.ack()
        assert await asyncio.wait_for(pull.fetch(10, timeout=0.3), 3) == []
        assert (await info()).num_waiting == 1  # still open, for the fetches to come

    _run(scenario)


def test_messages_waiting_for_the_next_fetch_keep_their_deadlines_while_the_handler_is_busy(settings):
    settings.CONSUMER_ACK_WAIT_SECONDS = 1

    async def scenario(js, pull, info):
        await js.publish("pulltest.event", b'{"n": 1}')
        (first,) = await asyncio.wait_for(pull.fetch(10, timeout=10), 5)
        await first.in_progress()
        # "Handling" the first: meanwhile the second arrives on the open request and waits.
        await js.publish("pulltest.event", b'{"n": 2}')
        await _until(lambda: _handed_out(info, 2), message="the second never arrived")
        keeper = asyncio.create_task(_arrived_deadlines_keep(pull, interval=0.3))
        busy_until = asyncio.get_running_loop().time() + 3  # three ack waits
        while asyncio.get_running_loop().time() < busy_until:
            await first.in_progress()  # the handler keeps its own message, as the consumers do
            await asyncio.sleep(0.3)
        keeper.cancel()
        assert (await info()).num_redelivered == 0
        (second,) = await asyncio.wait_for(pull.fetch(10, timeout=10), 5)
        assert second.json() == {"n": 2} and second.num_delivered == 1
        await first.ack()
        await second.ack()

    _run(scenario)
