"""OpenAI chat completions, legacy completions, embeddings and models, as the mock speaks them."""

from __future__ import annotations

import base64
import hashlib
import math
import struct
import time

from aiohttp import web

from .conversation import Turn, pieces, plan_reply, reply_words, words_of
from .core import (
    STATE, BadRequest, answer, dumps, int_option, json_response, require_model, stream,
)

SYSTEM_FINGERPRINT = "fp_mock"
EMBED_DIMS = 8
MAX_EMBED_DIMS = 4096
IMAGE_TOKENS = 85  # what OpenAI charges a low-detail image; the mock charges every image that
_DONE = "data: [DONE]\n\n"


def text_of(content):
    """Plain text of a message content (string or list of content parts)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def chat_usage(prompt_tokens, completion_tokens, cached_tokens=0, reasoning_tokens=0):
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cached_tokens, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": reasoning_tokens, "audio_tokens": 0,
                                      "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0},
    }


def wants_usage(body, fault):
    options = body.get("stream_options")
    return isinstance(options, dict) and bool(options.get("include_usage")) and not fault.get("no_usage")


def cached_tokens(fault, prompt_tokens):
    return min(max(int_option(fault, "cached_tokens", 0), 0), prompt_tokens)


# ---------------------------------------------------------------- chat completions


def read_chat_turn(body, fault):
    """The conversation of a chat request, checked the way OpenAI checks it."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("'messages' must be a non-empty array", param="messages")
    messages = [m for m in messages if isinstance(m, dict)]
    images = sum(_check_images(m.get("content"), i) for i, m in enumerate(messages))
    turn = Turn(
        last_user_text=next((text_of(m.get("content")) for m in reversed(messages) if m.get("role") == "user"), ""),
        tools=_chat_tools(body),
        tool_choice_none=body.get("tool_choice") == "none",
        prompt_tokens=sum(words_of(text_of(m.get("content"))) for m in messages) + 3 + IMAGE_TOKENS * images,
        wants_reasoning="reasoner" in str(body.get("model")),
    )
    trailing = []
    for message in reversed(messages):
        if message.get("role") not in ("tool", "function"):
            break
        trailing.insert(0, text_of(message.get("content")))
    turn.tool_results = trailing
    if trailing and fault.get("require_signature"):
        _check_reasoning_came_back(messages, len(messages) - len(trailing) - 1)
    return turn


def _check_images(content, index):
    """How many image parts a message has; a part without a usable URL is a 400, as upstream."""
    if not isinstance(content, list):
        return 0
    count = 0
    for part in content:
        if isinstance(part, dict) and part.get("type") == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            if not isinstance(url, str) or not url.startswith(("http://", "https://", "data:image/")):
                raise BadRequest(f"Invalid 'messages[{index}].content': image_url.url must be an http(s) or "
                                 "data:image/ URL.", param=f"messages.[{index}].content")
            count += 1
    return count


def _chat_tools(body):
    tools = []
    for tool in body.get("tools") or []:
        function = tool.get("function") if isinstance(tool, dict) else None
        if isinstance(function, dict) and isinstance(function.get("name"), str):
            tools.append({"name": function["name"], "parameters": function.get("parameters")})
    for function in body.get("functions") or []:
        if isinstance(function, dict) and isinstance(function.get("name"), str):
            tools.append({"name": function["name"], "parameters": function.get("parameters")})
    return tools


def _check_reasoning_came_back(messages, index):
    # DeepSeek's thinking mode: the assistant turn that called the tools must carry its reasoning back.
    message = messages[index] if index >= 0 else {}
    if message.get("role") != "assistant" or not message.get("reasoning_content"):
        raise BadRequest(f"Missing `reasoning_content` field in the assistant message at message index {index}.",
                         param="messages")


