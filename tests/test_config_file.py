"""Tests for configuration as code: the llmgateway.config package and the gateway_config command."""
import io
import re
import stat
from pathlib import Path

import pytest
import yaml
from django.core.management import call_command
from django.core.management.base import CommandError

from healthcheck.models import HealthTarget, MonitoringSettings
from keys.models import VirtualKey
from keys.secrets import hash_key
from llmgateway.config import ConfigError, apply_config, export_yaml, load_config, substitute_env
from providers.models import CatalogEntry, Provider, ProviderKey
from routing.models import PromptRule, Route, RouteTarget

db = pytest.mark.django_db

DOCS = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"

SECRETS = {
    "OPENAI_KEY": "sk-openai-primary-0123456789",
    "OPENAI_BACKUP_KEY": "sk-openai-backup-9876543210",
    "ANTHROPIC_KEY": "sk-ant-abcdefghijklmnop",
    "GATEWAY_CI_KEY": "sk-gw-ci-" + "x" * 40,
}

# The shape the brief fixes as a contract.
CONTRACT = """
providers:
  openai-main:
    type: openai
    base_url: http://127.0.0.1:9100/v1
    keys:
      - value: ${OPENAI_KEY}
        label: primary
    weight: 1
    timeout_s: 60
models:
  gpt-4o-mini:
    aliases: [mini]
    strategy: priority
    targets:
      - provider: openai-main
        model: gpt-4o-mini
        priority: 1
        weight: 1
    prompt_rules: []
virtual_keys:
  ci:
    key: ${GATEWAY_CI_KEY}
    models: [gpt-4o-mini]
    rpm: 600
    tpm: 200000
    budget_usd: 50
    budget_period: monthly
    expires_at: null
monitoring:
  enabled: false
  targets: []
"""

# Every field of every section.
FULL = r"""
providers:
  anthropic-direct:
    type: anthropic
    base_url: https://api.anthropic.com/v1
    enabled: false
    weight: 2
    timeout_s: 30.5
    extra_headers:
      anthropic-beta: prompt-caching-2024-07-31
    keys:
      - value: ${ANTHROPIC_KEY}
  openai-main:
    type: openai
    base_url: http://127.0.0.1:9100/v1
    enabled: true
    weight: 1
    timeout_s: 60
    extra_headers:
      OpenAI-Organization: org-1
    keys:
      - value: ${OPENAI_KEY}
        label: primary
        enabled: true
        weight: 3
      - value: ${OPENAI_BACKUP_KEY}
        label: backup
        enabled: false
        weight: 1
    catalog:
      gpt-4o-mini:
        context_window: 128000
        max_output_tokens: 16384
        input_price_per_m: 0.15
        output_price_per_m: 0.6
        cached_input_price_per_m: 0.075
        capabilities: [tools, vision]
      text-embedding-3-small:
        input_price_per_m: 0.02
        capabilities: [embeddings]
models:
  claude:
    strategy: least_latency
    targets:
      - provider: anthropic-direct
        model: claude-sonnet-4
    prompt_rules:
      - operation: strip_billing_header
      - operation: user_template
        text: "[{{date}} {{model}}] {{user_prompt}}"
        order: 1
  gpt-4o-mini:
    aliases: [mini, gpt-mini]
    strategy: weighted
    enabled: true
    max_attempts: 4
    retry_on_status: [429, 503]
    cooldown_s: 15
    description: Cheap and fast.
    targets:
      - provider: openai-main
        model: gpt-4o-mini
        priority: 1
        weight: 3
      - provider: anthropic-direct
        model: claude-haiku
        priority: 2
        weight: 1
        enabled: false
    prompt_rules:
      - operation: replace
        pattern: "\\bACME\\b"
        text: Acme Corp, price $${PRICE}
        order: 2
        enabled: false
      - operation: system_prepend
        text: |
          You are terse.
          Answer in English.
        order: 1
virtual_keys:
  ci:
    key: ${GATEWAY_CI_KEY}
    models: [gpt-4o-mini]
    rpm: 600
    tpm: 200000
    budget_usd: 50
    budget_period: monthly
    expires_at: 2030-01-31T00:00:00Z
    log_bodies: true
    notes: Used by CI.
  dashboard:
    enabled: false
    budget_period: total
monitoring:
  enabled: true
  default_interval_s: 120
  default_prompt: Say 'OK'
  targets:
    - name: mini
      model: gpt-4o-mini
      interval_s: 60
      prompt: ping
      timeout_s: 10
    - name: claude
      model: claude
      enabled: false
"""


