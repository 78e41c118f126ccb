"""Gemini as the mock speaks it: /v1beta/models/{model}:generateContent, :streamGenerateContent
(?alt=sse, else a streamed JSON array), :countTokens, and the model list."""

from __future__ import annotations

import json

from .conversation import Turn, pieces, plan_reply, words_of
from .core import (
    STATE, BadRequest, Dialect, answer, decode_sealed, dumps, endpoint, int_option, json_response, seal, stream,
)

IMAGE_TOKENS = 258  # what Gemini charges for an image
_STATUSES = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
             409: "ABORTED", 429: "RESOURCE_EXHAUSTED", 499: "CANCELLED", 500: "INTERNAL", 501: "NOT_IMPLEMENTED",
             503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}
_MESSAGES = {
    429: "You exceeded your current quota, please check your plan and billing details. (mock)",
    500: "An internal error has occurred. Please retry or report in "
         "https://developers.generativeai.google/guide/troubleshooting",
    503: "The model is overloaded. Please try again later.",
    504: "Deadline expired before operation could complete.",
}
_NO_KEY = ("Method doesn't allow unregistered callers (callers without established identity). "
           "Please use API Key or other form of API consumer identity to call this API.")
_MISSING_SIGNATURE = (
    "Function call is missing a thought_signature in functionCall parts. This is required for tools to work "
    "correctly, and missing thought_signature may lead to degraded model performance. Additional data, function "
    "call `default_api:{name}` , position {position}. Please refer to https://ai.google.dev/gemini-api/docs/"
    "thought-signatures for more details."
)


class GeminiDialect(Dialect):
    """?key= or x-goog-api-key auth; {"error": {"code", "message", "status"}} bodies; CRLF-framed SSE."""

    name = "gemini"
    bad_json_message = "Invalid JSON payload received. Unexpected token."
    malformed_event = 'data: {"broken": \r\n\r\n'

    def credential(self, request):
        if request.query.get("key"):
            return request.query["key"], "query-key"
        if request.headers.get("x-goog-api-key"):
            return request.headers["x-goog-api-key"], "x-goog-api-key"
        return super().credential(request)

    def auth_error(self, token, state):
        if token is None:
            return self.error(403, _NO_KEY)
        if state.keys is not None and token not in state.keys:
            body = self.error_body(400, "API key not valid. Please pass a valid API key.")
            body["error"]["details"] = [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID",
                                         "domain": "googleapis.com",
                                         "metadata": {"service": "generativelanguage.googleapis.com"}}]
            return json_response(body, status=400)
        return None

    def error_kind(self, status, token=None):
        code = _STATUSES.get(status) or ("INTERNAL" if status >= 500 else "INVALID_ARGUMENT")
        return code, None, _MESSAGES.get(status, f"Mock error {status}.")

    def error_body(self, status, message, err_type=None, code=None, param=None):
        return {"error": {"code": status, "message": message, "status": err_type or self.error_kind(status)[0]}}

    def fault_error(self, status, fault, token, headers):
        err_status, _, message = self.error_kind(status)
        return self.error(status, fault.get("message") or message, fault.get("error_type") or err_status,
                          headers=headers)

    def stream_error_event(self, status, message, sent=()):
        return "data: " + dumps(self.error_body(status, message)) + "\r\n\r\n"


GEMINI = GeminiDialect()


def add_routes(app):
    # The method rides after a colon in the last segment: models/gemini-2.5-flash:generateContent.
    app.router.add_post("/v1beta/models/{target}", endpoint(model_method, GEMINI))
    app.router.add_get("/v1beta/models", endpoint(list_models, GEMINI, has_body=False))
    app.router.add_get("/v1beta/models/{model}", endpoint(get_model, GEMINI, has_body=False))


def _field(obj, camel, snake):
    """Gemini's JSON accepts both camelCase and snake_case field names."""
    return obj.get(camel, obj.get(snake)) if isinstance(obj, dict) else None


# ---------------------------------------------------------------- reading a request


def parts_text(content, thoughts=False):
    parts = _field(content, "parts", "parts") or []
    return " ".join(p["text"] for p in parts if isinstance(p, dict) and isinstance(p.get("text"), str)
                    and (thoughts or not p.get("thought")))


