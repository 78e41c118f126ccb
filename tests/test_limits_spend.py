"""Spend in the database (persist, rebuild after a lost Redis) and live usage in the VirtualKey admin."""
import itertools
import time
from decimal import Decimal

import pytest
from django.urls import reverse
from django.utils import timezone

from keys.auth import key_entry
from keys.limits import (
    DIRTY_SPEND_KEY, admit, budget_period, persist_spend, rebuild_spend_from_logs, settle, spend_key,
)
from keys.models import KeySpend, VirtualKey
from llmgateway.redis import sync_client
from routing.models import RequestLog
from tests.test_limits import run

_names = itertools.count()


def make_virtual_key(**overrides) -> VirtualKey:
    fields = {"name": f"spender-{time.time_ns()}-{next(_names)}", "budget_usd": Decimal("10"),
              "budget_period": "monthly"}
    fields.update(overrides)
    vk = VirtualKey(**fields)
    vk.set_key()
    vk.save()
    # Rolled-back tests hand the same ids out again; their Redis counters must not carry over.
    client = sync_client()
    for name in client.scan_iter(match=f"gw:lim:{{{vk.pk}}}:*"):
        client.delete(name)
    return vk


def make_request_log(vk: VirtualKey, cost: str, **overrides) -> RequestLog:
    fields = {"request_id": f"req_{time.time_ns()}_{next(_names)}", "created_at": timezone.now(),
              "endpoint": "chat", "status": 200, "virtual_key": vk, "cost_usd": Decimal(cost)}
    fields.update(overrides)
    return RequestLog.objects.create(**fields)


def spend_now(vk: VirtualKey) -> bytes | None:
    return sync_client().get(spend_key(vk.pk, budget_period(vk.budget_period)[0]))


def settle_one(vk: VirtualKey, cost: float):
    entry = key_entry(vk, [])

    async def work(r):
        a = await admit(entry, estimated_tokens=0, max_cost_usd=cost, redis=r)
        assert a.allowed
        await settle(a, actual_tokens=0, actual_cost_usd=cost, redis=r)

    run(work)


@pytest.fixture
def clean_dirty_set():
    sync_client().delete(DIRTY_SPEND_KEY)


@pytest.mark.django_db
def test_persist_spend_copies_settled_spend_into_the_database(clean_dirty_set):
    vk = make_virtual_key()
    settle_one(vk, 0.25)
    settle_one(vk, 0.5)
    assert persist_spend() == 1
    row = KeySpend.objects.get(virtual_key=vk)
    assert row.period == budget_period("monthly")[0]
    assert row.spent_usd == Decimal("0.75")
    assert persist_spend() == 0  # nothing changed since


@pytest.mark.django_db
def test_the_beat_task_persists_spend(clean_dirty_set):
    from keys.tasks import persist_key_spend

    vk = make_virtual_key()
    settle_one(vk, 0.125)
    assert persist_key_spend.apply().get() == 1
    assert KeySpend.objects.get(virtual_key=vk).spent_usd == Decimal("0.125")


@pytest.mark.django_db
def test_a_spend_lost_by_redis_is_rebuilt_from_the_request_log(clean_dirty_set):
    vk = make_virtual_key()
    make_request_log(vk, "1.25")
    make_request_log(vk, "0.50")
    make_request_log(vk, "9.00", created_at=timezone.now().replace(year=2020))  # an old period
    assert spend_now(vk) is None
    persist_spend()  # finds the budgeted key without a spend in Redis
    assert int(spend_now(vk)) == 1_750_000


@pytest.mark.django_db
def test_rebuild_never_lowers_a_spend_redis_already_counts(clean_dirty_set):
    vk = make_virtual_key()
    make_request_log(vk, "0.10")
    settle_one(vk, 0.3)
    assert rebuild_spend_from_logs(vk.pk) == Decimal("0.3")
    KeySpend.objects.create(virtual_key=vk, period=budget_period("monthly")[0], spent_usd=Decimal("2"))
    assert rebuild_spend_from_logs(vk.pk) == Decimal("2")


@pytest.mark.django_db
def test_the_virtual_key_admin_shows_live_usage(admin_client):
    vk = make_virtual_key(budget_usd=Decimal("4"), rpm=60)
    settle_one(vk, 1.5)
    page = admin_client.get(reverse("admin:keys_virtualkey_change", args=[vk.pk])).content.decode()
    assert "requests in the last minute" in page and "1 of 60" in page
    assert "$1.500000" in page and "$2.500000 of $4.00" in page
    listing = admin_client.get(reverse("admin:keys_virtualkey_changelist")).content.decode()
    assert "$1.5000 of $4.00" in listing


@pytest.mark.django_db
def test_the_admin_says_so_when_redis_is_unreachable(admin_client, settings):
    from tests.test_limits import closed_port_url

    vk = make_virtual_key()
    settings.REDIS_URL = closed_port_url()
    sync_client.cache_clear()
    try:
        page = admin_client.get(reverse("admin:keys_virtualkey_change", args=[vk.pk])).content.decode()
        listing = admin_client.get(reverse("admin:keys_virtualkey_changelist")).content.decode()
    finally:
        sync_client.cache_clear()
    assert "unavailable (Redis unreachable)" in page
    assert "unavailable (Redis unreachable)" in listing
