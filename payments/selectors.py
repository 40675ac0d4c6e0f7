"""Payment reads."""
from __future__ import annotations

from payments.models import Payment


def payment_get_for_order(*, order_id: str) -> Payment | None:
    return Payment.objects.using("payments").filter(order_id=order_id).first()
