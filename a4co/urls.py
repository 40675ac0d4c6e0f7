from django.contrib import admin
from django.urls import include, path

from a4co.health import healthz, readyz

api_v1 = [
    path("", include("orders.urls")),
    path("inventory/", include("inventory.urls")),
    path("payments/", include("payments.urls")),
    path("sagas/", include("saga.urls")),
]

urlpatterns = [
    path("api/v1/", include(api_v1)),
    path("healthz", healthz, name="healthz"),
    path("readyz", readyz, name="readyz"),
    path("admin/", admin.site.urls),
    path("", include("django_prometheus.urls")),
]
