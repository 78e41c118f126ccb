"""Process probes for load balancers and orchestrators."""
from django.db import connection
from django.http import JsonResponse

from .redis import sync_client


def healthz(request):
    """The process is up and serving."""
    return JsonResponse({"status": "ok"})


def readyz(request):
    """200 only when the database and Redis both answer; 503 naming what failed otherwise."""
    failing = {}
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except Exception as exc:  # any driver error means not ready
        failing["database"] = type(exc).__name__
    try:
        sync_client().ping()
    except Exception as exc:
        failing["redis"] = type(exc).__name__
    if failing:
        return JsonResponse({"status": "unavailable", "failing": failing}, status=503)
    return JsonResponse({"status": "ok"})
