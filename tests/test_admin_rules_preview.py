"""The route page's live preview of prompt rules (rules as typed, saved or not) and its relay presets."""
import json

import pytest
from django.urls import reverse

from routing.models import PromptRule, RequestLog, Route
from tests.factories import make_provider, make_route

pytestmark = pytest.mark.django_db
CHAT = {"model": "m", "messages": [{"role": "system", "content": "You are Codex."},
                                   {"role": "user", "content": "fix the bug"}]}
HTMX = {"HTTP_HX_REQUEST": "true"}


@pytest.fixture
def staff(client, django_user_model):
    client.force_login(django_user_model.objects.create_superuser("ops", "ops@example.com", "pw-for-tests-only"))
    return client


def form_data(*rules, targets=(), body=CHAT, protocol="chat", **extra) -> dict:
    """What the route's change form posts: its inline rows (as typed, unsaved) and the preview fields."""
    data = {"prompt_rules-TOTAL_FORMS": str(len(rules)), "prompt_rules-INITIAL_FORMS": "0",
            "targets-TOTAL_FORMS": str(len(targets)), "targets-INITIAL_FORMS": "0",
            "preview_protocol": protocol, "preview_body": json.dumps(body) if isinstance(body, dict) else body,
            **extra}
    for i, rule in enumerate(rules):
        rule = {"order": "0", "pattern": "", "text": "", "enabled": "on", **rule}
        data.update({f"prompt_rules-{i}-{name}": value for name, value in rule.items() if value is not None})
    for i, target in enumerate(targets):
        target = {"priority": "1", "weight": "1", "enabled": "on", **target}
        data.update({f"targets-{i}-{name}": value for name, value in target.items()})
    return data


def preview(client, data, htmx=True):
    return client.post(reverse("admin:routing_route_preview"), data, **(HTMX if htmx else {}))


def test_the_route_page_offers_the_preview_and_the_relay_presets(staff):
    route = make_route(name="coder")
    page = staff.get(reverse("admin:routing_route_change", args=[route.pk])).content.decode()
    assert 'id="rule-preview"' in page and 'name="preview_body"' in page
    assert 'hx-post="/admin/routing/route/preview/"' in page and 'formaction="/admin/routing/route/preview/"' in page
    assert "x-anthropic-billing-header" in page and 'id="preset-strip_instructions"' in page


def test_the_preview_applies_unsaved_rules_and_shows_a_diff(staff):
    response = preview(staff, form_data({"operation": "system_append", "text": "Answer in French."},
                                        {"operation": "user_template", "text": "[{{model}}] {{user_prompt}}",
                                         "order": "2"}))
    html = response.content.decode()
    assert response.status_code == 200 and "<html" not in html  # only the fragment
    assert '<span class="gw-diff-del">-      &quot;content&quot;: &quot;fix the bug&quot;</span>' in html
    assert '<span class="gw-diff-add">+      &quot;content&quot;: &quot;[m] fix the bug&quot;</span>' in html
    assert "You are Codex.\\n\\nAnswer in French." in html
    assert not PromptRule.objects.exists()


def test_disabled_and_deleted_rows_do_not_apply(staff):
    html = preview(staff, form_data({"operation": "system_replace", "text": "X", "enabled": None},
                                    {"operation": "system_replace", "text": "Y", "DELETE": "on"})).content.decode()
    assert "The rules change nothing in this request." in html and "0 enabled rules applied." in html


def test_without_javascript_the_preview_is_a_whole_admin_page(staff):
    response = preview(staff, form_data({"operation": "strip_system"}), htmx=False)
    html = response.content.decode()
    assert response.status_code == 200 and "<html" in html and 'id="preview-diff"' in html
    assert "-      &quot;content&quot;: &quot;You are Codex.&quot;" in html


def test_the_preview_speaks_each_protocol(staff):
    messages = {"model": "c", "max_tokens": 10, "system": [
        {"type": "text", "text": "x-anthropic-billing-header: cc_version=2.1.1.abc; cc_entrypoint=cli; cch=1a2b3;"},
        {"type": "text", "text": "You are Claude Code."}], "messages": [{"role": "user", "content": "hi"}]}
    html = preview(staff, form_data({"operation": "strip_billing_header"}, body=messages,
                                    protocol="messages")).content.decode()
    assert "-      &quot;text&quot;: &quot;x-anthropic-billing-header" in html
    responses = {"model": "gpt", "instructions": "You are Codex.", "input": "hi"}
    html = preview(staff, form_data({"operation": "strip_instructions"}, body=responses,
                                    protocol="responses")).content.decode()
    assert '-  &quot;instructions&quot;: &quot;You are Codex.&quot;,' in html


