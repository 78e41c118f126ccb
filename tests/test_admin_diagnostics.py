"""What translation dropped is shown on the request log: a marker on the row, the list on its page."""
import pytest
from django.urls import reverse
from django.utils import timezone

from routing.models import RequestLog

DROPPED = ("messages[1].reasoning: signed or encrypted reasoning has no equivalent\n"
           "tools.0: built-in tool 'web_search' has no equivalent")


@pytest.fixture
def staff(client, django_user_model):
    client.force_login(django_user_model.objects.create_superuser("ops", "ops@example.com", "pw-for-tests-only"))
    return client


def make_log(request_id, **fields):
    return RequestLog.objects.create(request_id=request_id, created_at=timezone.now(), endpoint="messages",
                                     status=200, model_requested=f"model-of-{request_id}", **fields)


@pytest.mark.django_db
def test_a_row_whose_translation_dropped_fields_is_marked_in_the_list(staff):
    make_log("req_dropped", diagnostics=DROPPED)
    make_log("req_clean")

    html = staff.get(reverse("admin:routing_requestlog_changelist")).content.decode()

    assert html.count("diagnostics-marker") == 1
    assert 'title="2 fields dropped: messages[1].reasoning, tools.0">⚠ 2</span>' in html
    only = staff.get(reverse("admin:routing_requestlog_changelist") + "?dropped=yes").content.decode()
    assert "model-of-req_dropped" in only and "model-of-req_clean" not in only
    none = staff.get(reverse("admin:routing_requestlog_changelist") + "?dropped=no").content.decode()
    assert "model-of-req_clean" in none and "model-of-req_dropped" not in none


@pytest.mark.django_db
def test_the_entry_page_lists_each_dropped_field_with_its_reason(staff):
    row = make_log("req_dropped", diagnostics=DROPPED)

    html = staff.get(reverse("admin:routing_requestlog_change", args=[row.pk])).content.decode()

    assert '<ul class="diagnostics">' in html
    assert "<li><code>messages[1].reasoning</code>: signed or encrypted reasoning has no equivalent</li>" in html
    assert "<li><code>tools.0</code>: built-in tool &#x27;web_search&#x27; has no equivalent</li>" in html


@pytest.mark.django_db
def test_the_marker_and_the_list_speak_chinese(staff):
    row = make_log("req_dropped", diagnostics=DROPPED)
    make_log("req_clean")

    listing = staff.get(reverse("admin:routing_requestlog_changelist"), HTTP_ACCEPT_LANGUAGE="zh-hans")
    page = staff.get(reverse("admin:routing_requestlog_change", args=[row.pk]), HTTP_ACCEPT_LANGUAGE="zh-hans")
    clean = RequestLog.objects.get(request_id="req_clean")
    nothing = staff.get(reverse("admin:routing_requestlog_change", args=[clean.pk]), HTTP_ACCEPT_LANGUAGE="zh-hans")

    assert "丢弃了 2 个字段" in listing.content.decode()
    assert "丢弃的字段" in page.content.decode()
    assert "没有丢弃任何内容。" in nothing.content.decode()
