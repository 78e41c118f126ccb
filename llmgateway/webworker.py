"""One web server process of `manage.py serve`: Daphne on a listening socket it inherits.

    python -m llmgateway.webworker --fd N      (started by `manage.py serve`, one per core)

`serve` binds one socket per web process to the same port (SO_REUSEPORT) and the kernel
spreads connections over them. On SIGTERM or SIGINT the process first stops accepting
connections, then stops Daphne: the request log hands its queued rows to the writer, the
requests in flight get GATEWAY_STOP_GRACE_S to finish (llmgateway.apihandler), and at exit
the rows of those follow.
"""
import argparse
import os
import signal
import socket

import daphne.server  # first: it installs Twisted's asyncio reactor


class GatewayServer(daphne.server.Server):
    """Daphne that, asked to stop, closes its listening socket before anything else."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.ports = []
        self.stopping = False

    def listen_success(self, port):
        self.ports.append(port)
        return super().listen_success(port)

    def begin_stop(self):
        if self.stopping:  # Ctrl-C reaches us, and serve forwards SIGTERM too
            return
        self.stopping = True
        for port in self.ports:
            port.stopListening()
        self.stop()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fd", type=int, required=True, help="the inherited listening socket")
    args = parser.parse_args(argv)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "llmgateway.settings")

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
    server = GatewayServer(application=application, endpoints=[f"fd:fileno={args.fd}"],
                           signal_handlers=False, verbosity=0)

    def on_signal(signum, frame):
        reactor.callFromThread(server.begin_stop)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server.run()
    return 1 if server.abort_start else 0


if __name__ == "__main__":
    raise SystemExit(main())
