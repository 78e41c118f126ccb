"""English and Simplified Chinese: the catalogue is complete and compiled, and the admin switches language."""
import gettext
import re
import shutil
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest
from django.urls import reverse

from providers.models import Provider
from routing.models import RequestLog

BASE_DIR = Path(__file__).resolve().parent.parent
PO_FILE = BASE_DIR / "locale" / "zh_Hans" / "LC_MESSAGES" / "django.po"
MO_FILE = PO_FILE.with_suffix(".mo")
SOURCES = ["manage.py", "llmgateway", "providers", "routing", "keys", "healthcheck", "templates", "locale"]
IGNORED = ["tests", "bench", "docs", "var", "staticfiles"]


def require_gettext():
    if shutil.which("xgettext") is None or shutil.which("msgfmt") is None:
        pytest.fail("GNU gettext is needed to check the catalogue: apt-get install gettext")


def po_entries(path: Path) -> list[dict]:
    """The entries of a .po file: msgid, msgstr (or msgstr[0]), flags; obsolete (#~) ones left out."""
    entries = []
    for block in path.read_text(encoding="utf-8").split("\n\n"):
        lines = [line for line in block.splitlines() if not line.startswith("#~")]
        entry, key = {"flags": ""}, None
        for line in lines:
            if line.startswith("#,"):
                entry["flags"] = line
            match = re.match(r'^(msgid|msgid_plural|msgstr(?:\[0\])?) "(.*)"$', line)
            if match:
                key = "msgstr" if match.group(1).startswith("msgstr") else match.group(1)
                entry[key] = match.group(2)
            elif line.startswith('"') and key:
                entry[key] += line[1:-1]
        if entry.get("msgid"):
            entries.append(entry)
    return entries


def test_every_user_facing_string_has_a_chinese_translation(tmp_path):
    """makemessages over a copy of the sources merges in any newly marked string, untranslated."""
    require_gettext()
    for name in SOURCES:
        source = BASE_DIR / name
        if source.is_dir():
            shutil.copytree(source, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__", "data"))
        else:
            shutil.copy(source, tmp_path / name)
    command = [sys.executable, "manage.py", "makemessages", "-l", "zh_Hans", "--no-obsolete"]
    command += [f"--ignore={name}" for name in IGNORED]
    subprocess.run(command, cwd=tmp_path, check=True, capture_output=True, timeout=120)

    entries = po_entries(tmp_path / "locale" / "zh_Hans" / "LC_MESSAGES" / "django.po")

    assert len(entries) > 200
    untranslated = [e["msgid"] for e in entries if not e.get("msgstr")]
    fuzzy = [e["msgid"] for e in entries if "fuzzy" in e["flags"]]
    assert untranslated == [], "add these to locale/zh_Hans/LC_MESSAGES/django.po"
    assert fuzzy == [], "check these fuzzy (guessed) translations"


def test_the_shipped_compiled_catalogue_matches_the_po_file(tmp_path):
    require_gettext()
    compiled = tmp_path / "django.mo"
    subprocess.run(["msgfmt", "--check", "-o", str(compiled), str(PO_FILE)], check=True, capture_output=True)
    with open(compiled, "rb") as fresh, open(MO_FILE, "rb") as shipped:
        assert gettext.GNUTranslations(shipped)._catalog == gettext.GNUTranslations(fresh)._catalog, \
            "run: python manage.py compilemessages -l zh_Hans"


@pytest.fixture
def staff(client, django_user_model):
    client.force_login(django_user_model.objects.create_superuser("ops", "ops@example.com", "pw-for-tests-only"))
    return client


@pytest.mark.django_db
def test_the_language_switch_turns_the_admin_chinese_and_back(staff):
    Provider.objects.create(name="deepseek", base_url="https://api.deepseek.com/v1")
    response = staff.post(reverse("set_language"), {"language": "zh-hans", "next": reverse("admin:index")}, follow=True)

    html = response.content.decode()
    assert 'lang="zh-hans"' in html
    for chinese in ("概览", "供应商", "虚拟密钥", "请求日志", "从预设添加供应商"):
        assert chinese in html
    providers = staff.get(reverse("admin:providers_provider_changelist")).content.decode()
    assert "基础 URL" in providers and "从预设添加供应商" in providers

    staff.post(reverse("set_language"), {"language": "en", "next": "/admin/"})
    assert "Add a provider from a preset" in staff.get(reverse("admin:index")).content.decode()


@pytest.mark.django_db
def test_the_admin_follows_the_browsers_language(staff):
    html = staff.get(reverse("admin:index"), HTTP_ACCEPT_LANGUAGE="zh-CN,zh;q=0.9").content.decode()
    assert "概览" in html


@pytest.mark.django_db
def test_dates_are_written_the_chinese_way_in_chinese(staff):
    RequestLog.objects.create(request_id="req_zh", created_at=datetime(2026, 3, 4, 5, 6, tzinfo=timezone.utc),
                              endpoint="chat", status=200, model_requested="gpt-4o")
    chinese = staff.get(reverse("admin:index"), HTTP_ACCEPT_LANGUAGE="zh-hans").content.decode()
    english = staff.get(reverse("admin:index"), HTTP_ACCEPT_LANGUAGE="en").content.decode()
    assert "2026年3月4日" in chinese
    assert "2026年3月4日" not in english and "03/04/2026" in english


@pytest.mark.django_db
def test_validation_messages_are_translated_too(staff):
    response = staff.post(reverse("admin:routing_route_add"), {
        "targets-TOTAL_FORMS": 0, "targets-INITIAL_FORMS": 0, "prompt_rules-TOTAL_FORMS": 0,
        "prompt_rules-INITIAL_FORMS": 0, "name": "m", "aliases": "[]", "strategy": "priority", "enabled": "on",
        "max_attempts": 3, "retry_on_status": "[700]", "cooldown_s": 30, "description": ""},
        HTTP_ACCEPT_LANGUAGE="zh-hans")
    assert "700 不是 HTTP 状态码（100-599）" in response.content.decode()
