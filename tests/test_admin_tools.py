"""The admin's provider tools against the mock upstream over real sockets: test connection,
fetch and import models, presets, model metadata, and secrets that never leak."""
import json
import re

import pytest
from django.core.management import call_command
from django.urls import reverse

from providers.catalog import import_models
from providers.connection import check_connection
from providers.metadata import metadata_index, read_snapshot, trim_litellm
from providers.mock_upstream import DEFAULT_MODELS, MockUpstreamThread
from providers.models import CatalogEntry, Provider, ProviderKey
from providers.presets import all_presets, get_preset, preset_for_url
from routing.models import Route, RouteTarget
from tests.conftest import free_port

UPSTREAM_SECRET = "sk-admin-tools-upstream-secret-7Q2w"
pytestmark = pytest.mark.django_db


@pytest.fixture(scope="module")
def keyed_upstream():
    """A mock upstream that accepts only UPSTREAM_SECRET."""
    server = MockUpstreamThread(keys=[UPSTREAM_SECRET]).start()
    yield server
    server.stop()


@pytest.fixture
def staff(client, django_user_model):
    client.force_login(django_user_model.objects.create_superuser("ops", "ops@example.com", "pw-for-tests-only"))
    return client


def make_provider(base_url, secret=UPSTREAM_SECRET, **overrides) -> Provider:
    provider = Provider.objects.create(**{"name": "mock", "base_url": base_url, **overrides})
    if secret is not None:
        make_key(provider, secret)
    return provider


def make_key(provider, secret, label="") -> ProviderKey:
    key = ProviderKey(provider=provider, label=label)
    key.set_secret(secret)
    key.save()
    return key


def assert_no_secret(text: str, secret: str = UPSTREAM_SECRET):
    assert secret not in text
    assert secret[:8] not in text  # not even the part upstreams like to echo


# --- test connection -------------------------------------------------------------------------

def test_testing_a_connection_lists_the_models_with_the_stored_key_and_reports_latency(staff, keyed_upstream):
    provider = make_provider(keyed_upstream.base_url)

    response = staff.post(reverse("admin:providers_provider_test", args=[provider.pk]))

    html = response.content.decode()
    assert response.status_code == 200
    assert 'data-reason="ok"' in html and f"{len(DEFAULT_MODELS)} models listed" in html
    assert re.search(r"[\d,]+ ms", html)
    assert keyed_upstream.requests[-1]["path"] == "/v1/models"
    assert keyed_upstream.requests[-1]["api_key"] == UPSTREAM_SECRET
    assert_no_secret(html)


def test_an_htmx_test_returns_only_the_result_fragment(staff, keyed_upstream):
    provider = make_provider(keyed_upstream.base_url)

    response = staff.post(reverse("admin:providers_provider_test", args=[provider.pk]), HTTP_HX_REQUEST="true")

    html = response.content.decode()
    assert 'id="connection-outcome"' in html and "<html" not in html


def test_each_key_can_be_tested_and_a_refused_key_is_named_without_revealing_it(staff, keyed_upstream):
    provider = make_provider(keyed_upstream.base_url)
    wrong_secret = "sk-wrong-secret-for-the-mock-0000"
    wrong = make_key(provider, wrong_secret, label="old")

    response = staff.post(reverse("admin:providers_providerkey_test", args=[provider.pk, wrong.pk]))

    html = response.content.decode()
    assert 'data-reason="key_refused"' in html and "refused the key (HTTP 401)" in html
    assert keyed_upstream.requests[-1]["api_key"] == wrong_secret
    assert_no_secret(html, wrong_secret)
    assert_no_secret(html)


def test_the_test_button_is_a_plain_form_on_the_provider_page(staff, keyed_upstream):
    provider = make_provider(keyed_upstream.base_url)
    html = staff.get(reverse("admin:providers_provider_change", args=[provider.pk])).content.decode()
    url = reverse("admin:providers_provider_test", args=[provider.pk])
    assert f'action="{url}"' in html and f'hx-post="{url}"' in html
    assert staff.get(url).status_code == 200  # GET shows the button, contacts nothing