def read_turn(body, fault):
    contents = body.get("contents")
    if not isinstance(contents, list) or not contents:
        raise BadRequest("* GenerateContentRequest.contents: contents is not specified")
    images = 0
    for i, content in enumerate(contents):
        if not isinstance(content, dict) or not isinstance(content.get("parts"), list) or not content["parts"]:
            raise BadRequest(f"* GenerateContentRequest.contents[{i}].parts: contents.parts must not be empty.")
        for j, part in enumerate(content["parts"]):
            inline = _field(part, "inlineData", "inline_data")
            if inline is not None:
                if not (_field(inline, "mimeType", "mime_type") and inline.get("data")):
                    raise BadRequest(f"* GenerateContentRequest.contents[{i}].parts[{j}].inline_data: "
                                     "mime_type and data are required")
                images += 1
    last = contents[-1]
    results = [_function_result(_field(p, "functionResponse", "function_response")) for p in last["parts"]
               if isinstance(p, dict) and _field(p, "functionResponse", "function_response")]
    system = _field(body, "systemInstruction", "system_instruction")
    config = _field(body, "generationConfig", "generation_config") or {}
    thinking = _field(config, "thinkingConfig", "thinking_config") or {}
    calling = _field(_field(body, "toolConfig", "tool_config") or {}, "functionCallingConfig", "function_calling_config")
    turn = Turn(
        last_user_text=next((parts_text(c) for c in reversed(contents)
                             if c.get("role", "user") == "user" and parts_text(c)), ""),
        tool_results=results if last.get("role", "user") == "user" else [],
        tools=_declarations(body),
        tool_choice_none=isinstance(calling, dict) and calling.get("mode") == "NONE",
        prompt_tokens=sum(words_of(parts_text(c)) for c in contents) + words_of(parts_text(system or {}))
        + sum(words_of(r) for r in results) + 3 + IMAGE_TOKENS * images,
        wants_reasoning=bool(_field(thinking, "includeThoughts", "include_thoughts")),
    )
    if turn.tool_results and fault.get("require_signature"):
        _check_signatures(contents)
    return turn


def _function_result(response):
    payload = response.get("response") if isinstance(response, dict) else None
    if isinstance(payload, dict):
        for key in ("result", "output", "content"):
            if isinstance(payload.get(key), str):
                return payload[key]
    return dumps(payload)


def _declarations(body):
    tools = []
    for tool in body.get("tools") or []:
        for declaration in _field(tool, "functionDeclarations", "function_declarations") or []:
            if isinstance(declaration, dict) and isinstance(declaration.get("name"), str):
                schema = declaration.get("parameters") or _field(declaration, "parametersJsonSchema",
                                                                 "parameters_json_schema")
                tools.append({"name": declaration["name"], "parameters": schema})
    return tools


def _check_signatures(contents):
    """The model turn that called functions must bring back the thought signature on its first call."""
    model_turn = contents[-2] if len(contents) >= 2 and contents[-2].get("role") == "model" else None
    if model_turn is None:
        return
    for position, part in enumerate(model_turn["parts"]):
        call = _field(part, "functionCall", "function_call")
        if call:
            if decode_sealed(_field(part, "thoughtSignature", "thought_signature")) is None:
                raise BadRequest(_MISSING_SIGNATURE.format(name=call.get("name"), position=position + 1))
            return


# ---------------------------------------------------------------- answering


def _parse_target(request):
    model, sep, method = request.match_info["target"].rpartition(":")
    if not sep or not model:
        raise BadRequest(f"Invalid resource name: models/{request.match_info['target']}")
    return model, method


async def model_method(request, body, fault):
    model, method = _parse_target(request)
    if method == "countTokens":
        inner = body.get("generateContentRequest") or _field(body, "generateContentRequest", "generate_content_request")
        turn = read_turn(inner if isinstance(inner, dict) else body, fault)
        return json_response({"totalTokens": turn.prompt_tokens, "promptTokensDetails": [
            {"modality": "TEXT", "tokenCount": turn.prompt_tokens}]})
    if method not in ("generateContent", "streamGenerateContent"):
        return GEMINI.error(404, f"Method not found: {method}")
    turn = read_turn(body, fault)
    reply = plan_reply(turn, fault, lambda i: f"call_{i}")
    config = _field(body, "generationConfig", "generation_config") or {}
    finish = "STOP"
    limit = _field(config, "maxOutputTokens", "max_output_tokens")
    if isinstance(limit, int) and len(reply.words) > limit:
        reply.words, finish = reply.words[:limit], "MAX_TOKENS"
    usage = usage_of(turn, reply, fault)
    response_id = f"mock{request.app[STATE].next_id()}"
    if method == "generateContent":
        return await answer(request, fault, _chunk(_parts(reply), finish, usage, model, response_id))
    chunks = _stream_chunks(reply, finish, usage, model, response_id, fault)
    if request.query.get("alt") == "sse":
        # Gemini frames SSE events with CRLF, not LF: a relay must accept both.
        events = ["data: " + dumps(c) + "\r\n\r\n" for c in chunks]
        return await stream(request, fault, [], events, [], dialect=GEMINI)
    # Without alt=sse the stream is one JSON array, sent element by element.
    events = [("[" if i == 0 else ",\r\n") + dumps(c) for i, c in enumerate(chunks)]
    return await stream(request, fault, [], events, ["]"], dialect=GEMINI,
                        headers={"Content-Type": "application/json; charset=UTF-8"})


