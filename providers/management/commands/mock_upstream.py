"""Run the mock OpenAI-compatible upstream server in the foreground."""

from django.core.management.base import BaseCommand

from providers.mock_upstream import serve


class Command(BaseCommand):
    help = "Run the mock OpenAI-compatible upstream (for benchmarks and manual trials)."
    # The mock needs neither the database nor the rest of the project to be healthy.
    requires_system_checks = []
    requires_migrations_checks = False

    def add_arguments(self, parser):
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8001)
        parser.add_argument("--key", action="append", dest="keys", default=None,
                            help="Accepted bearer token (repeatable). Default: any token is accepted.")

    def handle(self, *args, host, port, keys, **options):
        self.stdout.write(f"Mock upstream on http://{host}:{port}/v1")
        serve(host, port, keys=keys)
