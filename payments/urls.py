from django.urls import path

from payments.apis import PaymentForOrderApi

urlpatterns = [
    path("order/<str:order_id>", PaymentForOrderApi.as_view(), name="payment-for-order"),
]
