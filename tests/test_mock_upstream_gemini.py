"""The mock speaks Gemini's generateContent natively, over real sockets with httpx."""

import json

import httpx
import pytest

from providers.mock_upstream import MockUpstreamThread

KEY = "AIzaSy-mock-test-key-0123456789"
WEATHER = {"functionDeclarations": [{"name": "get_weather", "description": "Weather in a city",
                                     "parameters": {"type": "OBJECT", "properties": {"city": {"type": "STRING"}},
                                                    "required": ["city"]}}]}


def make_gemini_request(text="ping pong", **overrides):
    return {"contents": [{"role": "user", "parts": [{"text": text}]}], **overrides}


@pytest.fixture
def client(mock_http):
    return mock_http({"x-goog-api-key": KEY}, path="/v1beta")


def generate(client, body, model="gemini-2.5-flash"):
    return client.post(f"/models/{model}:generateContent", json=body)


def sse_chunks(client, body, model="gemini-2.5-flash"):
    with client.stream("POST", f"/models/{model}:streamGenerateContent?alt=sse", json=body) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        raw = r.read().decode()
    assert raw.endswith("\r\n\r\n")
    return [json.loads(event[len("data: "):]) for event in raw.split("\r\n\r\n") if event]


def test_generate_content_answers_in_geminis_shape(client, mock):
    body = make_gemini_request(systemInstruction={"parts": [{"text": "be brief"}]})
    r = generate(client, body)
    assert r.status_code == 200
    answer = r.json()
    candidate = answer["candidates"][0]
    assert candidate["content"] == {"parts": [{"text": "Hello from mock: ping pong"}], "role": "model"}
    assert candidate["finishReason"] == "STOP" and candidate["index"] == 0
    usage = answer["usageMetadata"]
    assert usage["promptTokenCount"] == 2 + 2 + 3 and usage["candidatesTokenCount"] == 5
    assert usage["totalTokenCount"] == 12 and answer["modelVersion"] == "gemini-2.5-flash"
    recorded = mock.requests[-1]
    assert recorded["path"] == "/v1beta/models/gemini-2.5-flash:generateContent"
    assert recorded["api_key"] == KEY and recorded["auth_scheme"] == "x-goog-api-key"
    assert recorded["headers"]["x-goog-api-key"] == "[redacted]"


def test_the_key_may_come_in_the_query_and_is_not_recorded(mock):
    url = f"{mock.origin}/v1beta/models/gemini-2.5-flash:generateContent?key={KEY}"
    assert httpx.post(url, json=make_gemini_request()).status_code == 200
    recorded = mock.requests[-1]
    assert recorded["auth_scheme"] == "query-key" and recorded["query"] == {"key": "[redacted]"}


def test_a_sse_stream_uses_crlf_and_repeats_the_usage_so_far(client):
    chunks = sse_chunks(client, make_gemini_request())
    assert len(chunks) == 5
    text = "".join(p["text"] for c in chunks for p in c["candidates"][0]["content"]["parts"])
    assert text == "Hello from mock: ping pong"
    assert [c["usageMetadata"]["candidatesTokenCount"] for c in chunks] == [1, 2, 3, 4, 5]
    assert all("finishReason" not in c["candidates"][0] for c in chunks[:-1])
    assert chunks[-1]["candidates"][0]["finishReason"] == "STOP"


def test_without_alt_sse_the_stream_is_one_json_array(client):
    with client.stream("POST", "/models/gemini-2.5-flash:streamGenerateContent", json=make_gemini_request()) as r:
        assert r.headers["content-type"].startswith("application/json")
        chunks = json.loads(r.read())
    assert len(chunks) == 5 and chunks[-1]["candidates"][0]["finishReason"] == "STOP"


def test_offered_functions_are_called_and_a_function_response_comes_back_as_text(client):
    r = generate(client, make_gemini_request("Weather in Bern", tools=[WEATHER]))
    parts = r.json()["candidates"][0]["content"]["parts"]
    assert parts == [{"functionCall": {"name": "get_weather", "args": {"city": "Weather in Bern"}}}]
    body = {"tools": [WEATHER], "contents": [
        {"role": "user", "parts": [{"text": "Weather in Bern"}]},
        {"role": "model", "parts": parts},
        {"role": "user", "parts": [{"functionResponse": {"name": "get_weather", "response": {"result": "foggy, 4 degrees"}}}]}]}
    answer = generate(client, body).json()
    assert "foggy, 4 degrees" in answer["candidates"][0]["content"]["parts"][0]["text"]