def test_an_unreachable_provider_is_reported_as_unreachable(db):
    result = check_connection(make_provider(f"http://127.0.0.1:{free_port()}/v1"))
    assert (result.ok, result.reason) == (False, "unreachable")


def test_a_slow_provider_is_reported_as_a_timeout(keyed_upstream):
    slow = make_provider(keyed_upstream.base_url, extra_headers={"x-mock-fault": json.dumps({"delay": 2})})
    result = check_connection(slow, timeout=0.3)
    assert (result.ok, result.reason) == (False, "timeout")
    assert "0.3 seconds" in result.message


def test_a_wrong_base_url_is_reported_as_not_found(keyed_upstream):
    result = check_connection(make_provider(keyed_upstream.base_url.removesuffix("/v1") + "/nowhere"))
    assert (result.ok, result.reason) == (False, "not_found")
    assert "check the base URL" in result.message


def test_a_rate_limited_key_is_reported_as_such(keyed_upstream):
    limited = make_provider(keyed_upstream.base_url, extra_headers={"x-mock-fault": json.dumps({"status": 429})})
    assert check_connection(limited).reason == "rate_limited"


def test_a_provider_without_a_model_list_is_tested_with_a_one_token_completion(keyed_upstream):
    provider = make_provider(keyed_upstream.base_url)

    result = check_connection(provider, test_model="gpt-4o-mini", lists_models=False)

    assert (result.ok, result.method) == (True, "completion")
    sent = keyed_upstream.requests[-1]
    assert sent["path"] == "/v1/chat/completions"
    assert sent["json"]["model"] == "gpt-4o-mini" and sent["json"]["max_tokens"] == 1


def test_without_a_model_list_the_test_completion_uses_a_catalog_model(keyed_upstream):
    provider = make_provider(keyed_upstream.base_url)
    CatalogEntry.objects.create(provider=provider, model_id="text-embedding-3-small", supports_embeddings=True)
    CatalogEntry.objects.create(provider=provider, model_id="mock-model")

    result = check_connection(provider, lists_models=False)

    assert result.ok and "mock-model" in result.message
    assert keyed_upstream.requests[-1]["json"]["model"] == "mock-model"


def test_without_a_model_list_or_a_model_to_try_the_test_says_what_to_add(keyed_upstream):
    result = check_connection(make_provider(keyed_upstream.base_url), lists_models=False)
    assert (result.ok, result.reason) == (False, "no_model")


def test_link_local_and_metadata_addresses_are_never_contacted(db):
    for url in ("http://169.254.169.254/latest", "http://[fe80::1]/v1", "http://100.100.100.200/v1"):
        result = check_connection(make_provider(url, name=f"p{abs(hash(url))}"))
        assert result.reason == "address_refused", url


def test_private_addresses_are_refused_when_the_operator_says_so(settings, keyed_upstream):
    settings.GATEWAY_ALLOW_PRIVATE_UPSTREAMS = False
    result = check_connection(make_provider(keyed_upstream.base_url))
    assert result.reason == "address_refused"
    assert "GATEWAY_ALLOW_PRIVATE_UPSTREAMS" in result.message


# --- fetch models ----------------------------------------------------------------------------

def test_fetching_models_lists_the_upstream_models_with_their_known_metadata(staff, keyed_upstream):
    provider = make_provider(keyed_upstream.base_url)
    CatalogEntry.objects.create(provider=provider, model_id="gpt-4o")

    html = staff.get(reverse("admin:providers_provider_fetch_models", args=[provider.pk])).content.decode()

    for model in DEFAULT_MODELS:
        assert f"<code>{model}</code>" in html
    assert 'value="gpt-4o"' not in html  # already in the catalog: no checkbox
    assert 'value="gpt-4o-mini"' in html
    assert "128000" in html.replace(",", "")  # gpt-4o-mini's context window from the metadata


