from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from a4co.health import healthz, readyz
from infra.metrics import metrics_view

api_v1 = [
    path("", include("orders.urls")),
    path("inventory/", include("inventory.urls")),
    path("payments/", include("payments.urls")),
    path("sagas/", include("saga.urls")),
]

urlpatterns = [
    path("api/v1/", include(api_v1)),
    # The OpenAPI 3 schema and Swagger UI on it: open, no authentication (SPECTACULAR_SETTINGS).
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="docs"),
    path("healthz", healthz, name="healthz"),
    path("readyz", readyz, name="readyz"),
    path("admin/", admin.site.urls),
    path("metrics", metrics_view, name="metrics"),
]
