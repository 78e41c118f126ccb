from django.apps import AppConfig


class HealthcheckConfig(AppConfig):
    name = "healthcheck"
    verbose_name = "Health monitoring"

    def ready(self):
        from django.db.models.signals import post_delete, post_save

        from .models import HealthTarget, MonitoringSettings
        from .status import bump_generation

        def changed(**kwargs):
            # What the status page shows changed: its cached cards are not served again.
            bump_generation()

        for model in (HealthTarget, MonitoringSettings):
            post_save.connect(changed, sender=model, weak=False, dispatch_uid=f"health-generation-{model.__name__}")
            post_delete.connect(changed, sender=model, weak=False, dispatch_uid=f"health-generation-del-{model.__name__}")
