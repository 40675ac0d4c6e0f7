"""Payments HTTP API (read only)."""
from __future__ import annotations

from rest_framework import serializers
from rest_framework.exceptions import NotFound
from rest_framework.response import Response
from rest_framework.views import APIView

from a4co.api import MoneyField
from payments.selectors import payment_get_for_order


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
    def get(self, request, order_id: str):
        payment = payment_get_for_order(order_id=order_id)
        if payment is None:
            raise NotFound("No payment for this order.")
        return Response(PaymentOutputSerializer(payment).data)
