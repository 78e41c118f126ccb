"""Junk traffic is bounded: refusals before a key is known are counted per client IP, not
logged a row each, and an address that keeps failing authentication is refused for a while."""
import itertools
import signal
import time

import httpx
import pytest
from django.utils import timezone

from llmgateway.clientip import client_ip

from .conftest import DISABLED_KEY, EXPIRED_KEY, FULL_KEY, wait_for_log, wait_for_model

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}]}
MESSAGES = {"model": "gpt-4o-mini", "max_tokens": 16, "messages": [{"role": "user", "content": "hello"}]}
_addresses = itertools.count(1)


def new_client_address() -> str:
    """An address of its own for each test (TEST-NET-3), sent through the trusted proxy."""
    return f"203.0.113.{next(_addresses)}"


def via_proxy(ip: str, **headers) -> dict:
    return {"X-Forwarded-For": f"198.51.100.99, {ip}", **headers}


@pytest.fixture(scope="module")
def slowing_gateway(gateway_factory):
    return gateway_factory(GATEWAY_TRUSTED_PROXIES="127.0.0.1", GATEWAY_AUTH_FAILURES_PER_IP="20",
                           GATEWAY_AUTH_FAILURE_WINDOW_S="60", GATEWAY_AUTH_BLOCK_S="30")


@pytest.fixture
def junk_gateway(live, slowing_gateway):
    """A gateway behind a trusted proxy (this loopback address), with the slow-down on."""
    wait_for_model(slowing_gateway, "gpt-4o-mini")
    return slowing_gateway


def refused_rows(ip: str):
    from routing.models import RefusedTraffic

    return list(RefusedTraffic.objects.filter(client_ip=ip))


