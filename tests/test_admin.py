"""The admin: every page loads, secrets are write-only, a virtual key's secret is shown once."""
import re

import pytest
from django.apps import apps
from django.contrib import admin
from django.db import connection
from django.urls import reverse
from django.utils import timezone

from healthcheck.models import HealthRun, HealthTarget, MonitoringSettings
from keys.models import VirtualKey
from providers.models import CatalogEntry, Provider, ProviderKey
from routing.models import PromptRule, RequestLog, Route, RouteTarget

SECRET = "sk-live-provider-secret-ABCD1234wxyz"


@pytest.fixture
def staff(client, django_user_model):
    user = django_user_model.objects.create_superuser("root", "root@example.com", "pw-for-tests-only")
    client.force_login(user)
    return client


@pytest.fixture
def populated(db):
    provider = Provider.objects.create(name="openai-main", base_url="http://127.0.0.1:9/v1")
    key = ProviderKey(provider=provider, label="primary")
    key.set_secret(SECRET)
    key.save()
    CatalogEntry.objects.create(provider=provider, model_id="gpt-4o", input_price_per_m=2.5, supports_tools=True)
    route = Route.objects.create(name="gpt-4o", aliases=["four"])
    RouteTarget.objects.create(route=route, provider=provider, upstream_model="gpt-4o")
    PromptRule.objects.create(route=route, operation="system_prepend", text="Be brief.")
    vk = VirtualKey(name="app")
    vk.set_key()
    vk.save()
    RequestLog.objects.create(request_id="req_1", created_at=timezone.now(), endpoint="chat", status=200,
                              virtual_key=vk, route="gpt-4o")
    target = HealthTarget.objects.create(name="gpt-4o probe", route=route)
    HealthRun.objects.create(target=target, started_at=timezone.now(), outcome="healthy", latency_ms=12)
    MonitoringSettings.load()
    return key


def all_database_text() -> str:
    """Every value of every table, as text."""
    chunks = []
    with connection.cursor() as cursor:
        for table in connection.introspection.table_names():
            cursor.execute(f"SELECT * FROM {connection.ops.quote_name(table)}")
            chunks.extend(repr(row) for row in cursor.fetchall())
    return "\n".join(chunks)


def admin_pages():
    for model, model_admin in admin.site._registry.items():
        info = model._meta.app_label, model._meta.model_name
        yield model, model_admin, f"admin:{info[0]}_{info[1]}"


def test_every_changelist_add_and_change_page_loads(staff, populated):
    for model, model_admin, name in admin_pages():
        assert staff.get(reverse(name + "_changelist")).status_code == 200, name
        expected = 200 if model_admin.has_add_permission(staff.get("/").wsgi_request) else 403
        # Logs and runs are written by the gateway, and the settings row is a singleton.
        assert staff.get(reverse(name + "_add")).status_code == expected, name
        obj = model.objects.first()
        if obj is not None:
            assert staff.get(reverse(name + "_change", args=[obj.pk])).status_code == 200, name


def test_changelist_search_and_filters_work(staff, populated):
    assert b"req_1" in staff.get(reverse("admin:routing_requestlog_changelist") + "?q=req_1").content
    assert staff.get(reverse("admin:routing_requestlog_changelist") + "?status=200").status_code == 200
    assert b"gpt-4o" in staff.get(reverse("admin:routing_route_changelist") + "?q=four").content


def test_a_provider_secret_is_unreadable_in_the_database_and_absent_from_admin_pages(staff, populated):
    assert SECRET not in all_database_text()
    assert ProviderKey.objects.get().get_secret() == SECRET
    pages = [reverse("admin:providers_provider_changelist"),
             reverse("admin:providers_provider_change", args=[populated.provider_id]),
             reverse("admin:providers_providerkey_changelist"),
             reverse("admin:providers_providerkey_change", args=[populated.pk])]
    for page in pages:
        html = staff.get(page).content.decode()
        assert SECRET not in html
        assert SECRET[:-4] not in html
    assert "…wxyz" in staff.get(pages[3]).content.decode()


def test_a_provider_secret_can_be_set_and_kept_from_the_admin(staff, populated):
    url = reverse("admin:providers_providerkey_change", args=[populated.pk])
    data = {"provider": populated.provider_id, "label": "primary", "secret": "", "enabled": "on", "weight": 2}
    assert staff.post(url, data).status_code == 302
    assert ProviderKey.objects.get().get_secret() == SECRET  # empty field keeps the stored secret
    assert staff.post(url, {**data, "secret": "sk-rotated-9999"}).status_code == 302
    key = ProviderKey.objects.get()
    assert key.get_secret() == "sk-rotated-9999" and key.secret_last4 == "9999"
    assert "sk-rotated-9999" not in all_database_text()


def test_a_new_provider_key_needs_a_secret(staff, populated):
    url = reverse("admin:providers_providerkey_add")
    response = staff.post(url, {"provider": populated.provider_id, "label": "x", "secret": "", "weight": 1})
    assert response.status_code == 200 and b"needs its secret" in response.content


def test_creating_a_virtual_key_shows_its_secret_once(staff, populated):
    response = staff.post(reverse("admin:keys_virtualkey_add"), {
        "name": "new-app", "enabled": "on", "budget_period": "monthly", "unpriced_policy": "refuse", "notes": "",
    })
    assert response.status_code == 200
    html = response.content.decode()
    secret = re.search(r'value="(sk-gw-[^"]+)"', html).group(1)
    assert "no-store" in response["Cache-Control"]
    vk = VirtualKey.objects.get(name="new-app")
    assert secret.startswith(vk.prefix) and len(secret) > len(vk.prefix) + 20

    assert secret not in all_database_text()
    for url in [reverse("admin:keys_virtualkey_changelist"), reverse("admin:keys_virtualkey_change", args=[vk.pk]),
                reverse("admin:index")]:
        page = staff.get(url).content.decode()
        assert secret not in page
    assert vk.prefix in staff.get(reverse("admin:keys_virtualkey_changelist")).content.decode()


def test_every_model_is_in_the_admin():
    ours = [m for m in apps.get_models() if m._meta.app_label in ("providers", "routing", "keys", "healthcheck")]
    assert ours and all(m in admin.site._registry for m in ours)
