"""Saga reads."""
from __future__ import annotations

import uuid

from saga.models import SagaInstance


def saga_get_for_order(*, order_id: str) -> SagaInstance | None:
    try:
        uuid.UUID(str(order_id))
    except ValueError:
        return None
    return (SagaInstance.objects.using("orders").prefetch_related("steps")
            .filter(order_id=order_id).first())
