from django.urls import path

from saga.apis import SagaDetailApi

urlpatterns = [
    path("<str:order_id>", SagaDetailApi.as_view(), name="saga"),
]
