"""Celery tasks of the keys app, run by beat."""
from celery import shared_task

from .limits import persist_spend


@shared_task(ignore_result=True)
def persist_key_spend():
    """Copy budget spend from Redis into KeySpend rows and rebuild what Redis lost (every minute)."""
    return persist_spend()
