"""The Celery app and its beat schedule."""
import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "llmgateway.settings")

app = Celery("llmgateway")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

app.conf.beat_schedule = {
    # Claims due health targets and queues their probes; claiming is safe with several beats.
    "dispatch-health-probes": {
        "task": "healthcheck.tasks.dispatch_probes",
        "schedule": float(os.environ.get("HEALTH_DISPATCH_EVERY_S", "5")),
    },
    "purge-old-health-data": {
        "task": "healthcheck.tasks.purge_old_health_data",
        "schedule": float(os.environ.get("HEALTH_PURGE_EVERY_S", "3600")),
    },
    # Request-log and refused-traffic rows past their retention (routing/retention.py); the
    # admin's note says "every hour", so this is not a setting.
    "purge-expired-traffic": {
        "task": "routing.tasks.purge_expired_traffic",
        "schedule": 3600.0,
    },
    # Budget spend counted in Redis, copied to KeySpend rows (and rebuilt if Redis lost it).
    "persist-key-spend": {
        "task": "keys.tasks.persist_key_spend",
        "schedule": float(os.environ.get("GATEWAY_PERSIST_SPEND_EVERY_S", "60")),
    },
}
