"""Orders HTTP API (thin: validate, call one service or selector, format)."""
from __future__ import annotations

import datetime as dt
from decimal import Decimal

from django.conf import settings
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    extend_schema_field,
    extend_schema_serializer,
    inline_serializer,
)
from rest_framework import serializers, status
from rest_framework.exceptions import NotFound
from rest_framework.response import Response
from rest_framework.views import APIView

from a4co.api import ApiPagination, MoneyField, OrderCreateThrottle, StrictIntegerField, input_validate
from a4co.money import SUPPORTED_CURRENCIES, currency_exponent
from a4co.openapi import UNAUTHENTICATED, ErrorSerializer, conflict, not_found, validation_error
from orders.models import Order
from orders.selectors import order_get, order_list
from orders.services import OrderLine, order_cancel, order_place

IDENTIFIER = r"^[A-Za-z0-9][A-Za-z0-9_.:\-]*$"


class OrderItemOutputSerializer(serializers.Serializer):
    """Schema only: one line of OrderOutputSerializer.items."""

    productId = serializers.CharField()
    quantity = serializers.IntegerField()
    unitPrice = serializers.CharField(help_text="Decimal string, 2 decimals.")
    lineTotal = serializers.CharField(help_text="unitPrice x quantity, decimal string.")


class OrderOutputSerializer(serializers.Serializer):
    orderId = serializers.UUIDField(source="id")
    customerId = serializers.CharField(source="customer_id")
    items = serializers.SerializerMethodField()
    totalAmount = MoneyField(source="total_amount")
    currency = serializers.CharField()
    status = serializers.CharField()
    paymentMethod = serializers.CharField(source="payment_method")
    reservationTtlSeconds = serializers.IntegerField(source="reservation_ttl_seconds")
    cancellationReason = serializers.CharField(source="cancellation_reason", allow_null=True)
    failureReason = serializers.CharField(source="failure_reason", allow_null=True)
    paymentId = serializers.CharField(source="payment_id", allow_null=True)
    reservationId = serializers.CharField(source="reservation_id", allow_null=True)
    createdAt = serializers.DateTimeField(source="created_at")
    updatedAt = serializers.DateTimeField(source="updated_at")

    @extend_schema_field(OrderItemOutputSerializer(many=True))
    def get_items(self, order: Order) -> list[dict]:
        # context["items"]: the lines of an order just placed, so the answer needs no re-read.
        items = self.context.get("items")
        return [_item_representation(item) for item in (order.items.all() if items is None else items)]

    def to_representation(self, instance):
        data = super().to_representation(instance)
        for key in ("cancellationReason", "failureReason", "paymentId", "reservationId"):
            data[key] = data[key] or None  # "" in the database reads as "not set"
        return data


def _item_representation(item) -> dict:
    return {"productId": item.product_id, "quantity": item.quantity,
            "unitPrice": f"{item.unit_price:.2f}", "lineTotal": f"{item.line_total:.2f}"}


def order_representation(order: Order, items=None) -> dict:
    """What OrderOutputSerializer(order).data is, built directly (the POST hot path: DRF copied
    and bound fourteen fields per response). `items`: the order's lines when the caller has them.
    tests/orders/test_api_representation.py keeps the two identical."""
    created, updated = order.created_at.astimezone(dt.UTC), order.updated_at.astimezone(dt.UTC)
    return {
        "orderId": str(order.id),
        "customerId": order.customer_id,
        "items": [_item_representation(item) for item in (order.items.all() if items is None else items)],
        "totalAmount": f"{order.total_amount:.2f}",
        "currency": order.currency,
        "status": order.status,
        "paymentMethod": order.payment_method,
        "reservationTtlSeconds": order.reservation_ttl_seconds,
        "cancellationReason": order.cancellation_reason or None,
        "failureReason": order.failure_reason or None,
        "paymentId": order.payment_id or None,
        "reservationId": order.reservation_id or None,
        "createdAt": created.isoformat().replace("+00:00", "Z"),
        "updatedAt": updated.isoformat().replace("+00:00", "Z"),
    }


def _owner_scope(request) -> int | None:
    """Staff see every order; everybody else only the orders they placed."""
    return None if request.user.is_staff else request.user.id


