"""The pipeline over real sockets: failover, classification, timeouts, records, and the
defects found in review, each reproduced against the mock upstream."""
import json
import time

import httpx
import pytest

from providers.mock_upstream import MockUpstreamThread

from .conftest import FULL_KEY, free_port, wait_for_log, wait_for_model
from .factories import PROVIDER_SECRET, make_key, make_provider, make_route

CHAT = {"messages": [{"role": "user", "content": "hello"}]}


def post(gateway, body, key=FULL_KEY, timeout=30, **kwargs):
    return httpx.post(gateway.url + "/v1/chat/completions", json=body,
                      headers={"Authorization": f"Bearer {key}"}, timeout=timeout, **kwargs)


def ready(gateway, route, key=FULL_KEY):
    wait_for_model(gateway, route.name, key=key)
    return route.name


def sse_data(text: str) -> list[str]:
    return [line[6:] for line in text.splitlines() if line.startswith("data: ")]


def explain(response, route) -> str:
    """A failure message with the gateway's own account of the request (its log row) and the
    shared routing state of the route's targets and keys (an open circuit, a cooling key)."""
    from llmgateway.redis import sync_client
    from routing import resilience

    row = wait_for_log(response.headers["x-request-id"])
    redis = sync_client()
    state = {}
    for target in route.targets.select_related("provider"):
        names = [resilience.circuit_key(target.id), resilience.health_down_key(target.id)]
        names += [resilience.cooldown_key(key.id) for key in target.provider.keys.all()]
        for name in names:
            kind = redis.type(name).decode()
            if kind == "hash":
                state[name] = redis.hgetall(name)
            elif kind != "none":
                state[name] = redis.get(name) if kind == "string" else kind
    return (f"{response.status_code} {response.text[:300]!r}; logged: status={row.status} attempts={row.attempts} "
            f"provider={row.provider} error_kind={row.error_kind} latency_ms={row.latency_ms} "
            f"error_message={row.error_message!r}; routing state: {state}")


@pytest.fixture
def mock(live, mock_upstream):
    return mock_upstream


# --- failover and classification ---------------------------------------------------------

@pytest.mark.parametrize("status", [429, 500, 503, 529])
def test_it_fails_over_to_the_next_target_on_a_retryable_status(live, mock, db_access, status):
    failing = make_provider(mock.base_url, fault={"status": status})
    healthy = make_provider(mock.base_url)
    model = ready(live, make_route(failing, healthy))
    response = post(live, {**CHAT, "model": model})
    assert response.status_code == 200
    assert response.headers["x-gateway-provider"] == healthy.name
    row = wait_for_log(response.headers["x-request-id"])
    assert (row.status, row.attempts, row.provider) == (200, 2, healthy.name)


def test_a_400_goes_back_to_the_client_untouched_and_is_not_retried(live, mock, db_access):
    failing = make_provider(mock.base_url, fault={"status": 400, "message": "bad tool schema"})
    other = make_provider(mock.base_url)
    model = ready(live, make_route(failing, other))
    response = post(live, {**CHAT, "model": model})
    assert response.status_code == 400
    assert response.json()["error"]["message"] == "bad tool schema"
    assert wait_for_log(response.headers["x-request-id"]).attempts == 1


def test_it_tries_the_next_target_after_a_connect_error_and_names_no_provider(live, mock, db_access):
    dead = make_provider(f"http://127.0.0.1:{free_port()}/v1", name="secret-dead-provider")
    model = ready(live, make_route(dead, max_attempts=1))
    response = post(live, {**CHAT, "model": model})
    assert response.status_code == 502
    text = response.text
    assert "secret-dead-provider" not in text and "127.0.0.1" not in text and PROVIDER_SECRET not in text
    row = wait_for_log(response.headers["x-request-id"])
    assert "secret-dead-provider" in row.error_message  # the operator finds the details by request id


def test_an_upstream_redirect_is_an_error_and_is_not_followed(live, mock, db_access):
    redirecting = make_provider(mock.base_url, fault={"redirect": "http://169.254.169.254/latest"})
    model = ready(live, make_route(redirecting, max_attempts=1))
    response = post(live, {**CHAT, "model": model})
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "upstream_bad_answer"
    assert wait_for_log(response.headers["x-request-id"]).error_kind == "upstream_bad_answer"