def test_two_parallel_calls_and_tool_config_none(client):
    two = generate(client, make_gemini_request("Bern", tools=[WEATHER], mock={"tool_calls": 2})).json()
    assert [p["functionCall"]["name"] for p in two["candidates"][0]["content"]["parts"]] == ["get_weather"] * 2
    none = make_gemini_request("Bern", tools=[WEATHER], toolConfig={"functionCallingConfig": {"mode": "NONE"}})
    assert "text" in generate(client, none).json()["candidates"][0]["content"]["parts"][0]


def test_thoughts_and_signatures_round_trip(client):
    thinking = {"thinkingConfig": {"includeThoughts": True}}
    first = generate(client, make_gemini_request("Bern?", tools=[WEATHER], generationConfig=thinking)).json()
    parts = first["candidates"][0]["content"]["parts"]
    assert parts[0] == {"text": "Thinking about Bern?", "thought": True}
    assert "functionCall" in parts[1] and parts[1]["thoughtSignature"]
    assert first["usageMetadata"]["thoughtsTokenCount"] == 3
    result = {"role": "user", "parts": [{"functionResponse": {"name": "get_weather", "response": {"result": "sunny"}}}]}

    def follow(model_parts):
        body = {"tools": [WEATHER], "generationConfig": thinking, "mock": {"require_signature": True},
                "contents": [{"role": "user", "parts": [{"text": "Bern?"}]}, {"role": "model", "parts": model_parts}, result]}
        return generate(client, body)

    assert follow(parts).status_code == 200
    unsigned = follow([parts[1] | {"thoughtSignature": "Zm9yZ2Vk"}])
    assert unsigned.status_code == 400
    assert unsigned.json()["error"]["status"] == "INVALID_ARGUMENT"
    assert "missing a thought_signature" in unsigned.json()["error"]["message"]


def test_a_streamed_thinking_answer_marks_thoughts_and_signs_the_last_part(client):
    chunks = sse_chunks(client, make_gemini_request("hello", generationConfig={"thinkingConfig": {"includeThoughts": True}}))
    parts = [p for c in chunks for p in c["candidates"][0]["content"]["parts"]]
    assert [p.get("thought", False) for p in parts] == [True, True, True, False, False, False, False]
    assert "thoughtSignature" in parts[-1]


def test_images_count_and_bad_ones_are_refused(client):
    image = {"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo="}}
    ok = generate(client, {"contents": [{"role": "user", "parts": [image, {"text": "what"}]}]}).json()
    assert ok["usageMetadata"]["promptTokenCount"] == 1 + 3 + 258
    bad = generate(client, {"contents": [{"role": "user", "parts": [{"inline_data": {"data": "x"}}]}]})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == 400


@pytest.mark.parametrize("status, name", [(400, "INVALID_ARGUMENT"), (403, "PERMISSION_DENIED"), (404, "NOT_FOUND"),
                                          (429, "RESOURCE_EXHAUSTED"), (500, "INTERNAL"), (503, "UNAVAILABLE")])
def test_injected_errors_use_geminis_error_shape(client, status, name):
    r = generate(client, make_gemini_request(mock={"status": status, "retry_after": 5}))
    assert r.status_code == status and r.headers["retry-after"] == "5"
    assert set(r.json()["error"]) == {"code", "message", "status"}
    assert r.json()["error"]["code"] == status and r.json()["error"]["status"] == name


def test_auth_failures_look_like_googles(mock):
    url = f"{mock.origin}/v1beta/models/gemini-2.5-flash:generateContent"
    missing = httpx.post(url, json=make_gemini_request())
    assert missing.status_code == 403 and missing.json()["error"]["status"] == "PERMISSION_DENIED"
    with MockUpstreamThread(keys={"AIza-good"}) as strict:
        bad = httpx.post(f"{strict.origin}/v1beta/models/gemini-2.5-flash:generateContent?key=AIza-bad",
                         json=make_gemini_request())
        assert bad.status_code == 400 and bad.json()["error"]["details"][0]["reason"] == "API_KEY_INVALID"


def test_a_stream_can_fail_with_an_error_chunk(client):
    chunks = sse_chunks(client, make_gemini_request(mock={"error_after": 2, "error_status": 503}))
    overloaded = {"code": 503, "message": "The model is overloaded. Please try again later.", "status": "UNAVAILABLE"}
    assert len(chunks) == 3 and chunks[-1] == {"error": overloaded}


def test_tokens_are_counted_and_models_listed(client):
    assert client.post("/models/gemini-2.5-flash:countTokens", json=make_gemini_request("a b c")).json()["totalTokens"] == 6
    names = [m["name"] for m in client.get("/models").json()["models"]]
    assert "models/gemini-2.5-flash" in names
    assert client.get("/models/gemini-2.5-pro").json()["name"] == "models/gemini-2.5-pro"
    assert client.get("/models/nope").json()["error"]["status"] == "NOT_FOUND"
    assert client.post("/models/gemini-2.5-flash:nope", json=make_gemini_request()).status_code == 404