async def chat_completions(request, body, fault):
    model = require_model(body)
    turn = read_chat_turn(body, fault)
    rid = f"chatcmpl-mock{request.app[STATE].next_id()}"
    reply = plan_reply(turn, fault, lambda i: f"call_mock{rid[-8:]}{i}")
    cached = cached_tokens(fault, turn.prompt_tokens)
    usage = chat_usage(turn.prompt_tokens, reply.output_tokens, cached, reply.reasoning_tokens)
    created = int(time.time())
    if body.get("stream"):
        include = wants_usage(body, fault)
        if reply.tool_calls or reply.reasoning_words:
            head, content, tail = _rich_chat_events(rid, created, model, reply, usage, include, fault)
        else:
            head, content, tail = _chat_events(rid, created, model, reply.words, usage, include, fault)
        return await stream(request, fault, head, content, tail)
    message = {"role": "assistant", "content": reply.text if reply.words else None, "refusal": None,
               "annotations": []}
    if reply.reasoning_words:
        message["reasoning_content"] = reply.reasoning
    if reply.tool_calls:
        message["tool_calls"] = [{"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                                 for c in reply.tool_calls]
    answer_body = {
        "id": rid, "object": "chat.completion", "created": created, "model": model,
        "choices": [{"index": 0, "message": message, "logprobs": None,
                     "finish_reason": "tool_calls" if reply.tool_calls else "stop"}],
        "usage": usage, "service_tier": "default", "system_fingerprint": SYSTEM_FINGERPRINT,
    }
    if fault.get("no_usage"):
        del answer_body["usage"]
    return await answer(request, fault, answer_body)


def _chat_events(rid, created, model, words, usage, include_usage, fault):
    """SSE events (head, content, tail) for a plain text chat stream, built by string templating for speed."""
    pre = ('data: {"id":"%s","object":"chat.completion.chunk","created":%d,"model":%s,'
           '"system_fingerprint":"%s","choices":' % (rid, created, dumps(model), SYSTEM_FINGERPRINT))
    end = _chunk_end(usage, include_usage, fault)

    def choice(delta, finish="null", done=0):
        return pre + '[{"index":0,"delta":%s,"logprobs":null,"finish_reason":%s}]' % (delta, finish) + end(done)

    def content_event(piece, done):
        return choice('{"content":%s}' % dumps(piece), done=done)

    head = [choice('{"role":"assistant","content":"","refusal":null}')]
    content = _content_events(content_event, pieces(words), fault)
    tail = [choice("{}", '"stop"', len(words))]
    if include_usage:
        tail.append(pre + '[],"usage":' + dumps(usage) + _chunk_extra(fault) + "}\n\n")
    tail.append(_DONE)
    return head, content, tail


def _rich_chat_events(rid, created, model, reply, usage, include_usage, fault):
    """A chat stream with reasoning_content deltas and/or parallel tool calls (ids, indexes, argument deltas)."""
    end = _chunk_end(usage, include_usage, fault)

    def chunk(delta, finish=None, done=0):
        body = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
                "system_fingerprint": SYSTEM_FINGERPRINT,
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
        return "data: " + dumps(body)[:-1] + end(done)

    head = [chunk({"role": "assistant", "content": None, "refusal": None})]
    content, done = [], 0
    for piece in pieces(reply.reasoning_words):
        done += 1
        content.append(chunk({"content": None, "reasoning_content": piece}, done=done))
    for piece in pieces(reply.words):
        done += 1
        content.append(chunk({"content": piece}, done=done))
    for index, call in enumerate(reply.tool_calls):
        opening = {"index": index, "id": call.id, "type": "function", "function": {"name": call.name, "arguments": ""}}
        content.append(chunk({"tool_calls": [opening]}, done=done))
        for part in call.argument_pieces():
            content.append(chunk({"tool_calls": [{"index": index, "function": {"arguments": part}}]}, done=done))
    tail = [chunk({}, "tool_calls" if reply.tool_calls else "stop", usage["completion_tokens"])]
    if include_usage:
        tail.append('data: {"id":"%s","object":"chat.completion.chunk","created":%d,"model":%s,"system_fingerprint":"%s",'
                    '"choices":[],"usage":%s%s}\n\n' % (rid, created, dumps(model), SYSTEM_FINGERPRINT, dumps(usage),
                                                      _chunk_extra(fault)))
    tail.append(_DONE)
    return head, content, tail


def _chunk_extra(fault):
    # OpenRouter sends "error": null on healthy chunks; a relay must not read it as an error.
    return ',"error":null' if fault.get("error_null") else ""


def _chunk_end(usage, include_usage, fault):
    """The end of a chunk after its choices, given how many completion tokens are done so far."""
    extra = _chunk_extra(fault)
    if fault.get("usage_every_chunk") and not fault.get("no_usage"):
        def end(done):
            running = dict(usage, completion_tokens=done, total_tokens=usage["prompt_tokens"] + done)
            return ',"usage":' + dumps(running) + extra + "}\n\n"
        return end
    fixed = (',"usage":null' if include_usage else "") + extra + "}\n\n"
    return lambda done: fixed


def _content_events(make_event, text_pieces, fault):
    """One event per piece; with event_bytes, each is padded with dots to exactly that many bytes."""
    size = int_option(fault, "event_bytes")
    if size is None:
        return [make_event(piece, i + 1) for i, piece in enumerate(text_pieces)]
    events = []
    for i, piece in enumerate(text_pieces):
        room = size - len(make_event("", i + 1).encode())
        pad = max(room - len(piece.encode()), 0)
        events.append(make_event(piece + "." * pad, i + 1))
    return events


# ---------------------------------------------------------------- legacy completions


def prompt_texts(prompt):
    """Normalise a legacy/embeddings input (string, strings, token ids, token-id lists) to texts."""
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, list) and prompt:
        if all(isinstance(p, int) for p in prompt):
            return [" ".join(map(str, prompt))]
        if all(isinstance(p, str) for p in prompt):
            return list(prompt)
        if all(isinstance(p, list) and all(isinstance(t, int) for t in p) for p in prompt):
            return [" ".join(map(str, p)) for p in prompt]
    return None


async def completions(request, body, fault):
    model = require_model(body)
    texts = prompt_texts(body.get("prompt"))
    if texts is None:
        raise BadRequest("'prompt' must be a string or an array of strings or tokens", param="prompt")
    words = reply_words(texts[-1], int_option(fault, "chunks"))
    prompt_tokens = sum(len(t.split()) for t in texts)
    usage = {"prompt_tokens": prompt_tokens, "completion_tokens": len(words),
             "total_tokens": prompt_tokens + len(words)}
    rid = f"cmpl-mock{request.app[STATE].next_id()}"
    created = int(time.time())
    if body.get("stream"):
        include = wants_usage(body, fault)
        head, content, tail = _completion_events(rid, created, model, words, usage, include, fault)
        return await stream(request, fault, head, content, tail)
    reply = {
        "id": rid, "object": "text_completion", "created": created, "model": model,
        "choices": [{"text": " ".join(words), "index": 0, "logprobs": None, "finish_reason": "stop"}],
        "usage": usage, "system_fingerprint": SYSTEM_FINGERPRINT,
    }
    if fault.get("no_usage"):
        del reply["usage"]
    return await answer(request, fault, reply)


def _completion_events(rid, created, model, words, usage, include_usage, fault):
    """SSE events (head, content, tail) for a legacy completions stream (no role chunk)."""
    pre = ('data: {"id":"%s","object":"text_completion","created":%d,"model":%s,'
           '"system_fingerprint":"%s","choices":' % (rid, created, dumps(model), SYSTEM_FINGERPRINT))
    end = _chunk_end(usage, include_usage, fault)

    def choice(text, finish="null", done=0):
        return pre + '[{"text":%s,"index":0,"logprobs":null,"finish_reason":%s}]' % (dumps(text), finish) + end(done)

    content = _content_events(lambda piece, done: choice(piece, done=done), pieces(words), fault)
    tail = [choice("", '"stop"', len(words))]
    if include_usage:
        tail.append(pre + '[],"usage":' + dumps(usage) + _chunk_extra(fault) + "}\n\n")
    tail.append(_DONE)
    return [], content, tail


# ---------------------------------------------------------------- embeddings and models


def embedding(text, dims):
    """Deterministic unit vector for `text` as little-endian float32 bytes."""
    raw = hashlib.shake_256(text.encode()).digest(2 * dims)
    values = [int.from_bytes(raw[i:i + 2], "little") / 32767.5 - 1.0 for i in range(0, 2 * dims, 2)]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return struct.pack(f"<{dims}f", *(v / norm for v in values))


async def embeddings(request, body, fault):
    model = require_model(body)
    texts = prompt_texts(body.get("input"))
    if texts is None:
        raise BadRequest("'input' must be a non-empty string or array", param="input")
    dims = body.get("dimensions") or EMBED_DIMS
    if not isinstance(dims, int) or not 1 <= dims <= MAX_EMBED_DIMS:
        raise BadRequest(f"'dimensions' must be an integer in 1..{MAX_EMBED_DIMS}", param="dimensions")
    as_base64 = body.get("encoding_format") == "base64"
    data = []
    for index, text in enumerate(texts):
        packed = embedding(text, dims)
        vector = base64.b64encode(packed).decode() if as_base64 else list(struct.unpack(f"<{dims}f", packed))
        data.append({"object": "embedding", "index": index, "embedding": vector})
    tokens = sum(max(1, len(t.split())) for t in texts)
    reply = {"object": "list", "data": data, "model": model,
             "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
    if fault.get("no_usage"):
        del reply["usage"]
    return await answer(request, fault, reply)


def openai_model(model_id):
    return {"id": model_id, "object": "model", "created": 1700000000, "owned_by": "mock"}


async def list_models(request, body, fault):
    data = [openai_model(m) for m in request.app[STATE].model_ids]
    return web.Response(body=dumps({"object": "list", "data": data}).encode(), content_type="application/json")


async def get_model(request, body, fault):
    model_id = request.match_info["model_id"]
    if model_id not in request.app[STATE].model_ids:
        return json_response({"error": {"message": f"The model '{model_id}' does not exist",
                                        "type": "invalid_request_error", "param": "model", "code": "model_not_found"}},
                             status=404)
    return json_response(openai_model(model_id))
