#!/usr/bin/env bash
# One command for a fresh machine with Python 3.11+:
#   ./run.sh          set up (virtualenv, dependencies) and run the gateway (one web process
#                     per core, WEB_CONCURRENCY), the Celery worker and beat
#   ./run.sh test     set up and run the whole test suite
set -euo pipefail
cd "$(dirname "$0")"

VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}

if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
# Reinstall only when requirements.txt changed.
stamp="$VENV/.requirements.sha256"
want=$(sha256sum requirements.txt | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    "$VENV/bin/pip" install --quiet --disable-pip-version-check -r requirements.txt
    echo "$want" > "$stamp"
fi

case "${1:-serve}" in
    test)
        shift
        exec "$VENV/bin/python" -m pytest "$@"
        ;;
    serve)
        [ $# -gt 0 ] && shift
        exec "$VENV/bin/python" manage.py serve "$@"
        ;;
    *)
        exec "$VENV/bin/python" manage.py "$@"
        ;;
esac