@pytest.fixture(autouse=True)
def bumps(monkeypatch):
    """Count config version bumps instead of talking to Redis."""
    calls = []
    monkeypatch.setattr("llmgateway.config.apply.bump_config_version", lambda: calls.append(1))
    return calls


@pytest.fixture(autouse=True)
def env(monkeypatch):
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)


@pytest.fixture
def write(tmp_path):
    def write(text, name="gateway.yaml"):
        path = tmp_path / name
        path.write_text(text)
        return str(path)
    return write


def run(*args) -> tuple[int, str, str]:
    """Run the command; return (exit status as manage.py would, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    try:
        call_command("gateway_config", *args, stdout=out, stderr=err)
    except CommandError as exc:
        err.write(f"CommandError: {exc}\n")
        return exc.returncode, out.getvalue(), err.getvalue()
    return 0, out.getvalue(), err.getvalue()


def apply_text(text):
    return apply_config(load_config(text))


def db_state():
    return (export_yaml(include_secrets=True),
            sorted(VirtualKey.objects.values_list("name", "key_hash")),
            sorted(ProviderKey.objects.values_list("encrypted_secret", flat=True)))


def wipe():
    for model in (HealthTarget, MonitoringSettings, Route, Provider):
        model.objects.all().delete()
    VirtualKey.objects.filter(is_monitoring=False).delete()


# --- applying ---------------------------------------------------------------

@db
def test_it_applies_the_contract_example(write):
    status, out, err = run("apply", write(CONTRACT))

    assert status == 0, err
    provider = Provider.objects.get(name="openai-main")
    assert (provider.type, provider.base_url, provider.weight, provider.timeout_s) == \
        ("openai", "http://127.0.0.1:9100/v1", 1, 60.0)
    assert provider.keys.get(label="primary").get_secret() == SECRETS["OPENAI_KEY"]
    route = Route.objects.get(name="gpt-4o-mini")
    assert route.aliases == ["mini"]
    target = route.targets.get()
    assert (target.provider, target.upstream_model, target.priority, target.weight) == (provider, "gpt-4o-mini", 1, 1)
    key = VirtualKey.objects.get(name="ci")
    assert key.key_hash == hash_key(SECRETS["GATEWAY_CI_KEY"])
    assert list(key.allowed_routes.all()) == [route]
    assert (key.rpm, key.tpm, key.budget_usd, key.budget_period, key.expires_at) == (600, 200000, 50, "monthly", None)
    assert MonitoringSettings.load().enabled is False
    assert "created provider 'openai-main'" in out
    assert SECRETS["GATEWAY_CI_KEY"] not in out


@db
def test_it_applies_every_field():
    apply_text(FULL)

    anthropic = Provider.objects.get(name="anthropic-direct")
    assert (anthropic.type, anthropic.enabled, anthropic.weight, anthropic.timeout_s) == ("anthropic", False, 2, 30.5)
    assert anthropic.extra_headers == {"anthropic-beta": "prompt-caching-2024-07-31"}
    backup = ProviderKey.objects.get(label="backup")
    assert (backup.enabled, backup.weight, backup.get_secret()) == (False, 1, SECRETS["OPENAI_BACKUP_KEY"])
    entry = CatalogEntry.objects.get(model_id="gpt-4o-mini")
    assert (entry.context_window, entry.max_output_tokens) == (128000, 16384)
    assert (str(entry.input_price_per_m), str(entry.cached_input_price_per_m)) == ("0.150000", "0.075000")
    assert entry.capabilities == ["tools", "vision"]
    route = Route.objects.get(name="gpt-4o-mini")
    assert (route.strategy, route.max_attempts, route.retry_on_status, route.cooldown_s, route.description) == \
        ("weighted", 4, [429, 503], 15, "Cheap and fast.")
    assert RouteTarget.objects.get(upstream_model="claude-haiku").enabled is False
    rules = list(route.prompt_rules.all())
    assert [(r.order, r.operation, r.enabled) for r in rules] == [(1, "system_prepend", True), (2, "replace", False)]
    assert rules[0].text == "You are terse.\nAnswer in English.\n"
    assert rules[1].pattern == r"\bACME\b"
    ci = VirtualKey.objects.get(name="ci")
    assert (ci.log_bodies, ci.notes, ci.expires_at.isoformat()) == (True, "Used by CI.", "2030-01-31T00:00:00+00:00")
    assert VirtualKey.objects.get(name="dashboard").allowed_routes.count() == 0
    settings = MonitoringSettings.load()
    assert (settings.enabled, settings.default_interval_s, settings.default_prompt) == (True, 120, "Say 'OK'")
    mini = HealthTarget.objects.get(name="mini")
    assert (mini.route, mini.interval_s, mini.prompt, mini.timeout_s) == (route, 60, "ping", 10.0)
    assert HealthTarget.objects.get(name="claude").enabled is False


@db
def test_it_stores_provider_keys_encrypted():
    apply_text(FULL)

    for key, name in [(ProviderKey.objects.get(label="primary"), "OPENAI_KEY"),
                      (ProviderKey.objects.get(provider__name="anthropic-direct"), "ANTHROPIC_KEY")]:
        assert SECRETS[name] not in key.encrypted_secret
        assert key.get_secret() == SECRETS[name]
        assert key.secret_last4 == SECRETS[name][-4:]


@db
def test_applying_the_same_file_twice_changes_nothing(write, bumps):
    path = write(FULL)
    run("apply", path)
    before = db_state()
    stamps = sorted(Provider.objects.values_list("updated_at", flat=True))

    status, out, _ = run("apply", path)

    assert status == 0
    assert out.strip() == "no changes"
    assert db_state() == before  # includes the encrypted columns: no re-encryption
    assert sorted(Provider.objects.values_list("updated_at", flat=True)) == stamps
    assert apply_text(FULL).changes == []


@db
def test_it_generates_a_missing_virtual_key_and_prints_it_once(write):
    path = write(CONTRACT.replace("    key: ${GATEWAY_CI_KEY}\n", ""))

    _, out, _ = run("apply", path)

    secret = re.search(r"created virtual key 'ci': (sk-gw-\S+)", out).group(1)
    assert VirtualKey.objects.get(name="ci").key_hash == hash_key(secret)
    _, again, _ = run("apply", path)
    assert "sk-gw-" not in again
    assert VirtualKey.objects.get(name="ci").key_hash == hash_key(secret)


@db
def test_a_changed_virtual_key_replaces_the_stored_hash(monkeypatch):
    apply_text(CONTRACT)
    monkeypatch.setenv("GATEWAY_CI_KEY", "sk-gw-rotated-" + "y" * 40)

    summary = apply_text(CONTRACT)

    assert summary.changes == ["updated virtual key 'ci' (key)"]
    assert VirtualKey.objects.get(name="ci").key_hash == hash_key("sk-gw-rotated-" + "y" * 40)


@db
def test_only_a_changed_provider_key_is_encrypted_again(monkeypatch):
    apply_text(FULL)
    backup_before = ProviderKey.objects.get(label="backup").encrypted_secret
    monkeypatch.setenv("OPENAI_KEY", "sk-openai-new-secret")

    summary = apply_text(FULL)

    assert summary.changes == ["updated key 'primary' of provider 'openai-main' (value)"]
    assert ProviderKey.objects.get(label="primary").get_secret() == "sk-openai-new-secret"
    assert ProviderKey.objects.get(label="backup").encrypted_secret == backup_before


@db
def test_keys_are_matched_by_label_or_else_by_position():
    doc = """