def test_a_target_of_another_protocol_shows_the_translated_body(staff):
    anthropic = make_provider("http://127.0.0.1:9/v1", type="anthropic", name="claude-direct")
    html = preview(staff, form_data({"operation": "system_append", "text": "Be brief."},
                                    targets=[{"provider": str(anthropic.pk), "upstream_model": "claude-haiku"}])
                   ).content.decode()
    assert "translated to anthropic_messages" in html
    upstream = html.split('id="preview-upstream">')[1].split("</pre>")[0]
    assert "&quot;system&quot;: &quot;You are Codex.\\n\\nBe brief.&quot;" in upstream
    assert "&quot;model&quot;: &quot;claude-haiku&quot;" in upstream


def test_a_same_protocol_target_changes_only_the_model_name_besides_the_rules(staff):
    openai = make_provider("http://127.0.0.1:9/v1", name="openai-direct")
    html = preview(staff, form_data(targets=[{"provider": str(openai.pk), "upstream_model": "gpt-4o-mini"}])
                   ).content.decode()
    diff = html.split('id="preview-diff">')[1].split("</pre>")[0]
    assert diff.count("gw-diff-del") == 1 and "+  &quot;model&quot;: &quot;gpt-4o-mini&quot;," in diff


def test_invalid_rules_and_bodies_are_explained_not_previewed(staff):
    html = preview(staff, form_data({"operation": "remove", "pattern": "(unclosed"})).content.decode()
    assert "Some rules are not valid" in html and "invalid regular expression" in html
    assert 'id="preview-outcome"' not in html
    html = preview(staff, form_data({"operation": "user_append"})).content.decode()
    assert "required for this operation" in html
    assert "Not valid JSON" in preview(staff, form_data(body="{not json")).content.decode()
    assert "A request body is a JSON object." in preview(staff, form_data(body="[1]")).content.decode()
    assert "Paste a request body" in preview(staff, form_data(body="")).content.decode()


def test_a_logged_request_can_be_previewed(staff):
    route = make_route(name="logged")
    body = {"model": "logged", "input": "what is new?", "instructions": "Be Codex."}
    log = RequestLog.objects.create(request_id="req-1", created_at="2026-12-01T10:00:00Z", endpoint="responses",
                                    route="logged", status=200, request_body=json.dumps(body))
    page = staff.get(reverse("admin:routing_route_change", args=[route.pk])).content.decode()
    assert f'<option value="{log.pk}">' in page
    html = preview(staff, form_data({"operation": "user_prepend", "text": "Note:"}, body="",
                                    preview_log=str(log.pk))).content.decode()
    assert "+  &quot;input&quot;: &quot;Note:\\n\\nwhat is new?&quot;," in html


def test_a_relay_preset_is_added_in_one_click_after_the_other_rules(staff):
    route = make_route(name="relay")
    PromptRule.objects.create(route=route, operation="system_append", text="x", order=4)
    response = staff.post(reverse("admin:routing_route_add_preset", args=[route.pk, "strip_billing_header"]))
    assert response.status_code == 302
    rule = route.prompt_rules.get(operation="strip_billing_header")
    assert rule.order == 5 and rule.enabled
    assert staff.post(reverse("admin:routing_route_add_preset", args=[route.pk, "replace"])).status_code == 403


def test_the_preview_needs_a_logged_in_operator(client):
    response = client.post(reverse("admin:routing_route_preview"), form_data())
    assert response.status_code == 302 and "/login/" in response["Location"]
    assert Route.objects.count() == 0


def test_only_operators_who_may_read_the_request_log_preview_a_logged_request(client, django_user_model):
    from django.contrib.auth.models import Permission

    editor = django_user_model.objects.create_user("editor", password="pw-for-tests-only", is_staff=True)
    editor.user_permissions.set(Permission.objects.filter(codename__in=["view_route", "change_route"]))
    client.force_login(editor)
    route = make_route(name="private")
    log = RequestLog.objects.create(request_id="req-2", created_at="2026-12-01T10:00:00Z", endpoint="chat",
                                    route="private", status=200, request_body=json.dumps(CHAT))
    assert f'<option value="{log.pk}">' not in client.get(
        reverse("admin:routing_route_change", args=[route.pk])).content.decode()
    assert preview(client, form_data(body="", preview_log=str(log.pk))).status_code == 403
    assert preview(client, form_data({"operation": "strip_system"})).status_code == 200
