"""Inventory HTTP API: product stock and reservations."""
from __future__ import annotations

from rest_framework import serializers, status
from rest_framework.exceptions import NotFound
from rest_framework.response import Response
from rest_framework.views import APIView

from a4co.api import IsStaff, ReadAnyWriteStaff, StrictIntegerField
from inventory.models import Reservation
from inventory.selectors import product_get, reservation_get, reservation_get_for_order
from inventory.services import product_stock_set


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

    class InputSerializer(serializers.Serializer):
        name = serializers.CharField(max_length=200)
        availableQuantity = StrictIntegerField(min_value=0, max_value=1_000_000_000)

    def get(self, request, product_id: str):
        product = product_get(product_id=product_id)
        if product is None:
            raise NotFound("Product not found.")
        return Response(ProductOutputSerializer(product).data)

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

    def get_items(self, reservation: Reservation) -> list[dict]:
        return [{"productId": i.product_id, "quantity": i.quantity} for i in reservation.items.all()]


class ReservationDetailApi(APIView):
    """Staff only (the inventory service does not know who owns an order)."""

    permission_classes = [IsStaff]

    def get(self, request, reservation_id: str):
        reservation = reservation_get(reservation_id=reservation_id)
        if reservation is None:
            raise NotFound("Reservation not found.")
        return Response(ReservationOutputSerializer(reservation).data)


class ReservationForOrderApi(APIView):
    """Staff only (the inventory service does not know who owns an order)."""

    permission_classes = [IsStaff]

    def get(self, request, order_id: str):
        reservation = reservation_get_for_order(order_id=order_id)
        if reservation is None:
            raise NotFound("No reservation for this order.")
        return Response(ReservationOutputSerializer(reservation).data)
