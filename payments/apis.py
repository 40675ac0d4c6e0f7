"""Payments HTTP API (read only)."""
from __future__ import annotations

from django.conf import settings
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    extend_schema_serializer,
    inline_serializer,
)
from rest_framework import serializers, status
from rest_framework.exceptions import NotFound
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.views import APIView

from a4co import clock
from a4co.api import IsStaff, MoneyField
from a4co.openapi import STAFF_ONLY, UNAUTHENTICATED, ErrorSerializer, not_found
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


@extend_schema_serializer(component_name="Payment")
class PaymentOutputSchema(PaymentOutputSerializer):
    """Schema only: what PaymentOutputSerializer returns (its empty strings become null)."""

    stripePaymentIntentId = serializers.CharField(allow_null=True, help_text="Stripe's PaymentIntent id (pi_...).")
    failureReason = serializers.CharField(allow_null=True)


class PaymentForOrderApi(APIView):
    """Staff only: the payment service does not know which API user owns an order (clients read
    the order's paymentId and status from /orders instead)."""

    permission_classes = [IsStaff]

    @extend_schema(
        operation_id="payments_for_order", summary="Get an order's payment (staff)", tags=["payments"],
        parameters=[OpenApiParameter("order_id", OpenApiTypes.STR, OpenApiParameter.PATH, description="Order id.")],
        responses={200: PaymentOutputSchema, 401: UNAUTHENTICATED, 403: STAFF_ONLY,
                   404: not_found("No payment for this order (not requested yet, or unknown order)")})
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

    @extend_schema(
        operation_id="payments_stripe_webhook", summary="Stripe webhook (signed by Stripe, no token)",
        tags=["payments"], request=OpenApiTypes.OBJECT,
        parameters=[OpenApiParameter("Stripe-Signature", OpenApiTypes.STR, OpenApiParameter.HEADER, required=True,
                                     description="t=<timestamp>,v1=<HMAC-SHA256 of \"<t>.<body>\">.")],
        description="payment_intent.succeeded / .payment_failed settle an open payment (e.g. after 3-D Secure) "
                    "from the PaymentIntent's state as Stripe reports it; other event types are recorded and "
                    "ignored. A redelivered event (same id) changes nothing.",
        responses={
            200: inline_serializer(name="StripeWebhookReceived", fields={
                "received": serializers.BooleanField(), "outcome": serializers.CharField(
                    help_text="What was done: payment SUCCEEDED / FAILED, duplicate, ignored, ...")}),
            400: OpenApiResponse(ErrorSerializer, description="Bad, stale or missing signature, or an unreadable "
                                                              "event (code bad_signature)."),
            503: OpenApiResponse(ErrorSerializer, description="STRIPE_WEBHOOK_SECRET unset (code not_configured) "
                                                              "or Stripe unreachable (code retry_later): Stripe "
                                                              "retries."),
        })
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
