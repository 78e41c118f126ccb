import os

# Processes that send no Celery tasks skip the Celery app and the ten-odd megabytes that
# come with it: the supervisor of `serve`, its web processes and their request-log writers
# (see llmgateway/supervise.py). Everything else, the Celery worker and beat included
# (`-A llmgateway` imports llmgateway.celery itself), gets the app as before.
if os.environ.get("GATEWAY_LEAN_PROCESS") != "1":
    from .celery import app as celery_app

    __all__ = ["celery_app"]
