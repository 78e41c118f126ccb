"""Anthropic Messages as the mock speaks it: /v1/messages (JSON and SSE), count_tokens, models."""

from __future__ import annotations

import json

from .conversation import Turn, pieces, plan_reply, words_of
from .core import (
    STATE, BadRequest, Dialect, answer, endpoint, int_option, json_response, signature_is_valid, sse,
    split_events, stream,
)

IMAGE_TOKENS = 85
MODELS_CREATED_AT = "2025-09-29T00:00:00Z"
_ERROR_KINDS = {
    400: ("invalid_request_error", "Invalid request (mock)."),
    401: ("authentication_error", "invalid x-api-key"),
    403: ("permission_error", "Your API key does not have permission to use the specified resource."),
    404: ("not_found_error", "Not found"),
    413: ("request_too_large", "Request exceeds the maximum allowed number of bytes."),
    429: ("rate_limit_error", "Number of request tokens has exceeded your per-minute rate limit (mock)."),
    500: ("api_error", "Internal server error"),
    529: ("overloaded_error", "Overloaded"),
}
_THINKING_FIRST = (
    "messages.{i}.content.0.type: Expected `thinking` or `redacted_thinking`, but found `{found}`. When `thinking` "
    "is enabled, a final `assistant` message must start with a thinking block (preceeding the lastmost set of "
    "`tool_use` and `tool_result` blocks). We recommend you include thinking blocks from previous turns. To avoid "
    "this requirement, disable `thinking`. Please consult our documentation at "
    "https://docs.claude.com/en/docs/build-with-claude/extended-thinking"
)


class AnthropicDialect(Dialect):
    """x-api-key (or a bearer token) auth, {"type":"error","error":{...}} bodies, `event: error` in streams."""

    name = "anthropic"
    bad_json_message = "There was an issue with your request body: it is not valid JSON."
    malformed_event = 'event: content_block_delta\ndata: {"broken": \n\n'

    def credential(self, request):
        key = request.headers.get("x-api-key", "").strip()
        if key:
            return key, "x-api-key"
        return super().credential(request)

    def auth_error(self, token, state):
        if token is None:
            return self.error(401, "x-api-key header is required")
        if state.keys is not None and token not in state.keys:
            return self.error(401, "invalid x-api-key")
        return None

    def error_kind(self, status, token=None):
        err_type, message = _ERROR_KINDS.get(status) or _ERROR_KINDS[500 if status >= 500 else 400]
        return err_type, None, message

    def error_body(self, status, message, err_type=None, code=None, param=None):
        return {"type": "error", "error": {"type": err_type or self.error_kind(status)[0], "message": message},
                "request_id": "req_mock"}

    def stream_error_event(self, status, message, sent=()):
        return sse("error", {"type": "error", "error": {"type": self.error_kind(status)[0], "message": message}})


ANTHROPIC = AnthropicDialect()


def add_routes(app):
    app.router.add_post("/v1/messages", endpoint(messages, ANTHROPIC))
    app.router.add_post("/v1/messages/count_tokens", endpoint(count_tokens, ANTHROPIC))


def _require_version(request):
    if not request.headers.get("anthropic-version"):
        raise BadRequest("anthropic-version: header is required")


# ---------------------------------------------------------------- reading a request


