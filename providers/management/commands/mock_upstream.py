"""Run the mock upstream (OpenAI, Anthropic, Responses, Gemini wire formats) in the foreground."""

from django.core.management.base import BaseCommand

from providers.mock_upstream import serve


class Command(BaseCommand):
    help = "Run the mock upstream speaking every provider's wire format (for benchmarks and manual trials)."
    # The mock needs neither the database nor the rest of the project to be healthy.
    requires_system_checks = []
    requires_migrations_checks = False

    def add_arguments(self, parser):
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8001)
        parser.add_argument("--key", action="append", dest="keys", default=None,
                            help="Accepted key, however it is sent (repeatable). Default: any key is accepted.")

    def handle(self, *args, host, port, keys, **options):
        self.stdout.write(f"Mock upstream on http://{host}:{port}/v1 (OpenAI, Anthropic, Responses) "
                          f"and http://{host}:{port}/v1beta (Gemini)")
        serve(host, port, keys=keys)