class OrdersApi(APIView):
    """POST /api/v1/orders places an order; GET lists orders (filters: status, customerId)."""

    @extend_schema_serializer(component_name="OrderItem")
    class ItemInputSerializer(serializers.Serializer):
        productId = serializers.RegexField(IDENTIFIER, max_length=64)
        quantity = StrictIntegerField(min_value=1, max_value=settings.ORDER_MAX_QUANTITY)
        unitPrice = MoneyField(max_value=settings.ORDER_MAX_UNIT_PRICE)

    class CreateInputSerializer(serializers.Serializer):
        customerId = serializers.CharField(max_length=64, trim_whitespace=True)
        items = serializers.ListField(min_length=1, max_length=settings.ORDER_MAX_ITEMS)
        paymentMethod = serializers.RegexField(r"^[A-Za-z0-9_]+$", max_length=100, default="pm_card_visa")
        currency = serializers.CharField(default="EUR", max_length=3)
        totalAmount = MoneyField(required=False)
        reservationTtlSeconds = StrictIntegerField(
            required=False, min_value=settings.PAYMENT_TIMEOUT_SECONDS + 1,
            max_value=settings.RESERVATION_TTL_MAX_SECONDS,
            error_messages={"min_value": "Must be longer than the payment timeout "
                                         f"({settings.PAYMENT_TIMEOUT_SECONDS}s)."})

        def validate_items(self, items):
            validated, errors = [], {}
            for index, raw in enumerate(items):
                try:
                    validated.append(input_validate(OrdersApi.ItemInputSerializer, raw))
                except serializers.ValidationError as exc:
                    errors[index] = exc.detail
            if errors:
                raise serializers.ValidationError(errors)
            return validated

        def validate_currency(self, value: str) -> str:
            value = value.upper()
            if value not in SUPPORTED_CURRENCIES:
                raise serializers.ValidationError(
                    f"Unsupported currency; use one of {', '.join(sorted(SUPPORTED_CURRENCIES))}.")
            return value

        def validate(self, data):
            exponent = currency_exponent(data["currency"])
            for index, item in enumerate(data["items"]):
                if item["unitPrice"] != item["unitPrice"].quantize(Decimal(1).scaleb(-exponent)):
                    raise serializers.ValidationError(
                        {"items": {index: {"unitPrice": [f"{data['currency']} allows {exponent} decimals."]}}})
            total = sum(item["unitPrice"] * item["quantity"] for item in data["items"])
            if "totalAmount" in data and data["totalAmount"] != total:
                raise serializers.ValidationError(
                    {"totalAmount": [f"Does not match the items: they add up to {total:.2f}."]})
            return data

    class ListFilterSerializer(serializers.Serializer):
        status = serializers.ChoiceField(choices=Order.Status.values, required=False)
        customerId = serializers.CharField(max_length=64, required=False)

    # Schema only: the create body with its lines described (validate_items checks them one by one).
    CreateRequestSchema = inline_serializer(name="OrderCreate", fields={
        **CreateInputSerializer._declared_fields,
        "items": ItemInputSerializer(many=True, min_length=1, max_length=settings.ORDER_MAX_ITEMS)})

    def get_throttles(self):
        # Only placing orders is rate-limited (ORDER_CREATE_THROTTLE_RATE per API user): 429 past it.
        return [OrderCreateThrottle()] if self.request.method == "POST" else super().get_throttles()

    @extend_schema(
        operation_id="orders_create", summary="Place an order (starts its saga)", tags=["orders"],
        description="The order is accepted as PENDING and its saga runs asynchronously: poll the order (or the "
                    "saga) until it is CONFIRMED, CANCELLED or FAILED. With an Idempotency-Key, repeating the same "
                    "request returns the first order (200, `Idempotent-Replayed: true`).",
        request=CreateRequestSchema,
        parameters=[OpenApiParameter("Idempotency-Key", OpenApiTypes.STR, OpenApiParameter.HEADER,
                                     description="Up to 255 characters; the same key with another body is a 409.")],
        responses={
            201: OpenApiResponse(OrderOutputSerializer, description="Accepted, PENDING; `Location` header."),
            200: OpenApiResponse(OrderOutputSerializer, description="Idempotent replay: the first order."),
            400: validation_error("OrderCreateValidationError", [
                "customerId", "items", "paymentMethod", "currency", "totalAmount", "reservationTtlSeconds",
                "Idempotency-Key"], nested=("items",)),
            401: UNAUTHENTICATED,
            409: conflict("Idempotency-Key already used with a different request (code idempotency_key_reused)."),
            429: OpenApiResponse(ErrorSerializer, description="Too many orders placed by this API user "
                                                              "(ORDER_CREATE_THROTTLE_RATE; code throttled); "
                                                              "`Retry-After` says when to try again."),
        })
    def post(self, request):
        data = input_validate(self.CreateInputSerializer, request.data)
        key = request.headers.get("Idempotency-Key") or None
        if key is not None and not (0 < len(key) <= 255):
            raise serializers.ValidationError({"Idempotency-Key": ["At most 255 characters."]})
        result = order_place(
            owner_id=request.user.id, customer_id=data["customerId"],
            lines=[OrderLine(product_id=i["productId"], quantity=i["quantity"], unit_price=i["unitPrice"])
                   for i in data["items"]],
            currency=data["currency"], payment_method=data["paymentMethod"],
            reservation_ttl_seconds=data.get("reservationTtlSeconds"), idempotency_key=key)
        # A new order is answered from what was just written; a replay reads the stored one.
        order = result.order if result.created else order_get(order_id=str(result.order.id))
        headers = {"Location": request.build_absolute_uri(f"/api/v1/orders/{order.id}")}
        if not result.created:
            headers["Idempotent-Replayed"] = "true"
        return Response(order_representation(order, result.items),
                        status=status.HTTP_201_CREATED if result.created else status.HTTP_200_OK,
                        headers=headers)

    @extend_schema(
        operation_id="orders_list", summary="List orders", tags=["orders"],
        description="Newest first. Staff see every order; other users only the orders they placed.",
        parameters=[ListFilterSerializer,
                    OpenApiParameter("limit", OpenApiTypes.INT, description=f"Page size (default "
                                     f"{settings.API_PAGE_SIZE_DEFAULT}, at most {settings.API_PAGE_SIZE_MAX})."),
                    OpenApiParameter("offset", OpenApiTypes.INT, description="Rows to skip.")],
        responses={
            200: inline_serializer(name="OrderPage", fields={
                "count": serializers.IntegerField(), "next": serializers.URLField(allow_null=True),
                "previous": serializers.URLField(allow_null=True), "results": OrderOutputSerializer(many=True)}),
            400: validation_error("OrderListValidationError", ["status", "customerId"]),
            401: UNAUTHENTICATED,
        })
    def get(self, request):
        filters = self.ListFilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        orders = order_list(owner_id=_owner_scope(request), status=filters.validated_data.get("status"),
                            customer_id=filters.validated_data.get("customerId"))
        paginator = ApiPagination()
        page = paginator.paginate_queryset(orders, request, view=self)
        return paginator.get_paginated_response(OrderOutputSerializer(page, many=True).data)