def block_text(content):
    """Text of a message content: a string, or text blocks (tool results' text included when asked)."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return ""
    return " ".join(b["text"] for b in content if isinstance(b, dict) and b.get("type") == "text"
                    and isinstance(b.get("text"), str))


def read_turn(body, fault):
    """The conversation of a Messages request, checked the way Anthropic checks it."""
    for name in ("model", "max_tokens", "messages"):
        if name not in body:
            raise BadRequest(f"{name}: Field required")
    if not isinstance(body["max_tokens"], int) or body["max_tokens"] < 1:
        raise BadRequest("max_tokens: Input should be a valid integer greater than or equal to 1")
    messages = body["messages"]
    if not isinstance(messages, list) or not messages:
        raise BadRequest("messages: at least one message is required")
    images = 0
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ("user", "assistant"):
            raise BadRequest(f"messages.{i}.role: Input should be 'user' or 'assistant'")
        images += _check_blocks(message.get("content"), i)
    last = messages[-1]
    blocks = last.get("content") if isinstance(last.get("content"), list) else []
    results = [_tool_result_text(b) for b in blocks if isinstance(b, dict) and b.get("type") == "tool_result"]
    thinking = body.get("thinking")
    turn = Turn(
        last_user_text=next((block_text(m.get("content")) for m in reversed(messages)
                             if m.get("role") == "user" and block_text(m.get("content"))), ""),
        tool_results=results if last.get("role") == "user" else [],
        tools=[{"name": t["name"], "parameters": t.get("input_schema")} for t in body.get("tools") or []
               if isinstance(t, dict) and isinstance(t.get("name"), str) and "input_schema" in t],
        tool_choice_none=isinstance(body.get("tool_choice"), dict) and body["tool_choice"].get("type") == "none",
        prompt_tokens=prompt_tokens(body) + IMAGE_TOKENS * images,
        wants_reasoning=isinstance(thinking, dict) and thinking.get("type") in ("enabled", "adaptive"),
    )
    if turn.tool_results and fault.get("require_signature"):
        _check_thinking_came_back(messages)
    return turn


def prompt_tokens(body):
    system = body.get("system")
    texts = [system if isinstance(system, str) else block_text(system)]
    for message in body.get("messages") or []:
        if isinstance(message, dict):
            content = message.get("content")
            texts.append(block_text(content))
            if isinstance(content, list):
                texts.extend(_tool_result_text(b) for b in content if isinstance(b, dict) and b.get("type") == "tool_result")
    return sum(words_of(t) for t in texts) + 3


def _tool_result_text(block):
    return block_text(block.get("content"))


def _check_blocks(content, index):
    """Validate a message's blocks the way the API does; returns how many images it holds."""
    if isinstance(content, str):
        return 0
    if not isinstance(content, list):
        raise BadRequest(f"messages.{index}.content: Input should be a valid list")
    images = 0
    for j, block in enumerate(content):
        kind = block.get("type") if isinstance(block, dict) else None
        if kind is None:
            raise BadRequest(f"messages.{index}.content.{j}: Input should be an object with a type")
        if kind == "image":
            source = block.get("source") if isinstance(block.get("source"), dict) else {}
            valid = (source.get("type") == "base64" and source.get("media_type") and source.get("data")) or \
                    (source.get("type") == "url" and source.get("url"))
            if not valid:
                raise BadRequest(f"messages.{index}.content.{j}.image.source: invalid image source")
            images += 1
        elif kind == "tool_use" and not (block.get("id") and block.get("name")):
            raise BadRequest(f"messages.{index}.content.{j}.tool_use: id and name are required")
        elif kind == "tool_result" and not block.get("tool_use_id"):
            raise BadRequest(f"messages.{index}.content.{j}.tool_result.tool_use_id: Field required")
    return images


def _check_thinking_came_back(messages):
    """With thinking on, the assistant turn that called the tools must start with its signed thinking block."""
    i = len(messages) - 2
    if i < 0 or messages[i].get("role") != "assistant":
        return
    content = messages[i].get("content")
    first = content[0] if isinstance(content, list) and content and isinstance(content[0], dict) else {}
    if first.get("type") == "redacted_thinking":
        return
    if first.get("type") != "thinking":
        raise BadRequest(_THINKING_FIRST.format(i=i, found=first.get("type") or "text"))
    if not signature_is_valid(first.get("thinking"), first.get("signature")):
        raise BadRequest(f"messages.{i}.content.0: Invalid `signature` in `thinking` block")


# ---------------------------------------------------------------- answering


def usage_of(turn, reply, fault):
    read = min(max(int_option(fault, "cached_tokens", 0), 0), turn.prompt_tokens)
    created = min(max(int_option(fault, "cache_creation_tokens", 0), 0), turn.prompt_tokens - read)
    return {
        "input_tokens": turn.prompt_tokens - read - created,
        "cache_creation_input_tokens": created,
        "cache_read_input_tokens": read,
        "cache_creation": {"ephemeral_5m_input_tokens": created, "ephemeral_1h_input_tokens": 0},
        "output_tokens": reply.output_tokens,
        "service_tier": "standard",
    }


def content_blocks(reply):
    blocks = []
    if reply.reasoning_words:
        blocks.append({"type": "thinking", "thinking": reply.reasoning, "signature": reply.signature})
    if reply.words:
        blocks.append({"type": "text", "text": reply.text})
    for call in reply.tool_calls:
        blocks.append({"type": "tool_use", "id": call.id, "name": call.name, "input": json.loads(call.arguments)})
    return blocks


