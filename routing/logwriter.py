"""The request-log writer process: one per gateway process, started by routing.requestlog.

It reads batches of LogEntry from its gateway on stdin and writes them as RequestLog rows.
When the database is locked or unreachable it keeps the rows and retries; when it holds
more than GATEWAY_LOG_QUEUE_MAX rows it stops reading, so that the pipe fills and the
gateway's own bounded queue takes over. It ignores SIGINT and SIGTERM and exits once its
input ends (the gateway stopped, gracefully or not) and everything is written, or after
giving the database GIVE_UP_AFTER_S more to come back.

    python -m routing.logwriter --database-name NAME    (not meant to be run by hand)
"""
import argparse
import json
import logging
import os
import select
import signal
import sys
import time
import warnings
from collections import deque

GIVE_UP_AFTER_S = 120
LEAN_PROCESS_ENV = "GATEWAY_LEAN_PROCESS"
WRITER_SETTINGS_ENV = "GATEWAY_LOG_WRITER_SETTINGS"  # routing.requestlog.WRITER_SETTINGS_ENV

log = logging.getLogger("routing.logwriter")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-name", help="the database the gateway process uses (its test database, say)")
    parser.add_argument("--ack", action="store_true",
                        help="report on stdout how many rows are written, so the gateway can forget them")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "llmgateway.settings")
    os.environ[LEAN_PROCESS_ENV] = "1"  # llmgateway/__init__.py: no Celery app in this process
    # No django.setup(): the writer needs the settings and the database layer, not the app
    # registry, the admin, Channels, Daphne and everything their imports bring (about 40 MB
    # of a web process that a writer per web process would pay for again; docs/performance.md).
    # Rows are written with plain SQL (routing/logrows.py).
    warnings.filterwarnings("ignore", message="Accessing the database during app initialization")
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    from django.conf import settings
    from django.db import connections

    handed_down = os.environ.pop(WRITER_SETTINGS_ENV, None)  # by routing.requestlog: see writer_settings
    if handed_down:
        configured = json.loads(handed_down)
        configured["DATABASES"]["default"].pop("TEST", None)
        settings.configure(**configured)
    if args.database_name:
        connections["default"].settings_dict["NAME"] = args.database_name
    return Writer(sys.stdin.buffer.raw, settings.GATEWAY_LOG_QUEUE_MAX,
                  acks=os.fdopen(sys.stdout.fileno(), "wb", buffering=0) if args.ack else None).run()


class Writer:
    def __init__(self, source, max_pending: int, acks=None):
        self.source = source
        self.acks = acks
        self.max_pending = max_pending
        self.pending: deque = deque()
        self.lost = 0

    def run(self) -> int:
        from .logentries import read_batch

        open_until = None  # once the input has ended: when to give up on the database
        backoff = 0.0
        while True:
            if open_until is None and len(self.pending) < self.max_pending:
                if self._readable(backoff if self.pending else None):
                    try:
                        batch = read_batch(self.source)
                    except EOFError:  # the gateway died in the middle of handing a batch over
                        log.error("request log writer: the last batch arrived cut short; its rows are lost")
                        batch = None
                    if batch is None:
                        open_until = time.monotonic() + GIVE_UP_AFTER_S
                    else:
                        self.pending.extend(batch)
            elif backoff:
                time.sleep(backoff)
            if self.pending:
                backoff = 0.0 if self._write_pending() else min(max(backoff * 2, 0.25), 5.0)
            if open_until is not None and (not self.pending or time.monotonic() > open_until):
                break
        if self.pending:
            log.error("request log writer: database still unavailable; %d rows lost", len(self.pending))
            return 1
        return 1 if self.lost else 0

    def _readable(self, timeout: float | None) -> bool:
        ready, _, _ = select.select([self.source], [], [], timeout)
        return bool(ready)

    def _write_pending(self) -> bool:
        """Write what is pending; False if the database is unavailable (the rows are kept)."""
        from django.db import InterfaceError, OperationalError, connections

        from .logentries import BATCH_SIZE
        from .logrows import write_rows

        while self.pending:
            batch = [self.pending[i] for i in range(min(BATCH_SIZE, len(self.pending)))]
            try:
                write_rows(batch)
            except (OperationalError, InterfaceError) as exc:  # locked, gone, restarting: try again later
                log.warning("request log write failed (%s); %d rows kept", type(exc).__name__, len(self.pending))
                connections.close_all()
                return False
            except Exception:  # something in these rows: write them one by one, store the bad plainly
                if not self._write_one_by_one(batch):
                    connections.close_all()
                    return False
            for _ in batch:
                self.pending.popleft()
            self._ack(len(batch))
        return True

    def _ack(self, count: int) -> None:
        if self.acks is not None:
            from .logentries import _FRAME_HEADER

            try:
                self.acks.write(_FRAME_HEADER.pack(count))
            except OSError:  # the gateway is gone; it will not resend anything
                self.acks = None

    def _write_one_by_one(self, batch) -> bool:
        """Rows are unique by request id, so writing some of them again is harmless."""
        from django.db import InterfaceError, OperationalError

        from .logrows import write_minimal_row, write_rows

        for entry in batch:
            try:
                write_rows([entry])
            except (OperationalError, InterfaceError):
                return False
            except Exception:
                log.exception("request log row %s could not be written in full; storing it without details",
                              entry.request_id)
                try:
                    write_minimal_row(entry)
                except (OperationalError, InterfaceError):
                    return False
                except Exception:
                    self.lost += 1
                    log.exception("request log row %s could not be written; skipped", entry.request_id)
        return True


if __name__ == "__main__":
    sys.exit(main())