def wait_for_refusals(ip: str, total: int, timeout: float = 10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = refused_rows(ip)
        if sum(row.count for row in rows) >= total:
            return rows
        time.sleep(0.1)
    raise AssertionError(f"refusals of {ip}: {[(r.reason, r.count) for r in refused_rows(ip)]}, expected {total}")


def test_the_client_ip_is_the_peer_unless_the_peer_is_a_trusted_proxy():
    trusted = ["127.0.0.1", "10.0.0.0/8"]
    assert client_ip("198.51.100.7", "203.0.113.5", trusted) == "198.51.100.7"
    assert client_ip("127.0.0.1", "1.1.1.1, 203.0.113.5, 10.0.0.2", trusted) == "203.0.113.5"
    assert client_ip("127.0.0.1", "garbage", trusted) == "127.0.0.1"
    assert client_ip("127.0.0.1", "203.0.113.5", []) == "127.0.0.1"


def test_500_unknown_key_requests_add_a_handful_of_rows_not_500(gateway_factory, live, db_access):
    from routing.models import RequestLog

    gateway = gateway_factory(GATEWAY_TRUSTED_PROXIES="127.0.0.1", GATEWAY_AUTH_FAILURES_PER_IP="0")
    wait_for_model(gateway, "gpt-4o-mini")
    ip = new_client_address()
    started = timezone.now()
    with httpx.Client(base_url=gateway.url) as client:
        for n in range(500):
            answer = client.post("/v1/chat/completions", json=CHAT,
                                 headers=via_proxy(ip, Authorization=f"Bearer sk-guess-{n}"))
            assert answer.status_code == 401
        assert client.post("/v1/chat/completions", json=CHAT, headers=via_proxy(ip)).status_code == 401
        assert client.get("/v1/no/such/thing", headers=via_proxy(ip)).status_code == 404
    rows = wait_for_refusals(ip, 502)
    by_reason = {}
    for row in rows:
        by_reason[row.reason] = by_reason.get(row.reason, 0) + row.count
    assert by_reason == {"no such key": 500, "no key": 1, "unknown path": 1}
    assert len(rows) <= 6  # one per reason and minute
    assert {row.endpoint for row in rows} == {"chat", "other"}
    assert RequestLog.objects.filter(client_ip=ip).count() == 0
    assert RequestLog.objects.filter(status=401, created_at__gte=started).count() == 0


def test_an_address_that_keeps_failing_gets_429_in_openai_format_and_other_addresses_do_not(junk_gateway,
                                                                                           db_access):
    guesser, neighbour = new_client_address(), new_client_address()
    with httpx.Client(base_url=junk_gateway.url) as client:
        answers = [client.post("/v1/chat/completions", json=CHAT,
                               headers=via_proxy(guesser, Authorization=f"Bearer sk-guess-{n}"))
                   for n in range(20)]
        assert [a.status_code for a in answers] == [401] * 20
        refused = client.post("/v1/chat/completions", json=CHAT,
                              headers=via_proxy(guesser, Authorization="Bearer sk-guess-again"))
        # Refused with a valid key too: a guesser cannot tell a hit among the 429s.
        with_valid_key = client.post("/v1/chat/completions", json=CHAT,
                                     headers=via_proxy(guesser, Authorization=f"Bearer {FULL_KEY}"))
        neighbour_served = client.post("/v1/chat/completions", json=CHAT,
                                       headers=via_proxy(neighbour, Authorization=f"Bearer {FULL_KEY}"))
    assert refused.status_code == 429
    assert 25 <= int(refused.headers["retry-after"]) <= 30
    error = refused.json()["error"]
    assert error["type"] == "rate_limit_error" and error["code"] == "too_many_auth_failures"
    assert "try again in" in error["message"]
    assert with_valid_key.status_code == 429
    assert neighbour_served.status_code == 200
    rows = wait_for_refusals(guesser, 22)
    assert sum(r.count for r in rows if r.reason == "too many failed authentications") == 2


def test_an_address_that_keeps_failing_gets_429_in_anthropic_format(junk_gateway):
    guesser = new_client_address()
    headers = via_proxy(guesser, **{"anthropic-version": "2023-06-01"})
    with httpx.Client(base_url=junk_gateway.url) as client:
        for n in range(20):
            answer = client.post("/v1/messages", json=MESSAGES, headers={**headers, "x-api-key": f"sk-guess-{n}"})
            assert answer.status_code == 401
            assert answer.json()["type"] == "error"
        refused = client.post("/v1/messages", json=MESSAGES, headers={**headers, "x-api-key": "sk-guess-more"})
    assert refused.status_code == 429
    assert int(refused.headers["retry-after"]) > 0
    body = refused.json()
    assert body["type"] == "error" and body["error"]["type"] == "rate_limit_error"


def test_unknown_disabled_and_expired_keys_count_alike_and_are_answered_alike(junk_gateway, db_access):
    guesser = new_client_address()
    with httpx.Client(base_url=junk_gateway.url) as client:
        def ask(key):
            return client.post("/v1/chat/completions", json=CHAT,
                               headers=via_proxy(guesser, Authorization=f"Bearer {key}"))

        failures = [ask(key) for key in [DISABLED_KEY, EXPIRED_KEY, "sk-no-such-key"] * 6 + [DISABLED_KEY] * 2]
        blocked = [ask(key) for key in (DISABLED_KEY, EXPIRED_KEY, "sk-no-such-key")]
    assert {(a.status_code, a.json()["error"]["message"]) for a in failures} == {
        (401, "Incorrect API key provided.")}
    assert {a.status_code for a in blocked} == {429}
    assert len({a.json()["error"]["message"] for a in blocked}) == 1
    assert len({a.headers.get("retry-after") is not None for a in blocked}) == 1
    # Known keys' refusals are request-log rows with the real reason; unknown keys' are counted.
    assert wait_for_log(failures[0].headers["x-request-id"]).error_message == "the key is disabled"
    assert wait_for_log(failures[1].headers["x-request-id"]).error_message == "the key has expired"
    rows = wait_for_refusals(guesser, 6 + 3)
    assert sum(r.count for r in rows if r.reason == "no such key") == 6


def test_the_slow_down_is_shared_by_every_process(junk_gateway, gateway_factory):
    other = gateway_factory(GATEWAY_TRUSTED_PROXIES="127.0.0.1", GATEWAY_AUTH_FAILURES_PER_IP="20",
                            GATEWAY_AUTH_BLOCK_S="30")
    wait_for_model(other, "gpt-4o-mini")
    guesser = new_client_address()
    for n in range(20):
        gateway = (junk_gateway, other)[n % 2]
        answer = httpx.post(gateway.url + "/v1/chat/completions", json=CHAT,
                            headers=via_proxy(guesser, Authorization=f"Bearer sk-guess-{n}"))
        assert answer.status_code == 401
    for gateway in (junk_gateway, other):
        answer = httpx.post(gateway.url + "/v1/chat/completions", json=CHAT,
                            headers=via_proxy(guesser, Authorization="Bearer sk-guess-more"))
        assert answer.status_code == 429


def test_an_untrusted_peer_cannot_pick_its_address_with_x_forwarded_for(gateway_factory, live, db_access):
    gateway = gateway_factory(GATEWAY_AUTH_FAILURES_PER_IP="0")  # no trusted proxy
    wait_for_model(gateway, "gpt-4o-mini")
    claimed = new_client_address()
    answer = httpx.post(gateway.url + "/v1/chat/completions", json=CHAT,
                        headers={"X-Forwarded-For": claimed, "Authorization": "Bearer sk-guess"})
    assert answer.status_code == 401
    time.sleep(1.5)  # two flush windows
    assert refused_rows(claimed) == []


def test_counted_refusals_are_written_on_sigterm(gateway_factory, live, db_access):
    gateway = gateway_factory(GATEWAY_TRUSTED_PROXIES="127.0.0.1", GATEWAY_AUTH_FAILURES_PER_IP="0",
                              GATEWAY_LOG_FLUSH_S="60")  # nothing is written until the stop
    wait_for_model(gateway, "gpt-4o-mini")
    ip = new_client_address()
    with httpx.Client(base_url=gateway.url) as client:
        for n in range(50):
            assert client.get("/v1/models", headers=via_proxy(ip, Authorization=f"Bearer sk-{n}")).status_code == 401
    time.sleep(0.3)
    assert refused_rows(ip) == []
    output = gateway.stop(signal.SIGTERM)
    assert gateway.proc.returncode is not None
    rows = refused_rows(ip)
    assert sum(row.count for row in rows) == 50, output
    assert {(row.reason, row.endpoint) for row in rows} == {("no such key", "models")}
