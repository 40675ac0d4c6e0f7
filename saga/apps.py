from django.apps import AppConfig


class SagaConfig(AppConfig):
    name = "saga"
    verbose_name = "Order saga (Order Service)"

    def ready(self) -> None:
        from saga import checks  # noqa: F401  (registers the timeout configuration check)
