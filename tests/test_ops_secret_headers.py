"""Provider extra headers that carry credentials: encrypted at rest, masked in the admin,
placeholders in exports, real values on the wire."""
import httpx
import pytest
from django.db import connection
from django.urls import reverse

from llmgateway.config import apply_config, export_yaml, load_config
from providers.models import Provider, ProviderKey
from routing.models import Route, RouteTarget

from .conftest import FULL_KEY, PROVIDER_SECRET, wait_for_model

AUTH_VALUE = "Bearer sk-upstream-header-secret-7Q2w"
TOKEN_VALUE = "tok-custom-header-secret-9xYz"


def make_provider(**overrides) -> Provider:
    fields = {"name": "azure-east", "base_url": "http://127.0.0.1:9/v1"} | overrides
    return Provider.objects.create(**fields)


def stored_row(provider) -> str:
    """Everything the database holds for the provider, as text."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT * FROM providers_provider WHERE id = %s", [provider.pk])
        return repr(cursor.fetchone())


@pytest.fixture
def staff(client, django_user_model):
    user = django_user_model.objects.create_superuser("root", "root@example.com", "pw-for-tests-only")
    client.force_login(user)
    return client


@pytest.mark.django_db
def test_a_credential_header_is_encrypted_at_rest_whatever_way_it_was_entered():
    provider = make_provider(extra_headers={"Authorization": AUTH_VALUE, "OpenAI-Organization": "org-1"})

    assert AUTH_VALUE not in stored_row(provider)
    assert "org-1" in stored_row(provider)
    provider.refresh_from_db()
    assert provider.extra_headers == {"OpenAI-Organization": "org-1"}
    assert provider.header_values() == {"OpenAI-Organization": "org-1", "Authorization": AUTH_VALUE}


@pytest.mark.django_db
def test_a_header_the_operator_marks_secret_is_encrypted_too():
    provider = make_provider(secret_header_names=["X-Custom-Token"], extra_headers={"x-custom-token": TOKEN_VALUE})

    assert TOKEN_VALUE not in stored_row(provider)
    assert Provider.objects.get(pk=provider.pk).header_values() == {"x-custom-token": TOKEN_VALUE}


@pytest.mark.django_db
def test_the_migration_encrypts_credential_headers_stored_in_plaintext_before_it():
    import importlib

    from django.apps import apps

    provider = make_provider()
    Provider.objects.filter(pk=provider.pk).update(extra_headers={"api-key": "azure-key-1234567890", "X-Other": "1"})
    migration = importlib.import_module("providers.migrations.0004_secret_headers")

    migration.encrypt_credential_headers(apps, None)

    assert "azure-key-1234567890" not in stored_row(provider)
    assert Provider.objects.get(pk=provider.pk).header_values() == {"X-Other": "1", "api-key": "azure-key-1234567890"}


@pytest.mark.django_db
def test_every_admin_page_shows_secret_headers_masked(staff):
    provider = make_provider(extra_headers={"Authorization": AUTH_VALUE, "OpenAI-Organization": "org-1"})
    pages = [reverse("admin:providers_provider_changelist"),
             reverse("admin:providers_provider_change", args=[provider.pk]),
             reverse("admin:providers_provider_history", args=[provider.pk]),
             reverse("admin:providers_provider_delete", args=[provider.pk])]

    for page in pages:
        html = staff.get(page).content.decode()
        assert AUTH_VALUE not in html and "sk-upstream-header-secret" not in html, page
    change_page = staff.get(pages[1]).content.decode()
    assert "Authorization: …7Q2w" in change_page


def provider_form(provider, **fields) -> dict:
    return {"name": provider.name, "type": provider.type, "base_url": provider.base_url, "enabled": "on",
            "timeout_s": "60", "weight": "1", "extra_headers": '{"OpenAI-Organization": "org-1"}',
            "secret_header_names": "[]", "keys-TOTAL_FORMS": "0", "keys-INITIAL_FORMS": "0",
            "catalog-TOTAL_FORMS": "0", "catalog-INITIAL_FORMS": "0"} | fields


@pytest.mark.django_db
def test_the_admin_sets_and_removes_secret_headers_write_only(staff):
    provider = make_provider(extra_headers={"Authorization": AUTH_VALUE})
    url = reverse("admin:providers_provider_change", args=[provider.pk])

    assert staff.post(url, provider_form(provider, set_secret_headers=f"X-Custom-Token: {TOKEN_VALUE}")).status_code == 302
    provider.refresh_from_db()
    assert provider.header_values() == {"OpenAI-Organization": "org-1", "Authorization": AUTH_VALUE,
                                        "X-Custom-Token": TOKEN_VALUE}
    assert provider.secret_header_names == ["X-Custom-Token"]
    assert TOKEN_VALUE not in stored_row(provider)
    assert TOKEN_VALUE not in staff.get(url).content.decode()

    assert staff.post(url, provider_form(provider, set_secret_headers="authorization:",
                                         secret_header_names='["X-Custom-Token"]')).status_code == 302
    provider.refresh_from_db()
    assert provider.header_values() == {"OpenAI-Organization": "org-1", "X-Custom-Token": TOKEN_VALUE}


@pytest.mark.django_db
def test_a_bad_secret_header_line_is_refused_without_echoing_it(staff):
    provider = make_provider()
    url = reverse("admin:providers_provider_change", args=[provider.pk])

    response = staff.post(url, provider_form(provider, set_secret_headers=f"bad header {TOKEN_VALUE}"))

    assert response.status_code == 200
    assert "set_secret_headers" in response.context["adminform"].form.errors
    assert TOKEN_VALUE not in response.content.decode()


@pytest.mark.django_db
def test_export_writes_secret_headers_as_placeholders_unless_asked_for_secrets():
    make_provider(extra_headers={"Authorization": AUTH_VALUE, "OpenAI-Organization": "org-1"})

    exported = export_yaml()
    with_secrets = export_yaml(include_secrets=True)

    assert AUTH_VALUE not in exported
    assert "Authorization: ${AZURE_EAST_AUTHORIZATION_HEADER}" in exported
    assert "#   AZURE_EAST_AUTHORIZATION_HEADER" in exported
    assert f"Authorization: {AUTH_VALUE}" in with_secrets


@pytest.mark.django_db
def test_an_export_applied_elsewhere_gives_back_the_same_headers_and_a_second_apply_changes_nothing():
    make_provider(secret_header_names=["X-Custom-Token"],
                  extra_headers={"Authorization": AUTH_VALUE, "X-Custom-Token": TOKEN_VALUE, "OpenAI-Organization": "o"})
    exported = export_yaml()
    Provider.objects.all().delete()
    environ = {"AZURE_EAST_AUTHORIZATION_HEADER": AUTH_VALUE, "AZURE_EAST_X_CUSTOM_TOKEN_HEADER": TOKEN_VALUE}

    apply_config(load_config(exported, environ))
    again = apply_config(load_config(exported, environ))

    provider = Provider.objects.get(name="azure-east")
    assert provider.header_values() == {"Authorization": AUTH_VALUE, "X-Custom-Token": TOKEN_VALUE,
                                        "OpenAI-Organization": "o"}
    assert TOKEN_VALUE not in stored_row(provider)
    assert again.changes == []
    assert export_yaml() == exported


def test_the_upstream_receives_the_decrypted_secret_header(live, mock_upstream, db_access):
    provider = Provider.objects.create(name="with-secret-header", base_url=mock_upstream.base_url,
                                       secret_header_names=["X-Custom-Token"],
                                       extra_headers={"X-Custom-Token": TOKEN_VALUE})
    key = ProviderKey(provider=provider, label="primary")
    key.set_secret(PROVIDER_SECRET)
    key.save()
    route = Route.objects.create(name="secret-header-model")
    RouteTarget.objects.create(route=route, provider=provider, upstream_model="gpt-4o-mini")
    try:
        wait_for_model(live, "secret-header-model")
        mock_upstream.clear()
        response = httpx.post(f"{live.url}/v1/chat/completions", headers={"Authorization": f"Bearer {FULL_KEY}"},
                              json={"model": "secret-header-model", "messages": [{"role": "user", "content": "hi"}]})
        assert response.status_code == 200
        assert mock_upstream.requests[-1]["headers"]["x-custom-token"] == TOKEN_VALUE
    finally:
        route.delete()
        provider.delete()


@pytest.mark.django_db
def test_secret_headers_rotate_with_the_provider_keys(settings):
    from cryptography.fernet import Fernet
    from django.core.management import call_command

    from providers import crypto

    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    try:
        settings.ENCRYPTION_KEYS = [old]
        crypto._fernet.cache_clear()
        make_provider(extra_headers={"x-api-key": "key-to-rotate-1234"})
        settings.ENCRYPTION_KEYS = [new, old]
        crypto._fernet.cache_clear()
        call_command("rotate_provider_keys", stdout=open("/dev/null", "w"))
        settings.ENCRYPTION_KEYS = [new]  # the old key retired
        crypto._fernet.cache_clear()

        assert Provider.objects.get().header_values() == {"x-api-key": "key-to-rotate-1234"}
    finally:
        crypto._fernet.cache_clear()
