"""The chaos driver's own calls ride out the faults it injects: a publish while NATS restarts is
tried again until a deadline (seed 11 of `chaos --faults all` once crashed the driver there)."""
from __future__ import annotations

import pytest

from infra import chaos
from infra.nats import NatsUnavailableError


def test_a_publish_during_a_nats_restart_is_tried_again_until_it_goes_through():
    calls = []

    def publish():
        calls.append(1)
        if len(calls) < 3:
            raise NatsUnavailableError("NATS connection is reconnecting")
        return ["published"]

    assert chaos._with_nats_retry(publish, deadline=5) == ["published"]
    assert len(calls) == 3


def test_a_nats_that_stays_away_past_the_deadline_fails_the_run():
    def publish():
        raise NatsUnavailableError("NATS connection is reconnecting")

    with pytest.raises(NatsUnavailableError):
        chaos._with_nats_retry(publish, deadline=0.3)