def test_a_malformed_answer_moves_on_to_the_next_target(live, mock, db_access):
    broken = make_provider(mock.base_url, fault={"malformed": True})
    healthy = make_provider(mock.base_url)
    model = ready(live, make_route(broken, healthy))
    response = post(live, {**CHAT, "model": model})
    assert response.status_code == 200, response.text
    assert response.json()["object"] == "chat.completion"
    assert response.headers["x-gateway-provider"] == healthy.name


def test_a_target_whose_targets_are_all_disabled_is_503(live, mock, db_access):
    route = make_route(make_provider(mock.base_url))
    route.targets.update(enabled=False)
    route.save()  # bump
    model = ready(live, route)
    response = post(live, {**CHAT, "model": model})
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "no_targets"
    assert response.headers["retry-after"]


# --- provider keys -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def keyed_mock():
    """A mock upstream that accepts one key only."""
    server = MockUpstreamThread(keys=["sk-good-upstream-key"]).start()
    yield server
    server.stop()


@pytest.mark.parametrize("status", [401, 403])
def test_a_refused_provider_key_gives_way_to_the_next_key(live, db_access, keyed_mock, status):
    provider = make_provider(keyed_mock.base_url, keys=["sk-refused-upstream-key", "sk-good-upstream-key"])
    model = ready(live, make_route(provider, max_attempts=2))
    for _ in range(3):  # whichever key comes first in turn
        response = post(live, {**CHAT, "model": model})
        assert response.status_code == 200, response.text


def test_when_every_provider_key_is_refused_the_client_is_not_blamed(live, db_access, keyed_mock):
    provider = make_provider(keyed_mock.base_url, keys=["sk-refused-upstream-key"])
    model = ready(live, make_route(provider))
    response = post(live, {**CHAT, "model": model})
    assert response.status_code == 502
    error = response.json()["error"]
    assert error["code"] == "upstream_credentials_rejected"
    assert "sk-refused" not in response.text
    assert wait_for_log(response.headers["x-request-id"]).error_kind == "upstream_auth"


# --- timeouts --------------------------------------------------------------------------------

def test_a_timed_out_target_is_not_started_again(live, mock, db_access):
    slow = make_provider(mock.base_url, timeout_s=1)
    model = ready(live, make_route(slow, max_attempts=3))
    started = time.monotonic()
    response = post(live, {**CHAT, "model": model, "mock": {"delay": 3, "request_id": "timeout-once"}})
    assert response.status_code == 504
    assert time.monotonic() - started < 2.5
    assert mock.generations("timeout-once") == 1


def test_a_timed_out_target_gives_way_to_the_next(live, mock, db_access):
    slow = make_provider(mock.base_url, timeout_s=0.5, fault={"first_byte_delay": 3})
    healthy = make_provider(mock.base_url)
    model = ready(live, make_route(slow, healthy))
    response = post(live, {**CHAT, "model": model})
    assert response.status_code == 200
    assert response.headers["x-gateway-provider"] == healthy.name


def test_it_fails_over_when_a_streams_first_event_times_out(live, mock, db_access):
    slow = make_provider(mock.base_url, timeout_s=0.5, fault={"first_event_delay": 3})
    healthy = make_provider(mock.base_url)
    route = make_route(slow, healthy)
    model = ready(live, route)
    response = post(live, {**CHAT, "model": model, "stream": True})
    assert response.status_code == 200, explain(response, route)
    assert response.headers["x-gateway-provider"] == healthy.name
    assert sse_data(response.text)[-1] == "[DONE]"


def test_a_first_event_slower_than_the_idle_timeout_is_awaited(live, mock, db_access):
    # The test gateway's idle timeout is 2 s; the provider allows 5 s for the first byte.
    patient = make_provider(mock.base_url, timeout_s=5, fault={"first_event_delay": 3})
    model = ready(live, make_route(patient, max_attempts=1))
    response = post(live, {**CHAT, "model": model, "stream": True})
    assert response.status_code == 200
    assert sse_data(response.text)[-1] == "[DONE]"
    assert wait_for_log(response.headers["x-request-id"]).attempts == 1


