"""Celery tasks of the routing app, run by beat."""
from celery import shared_task

from .retention import purge_expired_rows


@shared_task(ignore_result=True)
def purge_expired_traffic() -> dict:
    """Delete request-log and refused-traffic rows past their retention, in short batches (hourly)."""
    return purge_expired_rows()
