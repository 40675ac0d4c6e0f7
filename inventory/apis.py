"""Inventory HTTP API: product stock and reservations."""
from __future__ import annotations

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    extend_schema_field,
    extend_schema_serializer,
)
from rest_framework import serializers, status
from rest_framework.exceptions import NotFound
from rest_framework.response import Response
from rest_framework.views import APIView

from a4co.api import IsStaff, ReadAnyWriteStaff, StrictIntegerField
from a4co.openapi import STAFF_ONLY, UNAUTHENTICATED, not_found, validation_error
from inventory.models import Reservation
from inventory.selectors import product_get, reservation_get, reservation_get_for_order
from inventory.services import product_stock_set

PRODUCT_ID = OpenApiParameter("product_id", OpenApiTypes.STR, OpenApiParameter.PATH,
                              description="Product id (up to 64 characters).")
ORDER_ID = OpenApiParameter("order_id", OpenApiTypes.STR, OpenApiParameter.PATH, description="Order id.")


class ReservationItemOutputSerializer(serializers.Serializer):
    """Schema only: one line of ReservationOutputSerializer.items."""

    productId = serializers.CharField()
    quantity = serializers.IntegerField()


class ProductOutputSerializer(serializers.Serializer):
    productId = serializers.CharField(source="product_id")
    name = serializers.CharField()
    availableQuantity = serializers.IntegerField(source="available_quantity")
    reservedQuantity = serializers.IntegerField(source="reserved_quantity")
    soldQuantity = serializers.IntegerField(source="sold_quantity")
    updatedAt = serializers.DateTimeField(source="updated_at")


class ProductApi(APIView):
    """GET any authenticated user; PUT (staff) sets the name and the available stock."""

    permission_classes = [ReadAnyWriteStaff]

    @extend_schema_serializer(component_name="ProductSet")
    class InputSerializer(serializers.Serializer):
        name = serializers.CharField(max_length=200)
        availableQuantity = StrictIntegerField(min_value=0, max_value=1_000_000_000)

    @extend_schema(operation_id="inventory_products_retrieve", summary="Get a product's stock", tags=["inventory"],
                   description="Any authenticated user.", parameters=[PRODUCT_ID],
                   responses={200: ProductOutputSerializer, 401: UNAUTHENTICATED, 404: not_found("Unknown product")})
    def get(self, request, product_id: str):
        product = product_get(product_id=product_id)
        if product is None:
            raise NotFound("Product not found.")
        return Response(ProductOutputSerializer(product).data)

    @extend_schema(
        operation_id="inventory_products_set", summary="Set a product's name and available stock (staff)",
        tags=["inventory"], parameters=[PRODUCT_ID], request=InputSerializer,
        description="Creates the product if needed. Reserved and sold units are left alone; the stocked total "
                    "moves by the same difference as the available quantity.",
        responses={
            200: OpenApiResponse(ProductOutputSerializer, description="Updated."),
            201: OpenApiResponse(ProductOutputSerializer, description="Created."),
            400: validation_error("ProductSetValidationError", ["name", "availableQuantity", "productId"]),
            401: UNAUTHENTICATED, 403: STAFF_ONLY,
        })
    def put(self, request, product_id: str):
        if not 0 < len(product_id) <= 64:
            raise serializers.ValidationError({"productId": ["At most 64 characters."]})
        payload = self.InputSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        product, created = product_stock_set(product_id=product_id, name=payload.validated_data["name"],
                                             available_quantity=payload.validated_data["availableQuantity"])
        return Response(ProductOutputSerializer(product).data,
                        status=status.HTTP_201_CREATED if created else status.HTTP_200_OK)


class ReservationOutputSerializer(serializers.Serializer):
    reservationId = serializers.UUIDField(source="id")
    orderId = serializers.CharField(source="order_id")
    status = serializers.CharField()
    items = serializers.SerializerMethodField()
    expiresAt = serializers.DateTimeField(source="expires_at")
    releaseReason = serializers.CharField(source="release_reason")
    createdAt = serializers.DateTimeField(source="created_at")
    updatedAt = serializers.DateTimeField(source="updated_at")

    @extend_schema_field(ReservationItemOutputSerializer(many=True))
    def get_items(self, reservation: Reservation) -> list[dict]:
        return [{"productId": i.product_id, "quantity": i.quantity} for i in reservation.items.all()]


class ReservationDetailApi(APIView):
    """Staff only (the inventory service does not know who owns an order)."""

    permission_classes = [IsStaff]

    @extend_schema(
        operation_id="inventory_reservations_retrieve", summary="Get a reservation (staff)", tags=["inventory"],
        parameters=[OpenApiParameter("reservation_id", OpenApiTypes.STR, OpenApiParameter.PATH,
                                     description="Reservation id.")],
        responses={200: ReservationOutputSerializer, 401: UNAUTHENTICATED, 403: STAFF_ONLY,
                   404: not_found("Unknown or malformed reservation id")})
    def get(self, request, reservation_id: str):
        reservation = reservation_get(reservation_id=reservation_id)
        if reservation is None:
            raise NotFound("Reservation not found.")
        return Response(ReservationOutputSerializer(reservation).data)


class ReservationForOrderApi(APIView):
    """Staff only (the inventory service does not know who owns an order)."""

    permission_classes = [IsStaff]

    @extend_schema(
        operation_id="inventory_reservations_for_order", summary="Get an order's reservation (staff)",
        tags=["inventory"], parameters=[ORDER_ID],
        responses={200: ReservationOutputSerializer, 401: UNAUTHENTICATED, 403: STAFF_ONLY,
                   404: not_found("No reservation for this order (yet, or it was out of stock)")})
    def get(self, request, order_id: str):
        reservation = reservation_get_for_order(order_id=order_id)
        if reservation is None:
            raise NotFound("No reservation for this order.")
        return Response(ReservationOutputSerializer(reservation).data)
