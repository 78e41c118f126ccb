"""The operator sees and clears provider-key cooldowns in the admin (shared by every process)."""
import time

import pytest
from django.contrib.auth.models import User

from routing import resilience

from .factories import make_provider

pytestmark = pytest.mark.django_db


@pytest.fixture
def operator(client):
    user = User.objects.create_superuser("ops", "ops@example.com", "pw")
    client.force_login(user)
    return client


def test_the_key_list_shows_a_cooling_key_and_the_clear_action_ends_it(operator):
    provider = make_provider("http://127.0.0.1:9/v1", keys=["sk-one-secret-aaaa", "sk-two-secret-bbbb"])
    cooling, ready = provider.keys.order_by("pk")
    from llmgateway.redis import sync_client
    sync_client().set(resilience.cooldown_key(cooling.pk), int((time.time() + 120) * 1000), px=120_000)

    page = operator.get("/admin/providers/providerkey/").content.decode()
    assert "cooling for 1" in page and "ready" in page
    assert "sk-one-secret" not in page

    operator.post("/admin/providers/providerkey/", {"action": "clear_cooldowns",
                                                    "_selected_action": [cooling.pk, ready.pk]})
    assert resilience.key_cooldowns_sync([cooling.pk, ready.pk]) == {}
    assert "cooling for" not in operator.get("/admin/providers/providerkey/").content.decode()
