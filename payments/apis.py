"""Payments HTTP API (read only)."""
from __future__ import annotations

from django.conf import settings
from rest_framework import serializers, status
from rest_framework.exceptions import NotFound
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.views import APIView

from a4co import clock
from a4co.api import IsStaff, MoneyField
from payments import stripe_gateway as gateway
from payments.selectors import payment_get_for_order
from payments.services import payment_webhook_apply


class PaymentOutputSerializer(serializers.Serializer):
    paymentId = serializers.UUIDField(source="id")
    orderId = serializers.CharField(source="order_id")
    status = serializers.CharField()
    amount = MoneyField()
    currency = serializers.CharField()
    stripePaymentIntentId = serializers.CharField(source="stripe_payment_intent_id")
    failureReason = serializers.CharField(source="failure_reason")
    refundedAmount = MoneyField(source="refunded_amount")
    createdAt = serializers.DateTimeField(source="created_at")
    updatedAt = serializers.DateTimeField(source="updated_at")

    def to_representation(self, instance):
        data = super().to_representation(instance)
        for key in ("stripePaymentIntentId", "failureReason"):
            data[key] = data[key] or None
        return data


class PaymentForOrderApi(APIView):
    """Staff only: the payment service does not know which API user owns an order (clients read
    the order's paymentId and status from /orders instead)."""

    permission_classes = [IsStaff]

    def get(self, request, order_id: str):
        payment = payment_get_for_order(order_id=order_id)
        if payment is None:
            raise NotFound("No payment for this order.")
        return Response(PaymentOutputSerializer(payment).data)


class StripeWebhookApi(APIView):
    """POST /api/v1/payments/stripe/webhook: Stripe's signed events (no token; the signature is the auth).

    400 for a bad or stale signature, 503 while STRIPE_WEBHOOK_SECRET is unset or Stripe cannot
    be reached (Stripe retries), 200 otherwise (duplicates and ignored types included).
    """

    authentication_classes: list = []
    permission_classes = [AllowAny]

    def post(self, request):
        if not settings.STRIPE_WEBHOOK_SECRET:
            return Response({"detail": "Webhook endpoint not configured (STRIPE_WEBHOOK_SECRET).",
                             "code": "not_configured"}, status=status.HTTP_503_SERVICE_UNAVAILABLE)
        try:
            event = gateway.webhook_event_verify(
                payload=request.body, signature_header=request.headers.get("Stripe-Signature", ""),
                secret=settings.STRIPE_WEBHOOK_SECRET, tolerance_seconds=settings.STRIPE_WEBHOOK_TOLERANCE_SECONDS,
                now_timestamp=clock.now().timestamp())
        except gateway.WebhookSignatureError as exc:
            return Response({"detail": str(exc), "code": "bad_signature"}, status=status.HTTP_400_BAD_REQUEST)
        try:
            outcome = payment_webhook_apply(event=event)
        except gateway.GatewayUnavailableError as exc:
            return Response({"detail": f"Stripe unreachable: {exc}", "code": "retry_later"},
                            status=status.HTTP_503_SERVICE_UNAVAILABLE)
        return Response({"received": True, "outcome": outcome})
