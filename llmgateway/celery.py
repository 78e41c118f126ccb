"""The Celery app; the beat schedule lives in settings.CELERY_BEAT_SCHEDULE."""
import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "llmgateway.settings")

app = Celery("llmgateway")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
