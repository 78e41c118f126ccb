"""One set of validators: the admin and the config file refuse the same values, each error naming its field."""
import pytest
from django.urls import reverse

from llmgateway.config import ConfigError, load_config
from providers.models import Provider
from routing.models import Route

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff(client, django_user_model):
    client.force_login(django_user_model.objects.create_superuser("ops", "ops@example.com", "pw-for-tests-only"))
    return client


def config_errors(document: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config(document, environ={})
    return caught.value.messages


def admin_errors(response) -> dict:
    """Field name -> messages of the admin form (and its inline formsets) in a re-rendered page."""
    assert response.status_code == 200, "the form was accepted"
    context = response.context
    errors = dict(context["adminform"].form.errors)
    for formset in context["inline_admin_formsets"]:
        for form in formset.formset.forms:
            errors.update(form.errors)
    return errors


PROVIDER_FORM = {"keys-TOTAL_FORMS": 0, "keys-INITIAL_FORMS": 0, "catalog-TOTAL_FORMS": 0,
                 "catalog-INITIAL_FORMS": 0, "name": "acme", "type": "openai", "base_url": "https://api.acme.test/v1",
                 "timeout_s": 60, "weight": 1, "enabled": "on", "extra_headers": "{}"}


@pytest.mark.parametrize("base_url, message", [
    ("https://user:secret@api.acme.test/v1", "must not contain a user name or password"),
    ("ftp://api.acme.test/v1", "not a valid http(s) URL"),
    ("http://169.254.169.254/v1", "link-local and cloud metadata addresses are never contacted"),
])
def test_a_bad_base_url_is_refused_by_the_admin_and_the_file_alike(staff, base_url, message):
    errors = admin_errors(staff.post(reverse("admin:providers_provider_add"), {**PROVIDER_FORM, "base_url": base_url}))
    assert any(message in text for text in errors["base_url"])

    lines = config_errors(f"providers:\n  acme:\n    base_url: '{base_url}'\n")
    assert any(line.startswith("providers.acme.base_url: ") and message in line for line in lines)
    assert all("secret" not in line for line in lines)  # the rejected value is never echoed


def test_a_timeout_below_its_minimum_is_refused_by_both(staff):
    errors = admin_errors(staff.post(reverse("admin:providers_provider_add"), {**PROVIDER_FORM, "timeout_s": 0.01}))
    assert "timeout_s" in errors
    assert any(line.startswith("providers.acme.timeout_s: must be at least 0.1")
               for line in config_errors("providers:\n  acme:\n    base_url: https://a.test/v1\n    timeout_s: 0.01\n"))


ROUTE_FORM = {"targets-TOTAL_FORMS": 0, "targets-INITIAL_FORMS": 0, "prompt_rules-TOTAL_FORMS": 0,
              "prompt_rules-INITIAL_FORMS": 0, "name": "m", "aliases": "[]", "strategy": "priority",
              "enabled": "on", "max_attempts": 3, "retry_on_status": "[]", "cooldown_s": 30, "description": ""}


def test_a_status_code_outside_100_to_599_is_refused_by_both(staff):
    errors = admin_errors(staff.post(reverse("admin:routing_route_add"), {**ROUTE_FORM, "retry_on_status": "[429, 600]"}))
    assert any("600 is not an HTTP status code" in text for text in errors["retry_on_status"])
    lines = config_errors("models:\n  m:\n    retry_on_status: [429, 600]\n")
    assert "models.m.retry_on_status[1]: 600 is not an HTTP status code (100-599)" in lines


def test_a_regex_that_does_not_compile_is_refused_by_both(staff):
    data = {**ROUTE_FORM, "prompt_rules-TOTAL_FORMS": 1, "prompt_rules-0-order": 0, "prompt_rules-0-operation": "remove",
            "prompt_rules-0-pattern": "(unclosed", "prompt_rules-0-text": "", "prompt_rules-0-enabled": "on"}
    errors = admin_errors(staff.post(reverse("admin:routing_route_add"), data))
    assert any("invalid regular expression" in text for text in errors["pattern"])
    lines = config_errors("models:\n  m:\n    prompt_rules:\n      - operation: remove\n        pattern: '(unclosed'\n")
    assert any(line.startswith("models.m.prompt_rules[0].pattern: invalid regular expression") for line in lines)
    assert not Route.objects.exists()


def test_a_negative_budget_is_refused_by_both(staff):
    errors = admin_errors(staff.post(reverse("admin:keys_virtualkey_add"), {
        "name": "app", "enabled": "on", "budget_period": "monthly", "budget_usd": "-1", "notes": ""}))
    assert any("must not be negative" in text for text in errors["budget_usd"])
    lines = config_errors("virtual_keys:\n  app:\n    budget_usd: -1\n    rpm: -5\n")
    assert "virtual_keys.app.budget_usd: must not be negative" in lines
    assert "virtual_keys.app.rpm: must not be negative" in lines


def test_a_health_interval_below_its_minimum_is_refused_by_the_file():
    lines = config_errors("monitoring:\n  default_interval_s: 2\n")
    assert "monitoring.default_interval_s: must be at least 30" in lines


def test_a_preset_fills_in_a_providers_type_and_base_url_in_the_file():
    data = load_config("providers:\n  ds:\n    preset: deepseek\n  claude:\n    preset: anthropic\n"
                       "    base_url: https://proxy.example.com/anthropic\n", environ={})
    assert (data["providers"]["ds"]["type"], data["providers"]["ds"]["base_url"]) == \
        ("openai", "https://api.deepseek.com/v1")
    assert (data["providers"]["claude"]["type"], data["providers"]["claude"]["base_url"]) == \
        ("anthropic", "https://proxy.example.com/anthropic")


def test_an_unknown_preset_names_the_field_and_the_known_ones():
    lines = config_errors("providers:\n  ds:\n    preset: deepsek\n")
    assert any(line.startswith("providers.ds.preset: unknown preset 'deepsek'; known presets: openai, ") for line in lines)
    assert not Provider.objects.exists()