async def messages(request, body, fault):
    _require_version(request)
    turn = read_turn(body, fault)
    model = body["model"]
    mid = f"msg_mock{request.app[STATE].next_id()}"
    reply = plan_reply(turn, fault, lambda i: f"toolu_mock{mid[-8:]}{i}")
    stop_reason = "tool_use" if reply.tool_calls else "end_turn"
    if len(reply.words) > body["max_tokens"]:
        reply.words = reply.words[: body["max_tokens"]]
        stop_reason = "max_tokens"
    usage = usage_of(turn, reply, fault)
    headers = {"request-id": f"req_mock{mid[-12:]}"}
    if body.get("stream"):
        return await stream(request, fault, *_stream_events(mid, model, reply, usage, stop_reason),
                            dialect=ANTHROPIC, headers=headers)
    message = {"id": mid, "type": "message", "role": "assistant", "model": model, "content": content_blocks(reply),
               "stop_reason": stop_reason, "stop_sequence": None, "usage": usage}
    if fault.get("no_usage"):
        del message["usage"]
    return await answer(request, fault, message, headers=headers)


def _stream_events(mid, model, reply, usage, stop_reason):
    """message_start, then per block start / deltas / stop (a ping after the first start), message_delta, message_stop."""
    start_usage = {k: v for k, v in usage.items() if k != "output_tokens"} | {"output_tokens": 1}
    flat = [(sse("message_start", {"type": "message_start", "message": {
        "id": mid, "type": "message", "role": "assistant", "model": model, "content": [],
        "stop_reason": None, "stop_sequence": None, "usage": start_usage}}), False)]
    index = 0

    def block(opening, deltas):
        nonlocal index
        flat.append((sse("content_block_start", {"type": "content_block_start", "index": index,
                                                 "content_block": opening}), False))
        if index == 0:
            flat.append((sse("ping", {"type": "ping"}), False))
        for delta in deltas:
            flat.append((sse("content_block_delta", {"type": "content_block_delta", "index": index,
                                                     "delta": delta}), True))
        flat.append((sse("content_block_stop", {"type": "content_block_stop", "index": index}), False))
        index += 1

    if reply.reasoning_words:
        block({"type": "thinking", "thinking": "", "signature": ""},
              [{"type": "thinking_delta", "thinking": p} for p in pieces(reply.reasoning_words)]
              + [{"type": "signature_delta", "signature": reply.signature}])
    if reply.words or not (reply.tool_calls or reply.reasoning_words):
        block({"type": "text", "text": ""}, [{"type": "text_delta", "text": p} for p in pieces(reply.words)])
    for call in reply.tool_calls:
        block({"type": "tool_use", "id": call.id, "name": call.name, "input": {}},
              [{"type": "input_json_delta", "partial_json": p} for p in ["", *call.argument_pieces()]])
    final_usage = {k: v for k, v in usage.items() if k not in ("cache_creation", "service_tier")}
    flat.append((sse("message_delta", {"type": "message_delta",
                                       "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                                       "usage": final_usage}), False))
    flat.append((sse("message_stop", {"type": "message_stop"}), False))
    return split_events(flat)


async def count_tokens(request, body, fault):
    _require_version(request)
    body = {"max_tokens": 1, **body}
    turn = read_turn(body, fault)
    return json_response({"input_tokens": turn.prompt_tokens})


# ---------------------------------------------------------------- models


def anthropic_model(model_id):
    return {"type": "model", "id": model_id, "display_name": model_id.replace("-", " ").title(),
            "created_at": MODELS_CREATED_AT}


async def list_models(request, body, fault):
    data = [anthropic_model(m) for m in request.app[STATE].model_ids]
    limit = int(request.query.get("limit", 20))
    if "after_id" in request.query and request.query["after_id"] in request.app[STATE].model_ids:
        data = data[[m["id"] for m in data].index(request.query["after_id"]) + 1:]
    page = data[:limit]
    return json_response({"data": page, "has_more": len(data) > limit,
                          "first_id": page[0]["id"] if page else None, "last_id": page[-1]["id"] if page else None})


async def get_model(request, body, fault):
    model_id = request.match_info["model_id"]
    if model_id not in request.app[STATE].model_ids:
        return ANTHROPIC.error(404, f"model: {model_id}")
    return json_response(anthropic_model(model_id))
