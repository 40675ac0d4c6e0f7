from django.urls import path

from payments.apis import PaymentForOrderApi, StripeWebhookApi

urlpatterns = [
    path("order/<str:order_id>", PaymentForOrderApi.as_view(), name="payment-for-order"),
    path("stripe/webhook", StripeWebhookApi.as_view(), name="stripe-webhook"),
]