def test_keep_alive_comments_do_not_count_as_the_first_event(live, mock, db_access):
    thinking = make_provider(mock.base_url, timeout_s=1, fault={"keepalive_every": 0.1, "keepalive_for": 3})
    healthy = make_provider(mock.base_url)
    route = make_route(thinking, healthy)
    model = ready(live, route)
    response = post(live, {**CHAT, "model": model, "stream": True})
    assert response.status_code == 200, explain(response, route)
    assert response.headers["x-gateway-provider"] == healthy.name
    assert "PROCESSING" not in response.text


# --- streams ---------------------------------------------------------------------------------

def test_error_null_on_every_chunk_is_a_successful_stream(live, mock, db_access):
    quirky = make_provider(mock.base_url, fault={"error_null": True})
    model = ready(live, make_route(quirky))
    response = post(live, {**CHAT, "model": model, "stream": True})
    assert sse_data(response.text)[-1] == "[DONE]"
    row = wait_for_log(response.headers["x-request-id"])
    assert (row.status, row.error_kind) == (200, "")


def test_usage_on_every_chunk_is_counted_once(live, mock, db_access):
    chatty = make_provider(mock.base_url, fault={"usage_every_chunk": True, "chunks": 5})
    model = ready(live, make_route(chatty))
    response = post(live, {**CHAT, "model": model, "stream": True})
    assert sse_data(response.text)[-1] == "[DONE]"
    row = wait_for_log(response.headers["x-request-id"])
    assert row.output_tokens == 5 and not row.tokens_estimated


def test_a_client_that_leaves_before_the_first_byte_gets_a_row_and_the_upstream_is_closed(live, mock, db_access):
    waiting = make_provider(mock.base_url, timeout_s=10, fault={"first_event_delay": 5})
    model = ready(live, make_route(waiting, max_attempts=1))
    started = time.monotonic()
    with pytest.raises(httpx.ReadTimeout):
        post(live, {**CHAT, "model": model, "stream": True}, timeout=httpx.Timeout(5, read=1))
    left = time.monotonic()
    ended = None
    while ended is None and time.monotonic() < left + 2:
        ended = next((e for e in mock.events if e["type"] == "stream_end" and e["t"] > started
                      and e.get("client_disconnected")), None)
        time.sleep(0.05)
    assert ended is not None, "the upstream response was left open after the client left"
    from routing.models import RequestLog

    deadline = time.monotonic() + 5
    row = None
    while row is None and time.monotonic() < deadline:
        row = RequestLog.objects.filter(route=model, endpoint="chat").first()
        time.sleep(0.05)
    assert row is not None and (row.status, row.error_kind) == (499, "client_disconnected")


# --- requests the gateway refuses itself -------------------------------------------------------

@pytest.mark.parametrize("body, param", [
    ({"messages": "hello"}, "messages"),
    ({"messages": []}, "messages"),
    ({"messages": [{"content": "hi"}]}, "messages[0].role"),
    ({"messages": [{"role": "robot", "content": "hi"}]}, "messages[0].role"),
    ({**CHAT, "max_tokens": -1}, "max_tokens"),
    ({**CHAT, "max_tokens": "10"}, "max_tokens"),
    ({**CHAT, "stream": "yes"}, "stream"),
])
def test_malformed_requests_get_400_naming_the_field_and_never_reach_upstream(live, mock, body, param):
    response = post(live, {"model": "gpt-4o-mini", **body})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == param
    assert mock.requests == []


@pytest.mark.parametrize("raw", [
    b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}], "temperature": NaN}',
    b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}], "top_p": Infinity}',
    b'[' * 10000 + b']' * 10000,
    b'{"a":' * 10000 + b'1' + b'}' * 10000,
])
def test_non_standard_or_absurdly_nested_json_is_400(live, mock, raw):
    response = httpx.post(live.url + "/v1/chat/completions", content=raw, timeout=10,
                          headers={"Authorization": f"Bearer {FULL_KEY}", "Content-Type": "application/json"})
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert mock.requests == []