def test_the_model_filter_narrows_the_list_and_htmx_gets_only_the_table(staff, keyed_upstream):
    provider = make_provider(keyed_upstream.base_url)
    url = reverse("admin:providers_provider_fetch_models", args=[provider.pk])

    html = staff.get(url, {"q": "embedding"}, HTTP_HX_REQUEST="true").content.decode()

    assert "text-embedding-3-small" in html and "gpt-4o-mini" not in html and "<html" not in html


def test_importing_chosen_models_creates_priced_catalog_entries_and_routes(staff, keyed_upstream):
    provider = make_provider(keyed_upstream.base_url)
    url = reverse("admin:providers_provider_fetch_models", args=[provider.pk])

    response = staff.post(url, {"model": ["gpt-4o", "mock-model"], "create_routes": "on"})

    assert response.status_code == 302
    gpt4o = CatalogEntry.objects.get(provider=provider, model_id="gpt-4o")
    known = metadata_index().lookup("gpt-4o", "openai")
    assert gpt4o.input_price_per_m == known.input_price_per_m and gpt4o.context_window == known.context_window
    assert gpt4o.supports_tools and gpt4o.supports_vision
    unknown = CatalogEntry.objects.get(provider=provider, model_id="mock-model")
    assert unknown.input_price_per_m is None
    for name in ("gpt-4o", "mock-model"):
        target = RouteTarget.objects.get(route__name=name)
        assert (target.provider, target.upstream_model) == (provider, name)


def test_importing_again_changes_nothing(keyed_upstream):
    provider = make_provider(keyed_upstream.base_url)
    import_models(provider, ["gpt-4o"], create_routes=True)

    summary = import_models(provider, ["gpt-4o"], create_routes=True)

    assert (summary.created, summary.existing, summary.routes_created) == ([], ["gpt-4o"], [])
    assert CatalogEntry.objects.count() == Route.objects.count() == RouteTarget.objects.count() == 1


def test_an_overlong_model_id_is_refused_before_anything_is_imported(staff, keyed_upstream):
    provider = make_provider(keyed_upstream.base_url)
    response = staff.post(reverse("admin:providers_provider_fetch_models", args=[provider.pk]),
                          {"model": ["gpt-4o", "x" * 201]}, follow=True)
    assert b"longer than 200 characters" in response.content and CatalogEntry.objects.count() == 0


def test_importing_nothing_is_a_warning_not_an_error(staff, keyed_upstream):
    provider = make_provider(keyed_upstream.base_url)
    response = staff.post(reverse("admin:providers_provider_fetch_models", args=[provider.pk]), {}, follow=True)
    assert b"No model was chosen" in response.content and CatalogEntry.objects.count() == 0


# --- route targets ---------------------------------------------------------------------------

def test_a_route_target_suggests_known_models_and_warns_about_unknown_ones(staff, keyed_upstream):
    provider = make_provider(keyed_upstream.base_url)
    import_models(provider, ["gpt-4o"])
    route = Route.objects.create(name="four")
    add_url = reverse("admin:routing_routetarget_add")

    html = staff.get(add_url).content.decode()
    assert 'list="id_upstream_model-models"' in html and f'<option value="gpt-4o" data-provider="{provider.pk}">mock</option>' in html

    response = staff.post(add_url, {"route": route.pk, "provider": provider.pk, "upstream_model": "gpt-4o-typo",
                                     "priority": 1, "weight": 1, "enabled": "on"}, follow=True)
    assert RouteTarget.objects.filter(upstream_model="gpt-4o-typo").exists()  # free text is allowed
    assert "Not in the catalog" in response.content.decode() and "mock:gpt-4o-typo" in response.content.decode()


# --- presets ---------------------------------------------------------------------------------

REQUIRED_PRESETS = ["openai", "anthropic", "gemini", "azure-openai", "deepseek", "mistral", "groq", "together",
                    "fireworks", "openrouter", "xai", "perplexity", "cerebras", "moonshot", "zhipu", "zai",
                    "dashscope", "volcengine", "siliconflow", "minimax", "hunyuan", "qianfan", "stepfun",
                    "ollama", "vllm", "lm-studio"]


