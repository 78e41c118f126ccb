"""`manage.py rotate_provider_keys`: re-encrypt every stored provider secret (keys and secret
headers) with the newest key."""
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from providers.crypto import reencrypt_secret
from providers.models import Provider, ProviderKey


class Command(BaseCommand):
    help = "Re-encrypt provider secrets with the first of ENCRYPTION_KEYS, so older keys can be retired."

    def handle(self, *args, **options):
        rotated = 0
        with transaction.atomic():
            for key in ProviderKey.objects.select_for_update():
                try:
                    key.encrypted_secret = reencrypt_secret(key.encrypted_secret)
                except Exception:
                    raise CommandError(f"provider key {key.pk} cannot be decrypted with any of ENCRYPTION_KEYS") from None
                key.save(update_fields=["encrypted_secret"])
                rotated += 1
            for provider in Provider.objects.exclude(encrypted_headers="").select_for_update():
                try:
                    provider.encrypted_headers = reencrypt_secret(provider.encrypted_headers)
                except Exception:
                    raise CommandError(f"the secret headers of provider {provider.name!r} cannot be decrypted "
                                       "with any of ENCRYPTION_KEYS") from None
                provider.save(update_fields=["encrypted_headers"])
        self.stdout.write(f"re-encrypted {rotated} provider key(s) with the newest encryption key")
