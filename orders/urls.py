from django.urls import path

from orders.apis import OrderCancelApi, OrderDetailApi, OrdersApi

urlpatterns = [
    path("orders", OrdersApi.as_view(), name="orders"),
    path("orders/<str:order_id>", OrderDetailApi.as_view(), name="order"),
    path("orders/<str:order_id>/cancel", OrderCancelApi.as_view(), name="order-cancel"),
]