def test_at_least_25_presets_cover_the_known_providers_each_complete():
    presets = all_presets()
    assert len(presets) >= 25
    assert set(REQUIRED_PRESETS) <= {p.slug for p in presets}
    for preset in presets:
        assert preset.type in Provider.Type.values, preset.slug
        assert preset.base_url.startswith(("https://", "http://localhost")), preset.slug
        assert preset.docs.startswith("https://"), preset.slug
        assert preset.auth in ("bearer", "x-api-key", "x-goog-api-key", "api-key", "none"), preset.slug
    assert len({p.slug for p in presets}) == len(presets)


def test_a_saved_provider_finds_its_preset_by_host():
    assert preset_for_url("https://api.deepseek.com/v1").slug == "deepseek"
    assert preset_for_url("http://localhost:11434/v1") is None  # local servers share a host


def test_the_preset_list_is_searchable_and_links_to_a_filled_in_add_form(staff):
    url = reverse("admin:providers_provider_presets")
    html = staff.get(url, {"q": "kimi"}).content.decode()
    assert 'data-preset="moonshot"' in html and 'data-preset="openai"' not in html
    fragment = staff.get(url, {"q": "bigmodel"}, HTTP_HX_REQUEST="true").content.decode()
    assert 'data-preset="zhipu"' in fragment and "<html" not in fragment

    form = staff.get(reverse("admin:providers_provider_add"), {"preset": "deepseek"}).content.decode()
    assert 'value="https://api.deepseek.com/v1"' in form and 'id="provider-presets"' in form


def test_a_preset_fills_in_the_base_url_and_type_when_the_form_leaves_them_out(staff):
    response = staff.post(reverse("admin:providers_provider_add"), {
        **EMPTY_INLINES, "preset": "anthropic", "name": "claude", "type": "openai", "base_url": "",
        "timeout_s": 60, "weight": 1, "enabled": "on", "extra_headers": "{}"})
    assert response.status_code == 302, response.content.decode()[:3000]
    provider = Provider.objects.get(name="claude")
    assert (provider.type, provider.base_url) == ("anthropic", get_preset("anthropic").base_url)


# --- a provider key survives a failed form -------------------------------------------------

EMPTY_INLINES = {"keys-TOTAL_FORMS": 0, "keys-INITIAL_FORMS": 0, "catalog-TOTAL_FORMS": 0, "catalog-INITIAL_FORMS": 0}
NEW_SECRET = "sk-typed-on-the-add-form-5678QWER"


def test_a_key_typed_on_the_add_form_is_kept_encrypted_when_another_field_fails(staff):
    url = reverse("admin:providers_provider_add")
    data = {**EMPTY_INLINES, "keys-TOTAL_FORMS": 1, "keys-0-label": "main", "keys-0-secret": NEW_SECRET,
            "keys-0-weight": 1, "keys-0-enabled": "on", "name": "acme", "type": "openai",
            "base_url": "https://user:pw@api.acme.test/v1", "timeout_s": 60, "weight": 1, "enabled": "on",
            "extra_headers": "{}"}

    failed = staff.post(url, data)

    html = failed.content.decode()
    assert failed.status_code == 200 and "must not contain a user name or password" in html
    assert_no_secret(html, NEW_SECRET)
    pending = re.search(r'name="keys-0-pending_secret" value="([^"]+)"', html).group(1)

    fixed = staff.post(url, {**data, "base_url": "https://api.acme.test/v1", "keys-0-secret": "",
                             "keys-0-pending_secret": pending})

    assert fixed.status_code == 302
    assert ProviderKey.objects.get(provider__name="acme").get_secret() == NEW_SECRET


def test_a_forged_pending_secret_is_ignored(staff):
    provider = make_provider("https://api.acme.test/v1", secret=None)
    response = staff.post(reverse("admin:providers_providerkey_add"), {
        "provider": provider.pk, "label": "x", "secret": "", "pending_secret": "not-a-fernet-token", "weight": 1})
    assert response.status_code == 200 and b"needs its secret" in response.content