def usage_of(turn, reply, fault):
    cached = min(max(int_option(fault, "cached_tokens", 0), 0), turn.prompt_tokens)
    candidates = reply.output_tokens - reply.reasoning_tokens
    usage = {"promptTokenCount": turn.prompt_tokens, "candidatesTokenCount": candidates,
             "totalTokenCount": turn.prompt_tokens + reply.output_tokens,
             "promptTokensDetails": [{"modality": "TEXT", "tokenCount": turn.prompt_tokens}]}
    if reply.reasoning_tokens:
        usage["thoughtsTokenCount"] = reply.reasoning_tokens
    if cached:
        usage["cachedContentTokenCount"] = cached
    return usage


def _parts(reply):
    parts = []
    if reply.reasoning_words:
        parts.append({"text": reply.reasoning, "thought": True})
    if reply.words:
        parts.append({"text": reply.text})
    for call in reply.tool_calls:
        parts.append({"functionCall": {"name": call.name, "args": json.loads(call.arguments)}})
    _sign(parts, reply)
    return parts


def _sign(parts, reply):
    """With thinking, the signature rides on the first function call, else on the last answer part."""
    if not reply.reasoning_words:
        return
    target = next((p for p in parts if "functionCall" in p), None) or next(
        (p for p in reversed(parts) if not p.get("thought")), None)
    if target is not None:
        target["thoughtSignature"] = seal(reply.reasoning)


def _chunk(parts, finish, usage, model, response_id):
    candidate = {"content": {"parts": parts, "role": "model"}, "index": 0}
    if finish:
        candidate["finishReason"] = finish
    return {"candidates": [candidate], "usageMetadata": usage, "modelVersion": model, "responseId": response_id}


def _stream_chunks(reply, finish, usage, model, response_id, fault):
    """Thought pieces, text pieces, then the function calls whole; every chunk carries the usage so far."""
    parts = []
    for piece in pieces(reply.reasoning_words):
        parts.append({"text": piece, "thought": True})
    for piece in pieces(reply.words):
        parts.append({"text": piece})
    if reply.tool_calls:
        calls = [{"functionCall": {"name": c.name, "args": json.loads(c.arguments)}} for c in reply.tool_calls]
        parts.append(calls)
    if not parts:
        parts.append({"text": ""})
    if reply.reasoning_words:
        last = parts[-1]
        (last[0] if isinstance(last, list) else last)["thoughtSignature"] = seal(reply.reasoning)
    chunks, done = [], 0
    for i, part in enumerate(parts):
        group = part if isinstance(part, list) else [part]
        done += sum(1 for p in group if "text" in p and p["text"]) + sum(
            len(json.dumps(p["functionCall"]["args"]).split()) + 1 for p in group if "functionCall" in p)
        final = i == len(parts) - 1
        running = dict(usage) if final else _running_usage(usage, done)
        chunks.append(_chunk(group, finish if final else None, running, model, response_id))
    return chunks


def _running_usage(usage, done):
    # Gemini repeats the usage so far on every chunk: a relay that adds them up counts too much.
    return {"promptTokenCount": usage["promptTokenCount"], "candidatesTokenCount": done,
            "totalTokenCount": usage["promptTokenCount"] + done,
            "promptTokensDetails": usage["promptTokensDetails"]}


# ---------------------------------------------------------------- models


def gemini_model(model_id):
    return {"name": f"models/{model_id}", "version": "001", "displayName": model_id.replace("-", " ").title(),
            "description": "A mock model.", "inputTokenLimit": 1048576, "outputTokenLimit": 65536,
            "supportedGenerationMethods": ["generateContent", "countTokens"], "thinking": True}


async def list_models(request, body, fault):
    return json_response({"models": [gemini_model(m) for m in request.app[STATE].model_ids]})


async def get_model(request, body, fault):
    model_id = request.match_info["model"]
    if model_id not in request.app[STATE].model_ids:
        return GEMINI.error(404, f"models/{model_id} is not found for API version v1beta, or is not supported "
                                 "for generateContent.")
    return json_response(gemini_model(model_id))