providers:
  p:
    base_url: https://example.com/v1
    keys:
      - value: first-secret
      - value: labelled-secret
        label: main
      - value: second-secret
"""
    apply_text(doc)
    ids = dict(ProviderKey.objects.values_list("encrypted_secret", "id"))

    summary = apply_text(doc.replace("first-secret", "first-rotated").replace("      - value: second-secret\n", ""))

    assert summary.changes == ["deleted key #3 of provider 'p'", "updated key #1 of provider 'p' (value)"]
    assert sorted(ProviderKey.objects.values_list("id", flat=True)) == sorted(ids.values())[:2]
    assert sorted(k.get_secret() for k in ProviderKey.objects.all()) == ["first-rotated", "labelled-secret"]


@db
def test_items_missing_from_a_section_are_deleted_and_reported():
    apply_text(FULL)
    smaller = yaml.safe_load(FULL)
    del smaller["providers"]["openai-main"]["catalog"]["text-embedding-3-small"]
    del smaller["models"]["gpt-4o-mini"]["targets"][1]
    del smaller["virtual_keys"]["dashboard"]
    del smaller["monitoring"]["targets"][1]

    summary = apply_text(yaml.safe_dump(smaller))

    assert sorted(summary.changes) == [
        "deleted catalog model 'text-embedding-3-small' of provider 'openai-main'",
        "deleted health target 'claude'",
        "deleted target anthropic-direct/claude-haiku of model 'gpt-4o-mini'",
        "deleted virtual key 'dashboard'",
    ]
    assert not VirtualKey.objects.filter(name="dashboard").exists()


@db
def test_a_removed_provider_and_model_are_deleted():
    apply_text(FULL)
    doc = yaml.safe_load(FULL)
    del doc["providers"]["anthropic-direct"]
    del doc["models"]["claude"]
    del doc["models"]["gpt-4o-mini"]["targets"][1]
    doc["monitoring"]["targets"].pop()

    summary = apply_text(yaml.safe_dump(doc))

    assert "deleted provider 'anthropic-direct'" in summary.changes
    assert "deleted model 'claude'" in summary.changes
    assert sorted(Provider.objects.values_list("name", flat=True)) == ["openai-main"]


@db
def test_a_section_missing_from_the_file_is_left_alone():
    apply_text(FULL)
    before = db_state()

    summary = apply_text("providers:\n" + FULL.split("providers:\n", 1)[1].split("models:\n")[0])

    assert summary.changes == []
    assert db_state() == before


@db
def test_it_never_exports_or_deletes_the_monitoring_key():
    monitor = VirtualKey(name="health-monitor", is_monitoring=True)
    monitor.set_key()
    monitor.save()

    apply_text(FULL)

    assert VirtualKey.objects.filter(name="health-monitor").exists()
    assert "health-monitor" not in export_yaml()


@db
def test_a_dry_run_reports_and_changes_nothing(write, bumps):
    status, out, _ = run("apply", write(FULL), "--dry-run")

    assert status == 0
    assert "created provider 'openai-main'" in out and "dry run: nothing was changed" in out
    assert "sk-gw-" not in out
    assert not Provider.objects.exists()
    assert bumps == []


@db
def test_a_successful_apply_bumps_the_config_version_once(write, bumps):
    run("apply", write(FULL))
    assert bumps == [1]
    run("apply", write(FULL.replace("${OPENAI_KEY}", "${NOPE}")))
    assert bumps == [1]


@db
def test_an_apply_that_changes_only_virtual_keys_and_monitoring_leaves_the_route_snapshot_alone(
        write, bumps, django_capture_on_commit_callbacks):
    from routing.snapshot import bump_config_version

    run("apply", write(FULL))
    bumps.clear()
    keys_and_monitoring_only = (FULL.replace("rpm: 600", "rpm: 900")
                                .replace("  dashboard:\n    enabled: false\n    budget_period: total\n", "")
                                .replace("default_interval_s: 120", "default_interval_s: 300"))

    with django_capture_on_commit_callbacks() as after_commit:
        _, unchanged, _ = run("apply", write(FULL))
        _, changed, _ = run("apply", write(keys_and_monitoring_only))

    assert unchanged.strip() == "no changes"
    assert "updated virtual key 'ci' (rpm)" in changed and "deleted virtual key 'dashboard'" in changed
    assert "updated monitoring settings (default_interval_s)" in changed
    assert bumps == []
    assert after_commit and bump_config_version not in after_commit  # the keys' own publishing only
    run("apply", write(keys_and_monitoring_only.replace("cooldown_s: 15", "cooldown_s: 20")))
    assert bumps == [1]


# --- exporting --------------------------------------------------------------

@db
def test_export_apply_export_is_byte_identical_with_secrets():
    apply_text(FULL)
    first = export_yaml(include_secrets=True)
    wipe()

    apply_text(first)

    assert export_yaml(include_secrets=True) == first


@db
def test_export_apply_export_is_byte_identical_through_environment_variables(monkeypatch, write):
    apply_text(FULL)
    _, first, _ = run("export")
    assert "#   OPENAI_MAIN_PRIMARY_KEY\n" in first
    for variable, secret in [("OPENAI_MAIN_PRIMARY_KEY", "OPENAI_KEY"), ("OPENAI_MAIN_BACKUP_KEY", "OPENAI_BACKUP_KEY"),
                             ("ANTHROPIC_DIRECT_KEY", "ANTHROPIC_KEY")]:
        assert f"value: ${{{variable}}}" in first
        monkeypatch.setenv(variable, SECRETS[secret])
    wipe()

    status, _, err = run("apply", write(first))

    assert status == 0, err
    assert run("export")[1] == first
    assert ProviderKey.objects.get(label="backup").get_secret() == SECRETS["OPENAI_BACKUP_KEY"]


@db
def test_export_writes_placeholders_not_secrets():
    apply_text(FULL)

    text = export_yaml()

    for secret in SECRETS.values():
        assert secret not in text
    assert "# Set these environment variables before applying:\n#   ANTHROPIC_DIRECT_KEY\n" in text


@db
def test_export_writes_no_virtual_key_secret():
    apply_text(FULL)

    exported = yaml.safe_load(export_yaml(include_secrets=True))

    assert all("key" not in spec for spec in exported["virtual_keys"].values())
    assert hash_key(SECRETS["GATEWAY_CI_KEY"]) not in export_yaml(include_secrets=True)


@db
def test_export_is_sorted_and_escapes_dollar_braces():
    apply_text(FULL)

    text = export_yaml()
    exported = yaml.safe_load(text)

    assert list(exported) == ["version", "providers", "models", "virtual_keys", "monitoring"]
    assert list(exported["providers"]) == ["anthropic-direct", "openai-main"]
    assert list(exported["models"]["gpt-4o-mini"]) == ["aliases", "strategy", "enabled", "max_attempts",
                                                       "retry_on_status", "cooldown_s", "session_ttl_s", "description",
                                                       "targets", "prompt_rules"]
    assert PromptRule.objects.get(operation="replace").text == "Acme Corp, price ${PRICE}"
    assert "text: Acme Corp, price $${PRICE}" in text
    assert "  - operation: system_prepend\n      text: |\n        You are terse.\n" in text
    assert export_yaml() == text


@db
def test_export_command_writes_a_private_file_with_secrets(tmp_path):
    apply_text(CONTRACT)
    path = tmp_path / "out.yaml"

    status, out, _ = run("export", str(path), "--include-secrets")

    assert status == 0 and "exported to" in out
    assert SECRETS["OPENAI_KEY"] in path.read_text()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


@db
def test_the_documented_example_is_valid(monkeypatch):
    example = re.search(r"```yaml\n(.*?)```", DOCS.read_text(), re.S).group(1)
    for name in re.findall(r"\$\{(\w+)\}", example):
        monkeypatch.setenv(name, "sk-documented-example-" + "z" * 30)

    apply_text(example)

    assert Provider.objects.exists() and Route.objects.exists() and VirtualKey.objects.exists()


# --- validation -------------------------------------------------------------

def _broken(old, new):
    assert old in FULL
    return FULL.replace(old, new, 1)


INVALID = {
    "unknown provider": (
        _broken("      - provider: openai-main\n", "      - provider: openai-mian\n"),
        "models.gpt-4o-mini.targets[0].provider: unknown provider 'openai-mian'"),
    "bad enum": (
        _broken("strategy: weighted", "strategy: fastest"),
        "models.gpt-4o-mini.strategy: 'fastest' is not one of: priority, weighted, round_robin, least_latency"),
    "wrong type": (
        _broken("timeout_s: 60\n", "timeout_s: soon\n"),
        "providers.openai-main.timeout_s: expected a number, got a string"),
    "unknown field": (
        _broken("        priority: 1\n        weight: 3", "        priority: 1\n        weigth: 3"),
        "models.gpt-4o-mini.targets[0].weigth: unknown field (did you mean 'weight'?)"),
    "missing env var": (
        _broken("${OPENAI_BACKUP_KEY}", "${OPENAI_BACKUP_KEY_TYPO}"),
        "providers.openai-main.keys[1].value: environment variable OPENAI_BACKUP_KEY_TYPO is not set"),
    "alias collision": (
        _broken("aliases: [mini, gpt-mini]", "aliases: [mini, claude]"),
        "models.gpt-4o-mini.aliases[1]: 'claude' is already the name of model 'claude'"),
    "unknown model in a virtual key": (
        _broken("models: [gpt-4o-mini]", "models: [gpt-4o-mini, gpt-5]"),
        "virtual_keys.ci.models[1]: unknown model 'gpt-5'"),
    "unknown model in a health target": (
        _broken("      model: claude\n", "      model: claud\n"),
        "monitoring.targets[1].model: unknown model 'claud'"),
    "bad capability": (
        _broken("capabilities: [embeddings]", "capabilities: [embedding]"),
        "providers.openai-main.catalog.text-embedding-3-small.capabilities[0]: 'embedding' is not one of"),
    "bad regular expression": (
        _broken(r'"\\bACME\\b"', '"(ACME"'),
        "models.gpt-4o-mini.prompt_rules[0].pattern: invalid regular expression"),
    "rule without its text": (
        _broken('        text: "[{{date}} {{model}}] {{user_prompt}}"\n', ""),
        "models.claude.prompt_rules[1].text: required for this operation (user_template)"),
    "malformed variable": (
        _broken("${ANTHROPIC_KEY}", "${ANTHROPIC KEY}"),
        "providers.anthropic-direct.keys[0].value: malformed variable reference '${ANTHROPIC KEY}'"),
    "duplicate name": (
        _broken("  dashboard:\n", "  ci:\n"),
        "duplicate key 'ci'"),
    "short virtual key": (
        _broken("key: ${GATEWAY_CI_KEY}", "key: sk-short"),
        "virtual_keys.ci.key: must be at least 32 characters"),
    "bad url": (
        _broken("base_url: https://api.anthropic.com/v1", "base_url: api.anthropic.com"),
        "providers.anthropic-direct.base_url: not a valid http(s) URL"),
    "unknown section": (
        FULL + "virtual_key:\n  x: {}\n",
        "virtual_key: unknown field (did you mean 'virtual_keys'?)"),
}


@db
@pytest.mark.parametrize("case", list(INVALID))
def test_an_invalid_file_names_the_place_exits_non_zero_and_changes_nothing(case, write, bumps):
    apply_text(CONTRACT)
    bumps.clear()
    before = db_state()
    text, message = INVALID[case]

    status, out, err = run("apply", write(text))

    assert status != 0
    assert message in err
    assert "nothing was changed" in err and out == ""
    assert db_state() == before
    assert bumps == []


@db
def test_every_problem_is_reported_at_once_one_per_line(write):
    text = _broken("strategy: weighted", "strategy: fastest").replace("timeout_s: 60\n", "timeout_s: soon\n")

    _, _, err = run("apply", write(text))

    assert err.splitlines()[:2] == [
        "providers.openai-main.timeout_s: expected a number, got a string",
        "models.gpt-4o-mini.strategy: 'fastest' is not one of: priority, weighted, round_robin, least_latency",
    ]


@db
def test_a_missing_variable_is_reported_once_per_place():
    with pytest.raises(ConfigError) as caught:
        load_config(FULL.replace("${OPENAI_KEY}", "${NOPE}"))
    assert caught.value.messages == ["providers.openai-main.keys[0].value: environment variable NOPE is not set"]


@db
def test_deleting_a_provider_still_targeted_by_a_model_outside_the_file_is_an_error():
    apply_text(FULL)
    providers_only = "providers:\n  openai-main:\n    base_url: http://127.0.0.1:9100/v1\n"

    with pytest.raises(ConfigError) as caught:
        apply_text(providers_only)

    assert caught.value.messages == [
        "providers: provider 'anthropic-direct' is not in the file but model 'claude' still targets it"
        " (add a models section or keep the provider)",
        "providers: provider 'anthropic-direct' is not in the file but model 'gpt-4o-mini' still targets it"
        " (add a models section or keep the provider)",
    ]
    assert Provider.objects.filter(name="anthropic-direct").exists()


@db
def test_references_resolve_against_the_database_when_a_section_is_absent():
    apply_text(FULL)

    apply_text("models:\n  extra:\n    targets:\n      - {provider: openai-main, model: gpt-4o}\n"
               + FULL.split("models:\n", 1)[1].split("virtual_keys:\n")[0])

    assert Route.objects.get(name="extra").targets.get().provider.name == "openai-main"


# --- substitution (no database) ---------------------------------------------

def test_substitution_replaces_variables_and_keeps_escaped_dollar_braces():
    errors = []
    result = substitute_env({"a": ["x ${A} y $${A} $$${A}"]}, {"A": "1"}, errors)
    assert (result, errors) == ({"a": ["x 1 y ${A} $${A}"]}, [])


def test_substitution_names_the_variable_and_the_place():
    errors = []
    substitute_env({"models": {"m": {"targets": [{"model": "${MISSING}"}]}}}, {}, errors)
    assert errors == ["models.m.targets[0].model: environment variable MISSING is not set"]


@pytest.mark.django_db
def test_a_key_restricted_to_deleted_models_exports_and_reapplies_as_restricted():
    route = Route.objects.create(name="short-lived")
    key = VirtualKey(name="narrow", all_models=False)
    key.set_key()
    key.save()
    key.allowed_routes.set([route])
    route.delete()
    exported = export_yaml()
    assert "models: []" in exported
    apply_text(exported)
    assert VirtualKey.objects.get(name="narrow").all_models is False
