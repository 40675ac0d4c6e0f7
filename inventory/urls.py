from django.urls import path

from inventory.apis import ProductApi, ReservationDetailApi, ReservationForOrderApi

urlpatterns = [
    path("products/<str:product_id>", ProductApi.as_view(), name="product"),
    path("reservations/order/<str:order_id>", ReservationForOrderApi.as_view(), name="reservation-for-order"),
    path("reservations/<str:reservation_id>", ReservationDetailApi.as_view(), name="reservation"),
]
