"""Process probes for load balancers and orchestrators."""
from asgiref.sync import sync_to_async
from django.db import connection
from django.http import JsonResponse

from . import runtime


async def healthz(request):
    """The process is up and serving."""
    return JsonResponse({"status": "ok"})


def _database_answers() -> None:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    finally:
        connection.close()


async def readyz(request):
    """200 only when this process can serve: the database and Redis answer, it has its
    configuration snapshot, and no provider is unusable (e.g. keys that ENCRYPTION_KEYS
    cannot decrypt). 503 naming what failed otherwise."""
    failing = {}
    try:
        await sync_to_async(_database_answers, thread_sensitive=False)()
    except Exception as exc:  # any driver error means not ready
        failing["database"] = type(exc).__name__
    current = runtime.current()
    try:
        await current.redis.ping()
    except Exception as exc:
        failing["redis"] = type(exc).__name__
    try:
        snapshot = await current.snapshot()
    except Exception as exc:
        failing["snapshot"] = f"the configuration could not be loaded ({type(exc).__name__})"
    else:
        if snapshot.unusable_providers:
            failing["providers"] = (f"{len(snapshot.unusable_providers)} provider(s) unusable: their keys cannot be "
                                    "decrypted with ENCRYPTION_KEYS (see the server log and the admin)")
    if failing:
        return JsonResponse({"status": "unavailable", "failing": failing}, status=503)
    return JsonResponse({"status": "ok"})
