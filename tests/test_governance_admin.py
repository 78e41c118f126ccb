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


def test_session_ttl_and_unpriced_policy_round_trip_through_the_config_file():
    import yaml

    from keys.models import VirtualKey
    from llmgateway.config.apply import apply_config
    from llmgateway.config.export import export_yaml
    from llmgateway.config.load import load_config
    from routing.models import Route

    text = """
version: 1
providers:
  p:
    base_url: https://api.example.com/v1
models:
  m:
    session_ttl_s: 600
    targets: [{provider: p, model: gpt-4o-mini}]
virtual_keys:
  k:
    key: sk-gw-a-key-long-enough-for-the-file-0001
    budget_usd: 5
    unpriced_policy: admit_and_flag
"""
    apply_config(load_config(text))
    assert Route.objects.get(name="m").session_ttl_s == 600
    assert VirtualKey.objects.get(name="k").unpriced_policy == "admit_and_flag"

    exported = export_yaml()
    assert yaml.safe_load(exported)["models"]["m"]["session_ttl_s"] == 600
    assert yaml.safe_load(exported)["virtual_keys"]["k"]["unpriced_policy"] == "admit_and_flag"
    apply_config(load_config(exported))
    assert export_yaml() == exported