def test_a_restricted_key_stays_restricted_when_its_only_model_is_deleted(live, mock, db_access):
    route = make_route(make_provider(mock.base_url))
    key, secret = make_key(routes=[route])
    ready(live, route, key=secret)
    route.delete()
    wait_for_model(live, route.name, key=FULL_KEY, present=False)
    response = post(live, {**CHAT, "model": "gpt-4o-mini"}, key=secret)
    assert response.status_code == 403
    assert httpx.get(live.url + "/v1/models", headers={"Authorization": f"Bearer {secret}"}).json()["data"] == []


def test_a_request_with_a_lone_surrogate_is_served_and_logged_sanitised(live, mock, db_access):
    from .conftest import LOGGING_KEY

    raw = b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "broken \\ud800 text"}]}'
    response = httpx.post(live.url + "/v1/chat/completions", content=raw, timeout=10,
                          headers={"Authorization": f"Bearer {LOGGING_KEY}", "Content-Type": "application/json"})
    assert response.status_code == 200
    row = wait_for_log(response.headers["x-request-id"])
    assert row.sanitized and "broken" in row.request_body
    after = post(live, {**CHAT, "model": "gpt-4o-mini"}, key=LOGGING_KEY)
    assert not wait_for_log(after.headers["x-request-id"]).sanitized  # logging goes on


def test_prompt_rules_rewrite_each_format_in_its_own_shape(live, mock, db_access):
    """An Anthropic request gets the rule in its system prompt, never a chat-shaped system message
    pushed into its messages (the rules are applied in the client's format, then translated)."""
    from routing.models import PromptRule

    route = make_route(make_provider(mock.base_url))
    PromptRule.objects.create(route=route, operation="system_prepend", text="RULE-TEXT")
    model = ready(live, route)
    assert post(live, {**CHAT, "model": model}).status_code == 200
    assert "RULE-TEXT" in json.dumps(mock.requests[-1]["json"])
    answered = httpx.post(live.url + "/v1/messages", timeout=10, headers={"x-api-key": FULL_KEY},
                          json={"model": model, "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]})
    assert answered.status_code == 200
    assert mock.requests[-1]["json"]["messages"] == [{"role": "system", "content": "RULE-TEXT"},
                                                     {"role": "user", "content": "hi"}]


def test_native_responses_is_ignored_for_a_provider_type_that_cannot_speak_it(live, mock, db_access):
    anthropic = make_provider(mock.base_url, type="anthropic", native_responses=True)
    model = ready(live, make_route(anthropic))
    answered = httpx.post(live.url + "/v1/responses", timeout=10, headers={"Authorization": f"Bearer {FULL_KEY}"},
                          json={"model": model, "input": "hi"})
    assert answered.status_code == 200 and answered.json()["object"] == "response"
    assert mock.requests[-1]["path"] == "/v1/messages"  # translated, not sent as a Responses request


@pytest.mark.parametrize("transport", ["aiohttp", "httpx"])
def test_the_upstream_client_keeps_no_cookie_from_one_answer_for_the_next_request(transport, settings):
    """One client serves every tenant: a cookie an upstream set must not ride on anybody's next request."""
    import asyncio

    from aiohttp import web

    from providers.upstream import make_client

    settings.GATEWAY_ALLOW_PRIVATE_UPSTREAMS = True
    seen = []

    async def handler(request):
        seen.append(request.headers.get("Cookie"))
        response = web.json_response({"ok": True})
        response.set_cookie("session", "tenant-a-secret")
        return response

    async def main():
        app = web.Application()
        app.router.add_get("/", handler)
        runner = web.AppRunner(app)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        client = make_client(transport)
        try:
            for _ in range(2):
                response = await client.get(f"http://127.0.0.1:{port}/")
                assert response.status_code == 200
        finally:
            await client.aclose()
            await runner.cleanup()

    asyncio.run(main())
    assert seen == [None, None]
