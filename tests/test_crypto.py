"""Provider secrets: authenticated encryption with key rotation."""
import pytest
from cryptography.fernet import Fernet
from django.core.management import call_command

from providers import crypto
from providers.models import Provider, ProviderKey


@pytest.fixture
def encryption_keys(settings):
    def use(*keys):
        settings.ENCRYPTION_KEYS = list(keys)
        crypto._fernet.cache_clear()

    yield use
    crypto._fernet.cache_clear()


def test_a_tampered_secret_does_not_decrypt(encryption_keys):
    encryption_keys(Fernet.generate_key().decode())
    token = crypto.encrypt_secret("sk-abc")
    assert crypto.decrypt_secret(token) == "sk-abc"
    tampered = token[:-6] + ("A" if token[-6] != "A" else "B") + token[-5:]
    with pytest.raises(ValueError) as caught:
        crypto.decrypt_secret(tampered)
    assert tampered not in str(caught.value)


@pytest.mark.django_db
def test_keys_rotate_new_first_old_still_decrypts(encryption_keys):
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    encryption_keys(old)
    provider = Provider.objects.create(name="p", base_url="http://127.0.0.1:1/v1")
    key = ProviderKey(provider=provider)
    key.set_secret("sk-rotate-me")
    key.save()

    encryption_keys(new, old)
    assert ProviderKey.objects.get().get_secret() == "sk-rotate-me"
    call_command("rotate_provider_keys", stdout=open("/dev/null", "w"))
    encryption_keys(new)  # the old key retired
    assert ProviderKey.objects.get().get_secret() == "sk-rotate-me"