# --- model metadata --------------------------------------------------------------------------

LITELLM_SAMPLE = {
    "sample_spec": {"mode": "chat", "litellm_provider": "one of …"},
    "gpt-4o": {"mode": "chat", "litellm_provider": "openai", "max_input_tokens": 128000, "max_output_tokens": 16384,
               "input_cost_per_token": 2.5e-06, "output_cost_per_token": 1e-05, "cache_read_input_token_cost": 1.25e-06,
               "supports_function_calling": True, "supports_vision": True},
    "deepseek/deepseek-reasoner": {"mode": "chat", "litellm_provider": "deepseek", "max_tokens": 65536,
                                   "input_cost_per_token": 5.5e-07, "supports_reasoning": True},
    "text-embedding-3-small": {"mode": "embedding", "litellm_provider": "openai", "input_cost_per_token": 2e-08},
    "dall-e-3": {"mode": "image_generation", "litellm_provider": "openai"},
    "bedrock/us-east-1/x": {"mode": "chat", "litellm_provider": "bedrock"},
}


def test_litellm_prices_per_token_become_prices_per_million_and_other_modes_are_dropped():
    models = {m.key: m for m in trim_litellm(LITELLM_SAMPLE)}
    assert set(models) == {"gpt-4o", "deepseek/deepseek-reasoner", "text-embedding-3-small"}
    gpt = models["gpt-4o"]
    assert (str(gpt.input_price_per_m), str(gpt.output_price_per_m), str(gpt.cached_input_price_per_m)) == \
        ("2.500000", "10.000000", "1.250000")
    assert (gpt.context_window, gpt.max_output_tokens, gpt.supports_tools, gpt.supports_reasoning) == \
        (128000, 16384, True, False)
    reasoner = models["deepseek/deepseek-reasoner"]
    assert (reasoner.model_id, reasoner.context_window, reasoner.supports_reasoning) == ("deepseek-reasoner", 65536, True)
    assert models["text-embedding-3-small"].supports_embeddings


def test_the_refresh_command_reads_a_file_and_writes_a_trimmed_snapshot(tmp_path):
    source, output = tmp_path / "litellm.json", tmp_path / "snapshot.jsonl"
    source.write_text(json.dumps(LITELLM_SAMPLE))

    call_command("refresh_model_metadata", "--from", str(source), "--output", str(output))

    models = read_snapshot(output)
    assert [m.key for m in models] == ["deepseek/deepseek-reasoner", "gpt-4o", "text-embedding-3-small"]
    assert str(models[1].input_price_per_m) == "2.5"


def test_the_refresh_command_downloads_from_a_url(tmp_path):
    import functools
    import http.server
    import threading

    (tmp_path / "prices.json").write_text(json.dumps(LITELLM_SAMPLE))
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        output = tmp_path / "snapshot.jsonl"
        call_command("refresh_model_metadata", "--from", f"http://127.0.0.1:{server.server_port}/prices.json",
                     "--output", str(output))
    finally:
        server.shutdown()
        server.server_close()
    assert len(read_snapshot(output)) == 3


def test_the_refresh_command_refuses_a_file_that_is_not_litellms_list(tmp_path):
    from django.core.management.base import CommandError

    bad = tmp_path / "bad.json"
    bad.write_text('{"hello": "world"}')
    with pytest.raises(CommandError, match="no chat or embedding models"):
        call_command("refresh_model_metadata", "--from", str(bad), "--output", str(tmp_path / "x.jsonl"))


def test_the_shipped_snapshot_knows_the_common_models():
    index = metadata_index()
    assert len(index) > 1000
    for model_id, provider in [("gpt-4o", "openai"), ("deepseek-chat", "deepseek"), ("qwen-turbo", "dashscope")]:
        found = index.lookup(model_id, provider)
        assert found is not None and found.input_price_per_m is not None, model_id


