"""One web server process of `manage.py serve`: Daphne on a listening socket it inherits.

    python -m llmgateway.webworker --fd N      (started by `manage.py serve`, one per core)

`serve` binds one socket per web process to the same port (SO_REUSEPORT), and the
kernel spreads connections over them. On SIGTERM or SIGINT a process stops accepting, lets
the requests in flight finish for up to GATEWAY_STOP_GRACE_S seconds, cancels what is
left, and exits; at exit the request log hands its queued rows to the writer.
Plain Daphne instead cancels every request at once on a signal.
"""
import argparse
import os
import signal
import socket
import time

import daphne.server  # noqa: F401  first: it installs Twisted's asyncio reactor


class DrainingServer(daphne.server.Server):
    """Daphne, plus a graceful stop: close the listener, wait for in-flight requests."""

    def __init__(self, *args, grace_s: float, **kwargs):
        super().__init__(*args, **kwargs)
        self.grace_s = grace_s
        self.ports = []
        self.drain_deadline = None

    def listen_success(self, port):
        self.ports.append(port)
        return super().listen_success(port)

    def begin_drain(self):
        from twisted.internet import reactor

        if self.drain_deadline is not None:  # Ctrl-C reaches us, and serve forwards SIGTERM too
            return
        self.drain_deadline = time.monotonic() + self.grace_s
        for port in self.ports:
            port.stopListening()
        reactor.callLater(0, self._stop_when_idle)

    def requests_in_flight(self) -> int:
        return sum(1 for details in list(self.connections.values())
                   if (instance := details.get("application_instance")) is not None and not instance.done())

    def _stop_when_idle(self):
        from twisted.internet import reactor

        if self.requests_in_flight() == 0 or time.monotonic() >= self.drain_deadline:
            self.stop()  # cancels whatever is still running (Daphne's shutdown trigger)
        else:
            reactor.callLater(0.1, self._stop_when_idle)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fd", type=int, required=True, help="the inherited listening socket")
    args = parser.parse_args(argv)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "llmgateway.settings")

    from django.conf import settings
    from twisted.internet import reactor

    from llmgateway.asgi import application

    with socket.socket(fileno=args.fd) as listening:  # only to read its family
        family = listening.family
        listening.detach()
    if family == socket.AF_INET6:
        # Daphne's "fd:" endpoint hands Twisted the address family as a string, which it
        # refuses: adopt an IPv6 socket directly.
        from twisted.internet.endpoints import AdoptedStreamServerEndpoint

        daphne.server.serverFromString = lambda reactor, description: AdoptedStreamServerEndpoint(
            reactor, args.fd, socket.AF_INET6)
    server = DrainingServer(
        application=application, endpoints=[f"fd:fileno={args.fd}"], signal_handlers=False,
        verbosity=0, grace_s=settings.GATEWAY_STOP_GRACE_S,
    )

    def on_signal(signum, frame):
        reactor.callFromThread(server.begin_drain)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server.run()
    return 1 if server.abort_start else 0


if __name__ == "__main__":
    raise SystemExit(main())