class OrderDetailApi(APIView):
    """GET /api/v1/orders/{orderId}: 404 for unknown, malformed or somebody else's ids."""

    @extend_schema(
        operation_id="orders_retrieve", summary="Get an order", tags=["orders"],
        parameters=[OpenApiParameter("order_id", OpenApiTypes.STR, OpenApiParameter.PATH, description="Order id.")],
        responses={200: OrderOutputSerializer, 401: UNAUTHENTICATED,
                   404: not_found("Unknown or malformed id, or another user's order")})
    def get(self, request, order_id: str):
        order = order_get(order_id=order_id, owner_id=_owner_scope(request))
        if order is None:
            raise NotFound("Order not found.")
        return Response(OrderOutputSerializer(order).data)


class OrderCancelApi(APIView):
    """POST /api/v1/orders/{orderId}/cancel: 202 compensating, 200 already ended, 409 confirmed."""

    @extend_schema_serializer(component_name="OrderCancel")
    class InputSerializer(serializers.Serializer):
        reason = serializers.CharField(max_length=300, required=False, default="cancelled by the client",
                                       allow_blank=True)

    @extend_schema(
        operation_id="orders_cancel", summary="Cancel an order", tags=["orders"],
        description="A PENDING order is compensated (payment settled, stock released) asynchronously: 202 with the "
                    "order still PENDING. An order that already ended as CANCELLED or FAILED is returned as is (200).",
        parameters=[OpenApiParameter("order_id", OpenApiTypes.STR, OpenApiParameter.PATH, description="Order id.")],
        request=InputSerializer,
        responses={
            202: OpenApiResponse(OrderOutputSerializer, description="Compensation started or under way."),
            200: OpenApiResponse(OrderOutputSerializer, description="Already CANCELLED or FAILED: unchanged."),
            400: validation_error("OrderCancelValidationError", ["reason"]),
            401: UNAUTHENTICATED,
            404: not_found("Unknown or malformed id, or another user's order"),
            409: conflict("The order is CONFIRMED and cannot be cancelled (code order_confirmed)."),
        })
    def post(self, request, order_id: str):
        if order_get(order_id=order_id, owner_id=_owner_scope(request)) is None:
            raise NotFound("Order not found.")
        payload = self.InputSerializer(data=request.data or {})
        payload.is_valid(raise_exception=True)
        result = order_cancel(order_id=order_id, reason=payload.validated_data["reason"] or "cancelled by the client",
                              owner_id=_owner_scope(request))
        order = order_get(order_id=order_id)
        return Response(OrderOutputSerializer(order).data,
                        status=status.HTTP_202_ACCEPTED if result.accepted else status.HTTP_200_OK)