def test_metadata_is_searchable_and_applied_to_a_catalog_entry_in_one_click(staff):
    provider = make_provider("https://api.openai.com/v1", name="openai", secret=None)
    entry = CatalogEntry.objects.create(provider=provider, model_id="gpt-4o")
    search = staff.get(reverse("admin:providers_model_metadata"), {"q": "gpt-4o-mini", "entry": entry.pk})
    assert b"<code>gpt-4o-mini</code>" in search.content and b"Apply to gpt-4o" in search.content

    page = staff.get(reverse("admin:providers_catalogentry_change", args=[entry.pk])).content.decode()
    assert 'id="apply-metadata"' in page
    staff.post(reverse("admin:providers_catalogentry_apply_metadata", args=[entry.pk]), {"key": "gpt-4o"})

    entry.refresh_from_db()
    assert entry.input_price_per_m == metadata_index().get("gpt-4o").input_price_per_m
    assert entry.context_window == 128000 and entry.supports_vision


def test_the_catalog_action_prices_many_entries_and_names_the_unknown_ones(staff):
    provider = make_provider("https://api.openai.com/v1", name="openai", secret=None)
    known = CatalogEntry.objects.create(provider=provider, model_id="gpt-4o-mini")
    unknown = CatalogEntry.objects.create(provider=provider, model_id="in-house-model")

    response = staff.post(reverse("admin:providers_catalogentry_changelist"), {
        "action": "apply_model_metadata", "_selected_action": [known.pk, unknown.pk]}, follow=True)

    known.refresh_from_db()
    assert known.input_price_per_m is not None
    assert "No metadata known for: in-house-model" in response.content.decode()


# --- the overview ----------------------------------------------------------------------------

def test_the_overview_counts_what_is_configured_and_links_to_the_failures(staff, keyed_upstream):
    from django.utils import timezone

    from routing.models import RequestLog

    make_provider(keyed_upstream.base_url)
    for i, status in enumerate([200, 200, 429]):
        RequestLog.objects.create(request_id=f"req_{i}", created_at=timezone.now(), endpoint="chat", status=status)

    html = staff.get(reverse("admin:index")).content.decode()

    cards = dict((label.strip(), int(value)) for value, label in re.findall(
        r'<span class="gw-card-value">([\d,]+)</span>\s*<span class="gw-card-label">([^<]+)</span>', html))
    assert cards["Providers"] == 1 and cards["Provider keys"] == 1
    assert cards["Requests, last 24 h"] == 3 and cards["Failed requests, last 24 h"] == 1
    assert reverse("admin:providers_provider_presets") in html
    failures = staff.get(reverse("admin:routing_requestlog_changelist") + "?status__gte=400")
    assert failures.status_code == 200
    assert [log.request_id for log in failures.context["cl"].result_list] == ["req_2"]


# --- each provider type's auth and model list (pure) ------------------------------------------

def test_each_provider_type_sends_its_key_its_own_way():
    from providers.connection import auth_headers

    assert auth_headers("openai", "k") == {"Authorization": "Bearer k"}
    assert auth_headers("anthropic", "k") == {"x-api-key": "k", "anthropic-version": "2023-06-01"}
    assert auth_headers("gemini", "k") == {"x-goog-api-key": "k"}
    assert auth_headers("azure_openai", "k") == {"api-key": "k"}
    assert auth_headers("openai", None) == {}  # local servers without keys


def test_model_lists_are_read_in_openai_anthropic_and_gemini_shapes():
    from providers.connection import parse_model_list

    assert parse_model_list("openai", {"object": "list", "data": [{"id": "b"}, {"id": "a"}]}) == ["a", "b"]
    assert parse_model_list("anthropic", {"data": [{"id": "claude-x", "type": "model"}], "has_more": False}) == ["claude-x"]
    assert parse_model_list("gemini", {"models": [{"name": "models/gemini-2.0-flash"}]}) == ["gemini-2.0-flash"]
    with pytest.raises(ValueError):
        parse_model_list("openai", {"error": "nope"})
