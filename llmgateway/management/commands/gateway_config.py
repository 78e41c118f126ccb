"""`gateway_config apply FILE` and `gateway_config export [FILE]`: the configuration as YAML."""
import os
import sys

from django.core.management.base import BaseCommand, CommandError

from llmgateway.config import ConfigError, apply_config, export_yaml, load_config


class Command(BaseCommand):
    help = "Apply the gateway configuration from a YAML file, or export it (see docs/configuration.md)."

    def add_arguments(self, parser):
        actions = parser.add_subparsers(dest="action", required=True)
        apply = actions.add_parser("apply", help="Make the configuration match FILE.")
        apply.add_argument("file", help="YAML file, or - for standard input")
        apply.add_argument("--dry-run", action="store_true", help="Show what would change, change nothing.")
        export = actions.add_parser("export", help="Write the configuration as YAML.")
        export.add_argument("file", nargs="?", help="Where to write; standard output when omitted")
        export.add_argument("--include-secrets", action="store_true",
                            help="Write provider keys in plaintext instead of ${VARIABLE} placeholders.")

    def handle(self, *args, action, file, **options):
        if action == "apply":
            self.apply(file, options["dry_run"])
        else:
            self.export(file, options["include_secrets"])

    def apply(self, path, dry_run):
        text = self._read(path)
        try:
            summary = apply_config(load_config(text), dry_run=dry_run)
        except ConfigError as exc:
            for message in exc.messages:
                self.stderr.write(message)
            raise CommandError(f"{len(exc.messages)} error(s) in {path}; nothing was changed.") from None
        for line in summary.changes or ["no changes"]:
            self.stdout.write(line)
        if dry_run:
            self.stdout.write("dry run: nothing was changed")
        elif summary.new_keys:
            self.stdout.write("New virtual keys, shown only this once:")
            for name, secret in summary.new_keys.items():
                self.stdout.write(f"created virtual key {name!r}: {secret}")

    def export(self, path, include_secrets):
        text = export_yaml(include_secrets=include_secrets)
        if path is None:
            self.stdout.write(text, ending="")
            return
        # A file with secrets is readable by its owner only (when we create it).
        mode = 0o600 if include_secrets else 0o666
        with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode), "w", encoding="utf-8") as fh:
            fh.write(text)
        self.stdout.write(f"exported to {path}")

    def _read(self, path) -> str:
        if path == "-":
            return sys.stdin.read()
        try:
            with open(path, encoding="utf-8") as fh:
                return fh.read()
        except OSError as exc:
            raise CommandError(f"cannot read {path}: {exc.strerror}") from None
