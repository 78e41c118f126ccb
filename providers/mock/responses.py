"""OpenAI Responses as the mock speaks it: POST /v1/responses (JSON, SSE), GET /v1/responses/{id},
POST /v1/responses/compact, and the WebSocket mode on /v1/responses (Codex CLI's transport)."""

from __future__ import annotations

import asyncio
import json
import time

from aiohttp import WSMsgType, web

from .conversation import Turn, pieces, plan_reply, words_of
from .core import (
    OPENAI, STATE, BadRequest, Dialect, answer, answer_faults, dumps, endpoint,
    decode_sealed, fault_options, int_option, json_response, record_request, require_model, seal,
    split_events, sse, stream,
)

IMAGE_TOKENS = 85
MAX_STORED_RESPONSES = 2000


class ResponsesDialect(Dialect):
    """OpenAI's errors, but a stream fails with a Responses `error` event."""

    name = "openai_responses"
    malformed_event = 'event: response.output_text.delta\ndata: {"broken": \n\n'

    def stream_error_event(self, status, message, sent=()):
        err_type, code, _ = self.error_kind(status)
        sequence = sum(event.count("\n\n") for event in sent)
        return sse("error", {"type": "error", "code": code or err_type, "message": message, "param": None,
                             "sequence_number": sequence})


RESPONSES = ResponsesDialect()


def add_routes(app):
    app.router.add_post("/v1/responses", endpoint(create_response, RESPONSES))
    app.router.add_post("/v1/responses/compact", endpoint(compact, RESPONSES))
    app.router.add_get("/v1/responses", websocket)
    app.router.add_get("/v1/responses/{response_id}", endpoint(get_response, RESPONSES, has_body=False))


# ---------------------------------------------------------------- reading a request


def item_text(content):
    """Text of an input item's content: a string or input_text / output_text parts."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return ""
    return " ".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))


def input_items(body, state):
    """The whole conversation: the stored previous response's input and output, then this input."""
    items = body.get("input")
    if items is None:
        items = []
    elif isinstance(items, str):
        items = [{"role": "user", "content": items}]
    elif not isinstance(items, list):
        raise BadRequest("Invalid type for 'input': expected a string or an array of items.", param="input")
    previous_id = body.get("previous_response_id")
    if previous_id:
        stored = state.responses.get(previous_id)
        if stored is None:
            raise _NotFound(f"Previous response with id '{previous_id}' not found.", "previous_response_id",
                            "previous_response_not_found")
        items = stored["input"] + stored["response"]["output"] + items
    return [i for i in items if isinstance(i, dict)]


class _NotFound(BadRequest):
    def __init__(self, message, param, code):
        super().__init__(message, param)
        self.code = code


def read_turn(body, items, fault):
    images = 0
    for index, item in enumerate(items):
        for part in item.get("content") if isinstance(item.get("content"), list) else []:
            if isinstance(part, dict) and part.get("type") == "input_image":
                if not (part.get("image_url") or part.get("file_id")):
                    raise BadRequest(f"Invalid 'input[{index}].content': input_image needs image_url or file_id.",
                                     param=f"input[{index}].content")
                images += 1
    trailing = []
    for item in reversed(items):
        if item.get("type") != "function_call_output":
            break
        output = item.get("output")
        trailing.insert(0, output if isinstance(output, str) else item_text(output))
    reasoning = body.get("reasoning")
    turn = Turn(
        last_user_text=next((item_text(i.get("content")) for i in reversed(items)
                             if i.get("role") == "user" and i.get("type", "message") == "message"), ""),
        tool_results=trailing,
        tools=[{"name": t["name"], "parameters": t.get("parameters")} for t in body.get("tools") or []
               if isinstance(t, dict) and t.get("type") == "function" and isinstance(t.get("name"), str)],
        tool_choice_none=body.get("tool_choice") == "none",
        prompt_tokens=_prompt_tokens(body, items) + IMAGE_TOKENS * images,
        wants_reasoning=isinstance(reasoning, dict) and reasoning.get("effort") not in (None, "none"),
    )
    if fault.get("require_signature"):
        _check_reasoning_came_back(items)
    return turn


def _prompt_tokens(body, items):
    texts = [body.get("instructions") if isinstance(body.get("instructions"), str) else ""]
    for item in items:
        texts.append(item_text(item.get("content")))
        if item.get("type") == "function_call_output":
            output = item.get("output")
            texts.append(output if isinstance(output, str) else item_text(output))
    return sum(words_of(t) for t in texts) + 3


def _check_reasoning_came_back(items):
    """A function call the model made after reasoning must come back with that reasoning item, intact."""
    for index, item in enumerate(items):
        if item.get("type") in ("reasoning", "compaction") and "encrypted_content" in item:
            if decode_sealed(item.get("encrypted_content")) is None:
                raise _NotFound(f"The encrypted content for item {item.get('id')} could not be verified.",
                                f"input[{index}]", "invalid_encrypted_content")
    if not items or items[-1].get("type") != "function_call_output":
        return
    last_user = max((i for i, item in enumerate(items) if item.get("role") == "user"), default=-1)
    calls = [i for i, item in enumerate(items) if i > last_user and item.get("type") == "function_call"]
    if calls and not any(items[i].get("type") == "reasoning" and items[i].get("encrypted_content")
                         for i in range(last_user + 1, calls[0])):
        call = items[calls[0]]
        raise _NotFound(f"Item '{call.get('id') or call.get('call_id')}' of type 'function_call' was provided "
                        "without its required 'reasoning' item.", "input", "missing_required_item")


# ---------------------------------------------------------------- building a response


def usage_of(turn, reply, fault):
    cached = min(max(int_option(fault, "cached_tokens", 0), 0), turn.prompt_tokens)
    return {"input_tokens": turn.prompt_tokens, "input_tokens_details": {"cached_tokens": cached},
            "output_tokens": reply.output_tokens, "output_tokens_details": {"reasoning_tokens": reply.reasoning_tokens},
            "total_tokens": turn.prompt_tokens + reply.output_tokens}


def output_items(rid, reply, body, fault):
    """The finished output items: reasoning, message, function calls."""
    suffix = rid[-12:]
    items = []
    if reply.reasoning_words:
        reasoning = body.get("reasoning") if isinstance(body.get("reasoning"), dict) else {}
        wants_summary = bool(reasoning.get("summary")) or bool(fault.get("reasoning"))
        item = {"id": f"rs_{suffix}", "type": "reasoning",
                "summary": [{"type": "summary_text", "text": reply.reasoning}] if wants_summary else []}
        include = body.get("include") or []
        if "reasoning.encrypted_content" in include or fault.get("reasoning"):
            item["encrypted_content"] = seal(reply.reasoning)
        items.append(item)
    if reply.words:
        items.append({"id": f"msg_{suffix}", "type": "message", "status": "completed", "role": "assistant",
                      "content": [{"type": "output_text", "text": reply.text, "annotations": [], "logprobs": []}]})
    for i, call in enumerate(reply.tool_calls):
        items.append({"id": f"fc_{suffix}{i}", "type": "function_call", "status": "completed",
                      "arguments": call.arguments, "call_id": call.id, "name": call.name})
    return items


def response_object(rid, body, status, output, usage, created):
    reasoning = body.get("reasoning") if isinstance(body.get("reasoning"), dict) else {}
    return {
        "id": rid, "object": "response", "created_at": created, "status": status, "background": False,
        "error": None, "incomplete_details": None, "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"), "model": body["model"], "output": output,
        "parallel_tool_calls": body.get("parallel_tool_calls", True),
        "previous_response_id": body.get("previous_response_id"),
        "reasoning": {"effort": reasoning.get("effort"), "summary": reasoning.get("summary")},
        "store": body.get("store", True), "temperature": body.get("temperature", 1.0),
        "text": body.get("text") or {"format": {"type": "text"}}, "tool_choice": body.get("tool_choice", "auto"),
        "tools": body.get("tools") or [], "top_p": body.get("top_p", 1.0), "truncation": "disabled",
        "usage": usage, "user": None, "metadata": body.get("metadata") or {},
    }


def generate(state, body, fault):
    """Plan one response: (response object when completed, its events as [(payload, is_content)])."""
    require_model(body)
    items = input_items(body, state)
    if not items:
        raise BadRequest("Missing required parameter: 'input'.", param="input")
    turn = read_turn(body, items, fault)
    rid = f"resp_mock{state.next_id()}"
    reply = plan_reply(turn, fault, lambda i: f"call_mock{rid[-8:]}{i}")
    usage = None if fault.get("no_usage") else usage_of(turn, reply, fault)
    created = int(time.time())
    output = output_items(rid, reply, body, fault)
    final = response_object(rid, body, "completed", output, usage, created)
    if body.get("store", True) is not False:
        _store(state, rid, items, final)
    return final, _events(body, final, reply)


def _store(state, rid, items, final):
    state.responses[rid] = {"input": items, "response": final}
    if len(state.responses) > MAX_STORED_RESPONSES:
        for old in list(state.responses)[: MAX_STORED_RESPONSES // 2]:
            del state.responses[old]


def _events(body, final, reply):
    """The full event sequence of a streamed response, as [(payload without sequence_number, is_content)]."""
    start = dict(final, status="in_progress", output=[], usage=None)
    flat = [({"type": "response.created", "response": start}, False),
            ({"type": "response.in_progress", "response": start}, False)]

    def add(payload, is_content=False):
        flat.append((payload, is_content))

    for index, item in enumerate(final["output"]):
        ids = {"item_id": item["id"], "output_index": index}
        if item["type"] == "reasoning":
            add({"type": "response.output_item.added", "output_index": index,
                 "item": dict(item, summary=[])})
            for s, summary in enumerate(item["summary"]):
                part = {"type": "summary_text", "text": ""}
                add({"type": "response.reasoning_summary_part.added", **ids, "summary_index": s, "part": part})
                for piece in pieces(reply.reasoning_words):
                    add({"type": "response.reasoning_summary_text.delta", **ids, "summary_index": s,
                         "delta": piece}, True)
                add({"type": "response.reasoning_summary_text.done", **ids, "summary_index": s,
                     "text": summary["text"]})
                add({"type": "response.reasoning_summary_part.done", **ids, "summary_index": s,
                     "part": dict(part, text=summary["text"])})
        elif item["type"] == "message":
            add({"type": "response.output_item.added", "output_index": index,
                 "item": dict(item, status="in_progress", content=[])})
            empty = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
            add({"type": "response.content_part.added", **ids, "content_index": 0, "part": empty})
            for piece in pieces(reply.words):
                add({"type": "response.output_text.delta", **ids, "content_index": 0, "delta": piece,
                     "logprobs": []}, True)
            add({"type": "response.output_text.done", **ids, "content_index": 0, "text": reply.text, "logprobs": []})
            add({"type": "response.content_part.done", **ids, "content_index": 0, "part": item["content"][0]})
        elif item["type"] == "function_call":
            add({"type": "response.output_item.added", "output_index": index,
                 "item": dict(item, status="in_progress", arguments="")})
            call = next(c for c in reply.tool_calls if c.id == item["call_id"])
            for piece in call.argument_pieces():
                add({"type": "response.function_call_arguments.delta", **ids, "delta": piece}, True)
            add({"type": "response.function_call_arguments.done", **ids, "name": item["name"],
                 "arguments": item["arguments"]})
        add({"type": "response.output_item.done", "output_index": index, "item": item})
    add({"type": "response.completed", "response": final})
    for sequence, (payload, _) in enumerate(flat):
        payload["sequence_number"] = sequence
    return flat


# ---------------------------------------------------------------- HTTP endpoints


async def create_response(request, body, fault):
    state = request.app[STATE]
    try:
        final, events = generate(state, body, fault)
    except _NotFound as exc:
        return OPENAI.error(400, str(exc), param=exc.param, code=exc.code)
    if body.get("stream"):
        flat = [(sse(payload["type"], payload), is_content) for payload, is_content in events]
        return await stream(request, fault, *split_events(flat), dialect=RESPONSES)
    return await answer(request, fault, final)


async def get_response(request, body, fault):
    response_id = request.match_info["response_id"]
    stored = request.app[STATE].responses.get(response_id)
    if stored is None:
        return OPENAI.error(404, f"Response with id '{response_id}' not found.", param="response_id")
    return json_response(stored["response"])


async def compact(request, body, fault):
    """All user messages, then one compaction item whose encrypted_content seals the rest."""
    require_model(body)
    state = request.app[STATE]
    try:
        items = input_items(body, state)
    except _NotFound as exc:
        return OPENAI.error(400, str(exc), param=exc.param, code=exc.code)
    users = [{"type": "message", "role": "user", "status": "completed",
              "content": [{"type": "input_text", "text": item_text(i.get("content"))}]}
             for i in items if i.get("role") == "user"]
    rest = " ".join(item_text(i.get("content")) or str(i.get("arguments") or i.get("output") or "")
                    for i in items if i.get("role") != "user")
    cid = state.next_id()
    output = users + [{"id": f"cmp_mock{cid}", "type": "compaction", "encrypted_content": seal(f"Summary: {rest}"),
                       "created_by": "mock"}]
    tokens = _prompt_tokens(body, items)
    summary_tokens = len(f"Summary: {rest}".split())
    usage = {"input_tokens": tokens, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": summary_tokens,
             "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": tokens + summary_tokens}
    return await answer(request, fault, {"id": f"resp_mock{cid}", "object": "response.compaction",
                                         "created_at": int(time.time()), "output": output, "usage": usage})


# ---------------------------------------------------------------- WebSocket mode


async def websocket(request):
    """Codex CLI's transport: each {"type": "response.create", ...} text frame gets the stream's events as frames."""
    state = request.app[STATE]
    token, scheme = OPENAI.credential(request)
    if not web.WebSocketResponse().can_prepare(request).ok:
        return OPENAI.error(405, f"Invalid URL ({request.method} {request.path})")
    denied = OPENAI.auth_error(token, state)
    if denied is not None:
        record_request(state, request, None, token, scheme)
        return denied
    ws = web.WebSocketResponse(heartbeat=None, max_msg_size=0)
    await ws.prepare(request)
    state.event({"type": "websocket_open", "path": request.path, "t": time.monotonic()})
    outcome = {"type": "websocket_close", "path": request.path}
    try:
        async for message in ws:
            if message.type != WSMsgType.TEXT:
                continue
            if not await _answer_frame(request, ws, state, message.data, token, scheme):
                outcome["dropped"] = True
                break
    except (asyncio.CancelledError, ConnectionError):
        outcome["client_disconnected"] = True
        raise
    finally:
        outcome["t"] = time.monotonic()
        state.event(outcome)
    return ws


async def _answer_frame(request, ws, state, data, token, scheme):
    """Answer one client frame; False when the connection was cut on purpose."""
    try:
        body = json.loads(data)
    except ValueError:
        body = None
    if not isinstance(body, dict) or body.get("type") != "response.create":
        await _send_error(ws, 400, "invalid_request_error", "invalid_event",
                          "Expected a JSON text frame with type 'response.create'.")
        return True
    body = {k: v for k, v in body.items() if k != "type"}
    record_request(state, request, body, token, scheme, transport="websocket")
    try:
        fault = fault_options(request, body, data.encode())
        # Injected statuses come as an error frame; the connection stays open, as upstream's does.
        failure = await answer_faults(request, OPENAI, fault, token)
        if failure is not None:
            error = json.loads(failure.body)["error"]
            await _send_error(ws, failure.status, error["type"], error["code"], error["message"])
            return True
        final, events = generate(state, {**body, "stream": True}, fault)
    except _NotFound as exc:
        await _send_error(ws, 400, "invalid_request_error", exc.code, str(exc))
        return True
    except BadRequest as exc:
        await _send_error(ws, 400, "invalid_request_error", None, str(exc))
        return True
    return await _send_events(request, ws, [payload for payload, _ in events], events, fault)


async def _send_error(ws, status, err_type, code, message):
    await ws.send_str(dumps({"type": "error", "status": status,
                             "error": {"type": err_type, "code": code, "message": message, "param": None}}))


async def _send_events(request, ws, payloads, events, fault):
    content_positions = [i for i, (_, is_content) in enumerate(events) if is_content]
    drop_after = int_option(fault, "chunks_then_drop")
    error_after = int_option(fault, "error_after")
    cut = drop_after if drop_after is not None else error_after
    if cut is not None:
        end = content_positions[cut - 1] + 1 if 0 < cut <= len(content_positions) else \
            (content_positions[0] if content_positions and cut <= 0 else len(payloads) - 1)
        payloads = payloads[:end]
    chunk_delay = float(fault.get("chunk_delay") or 0)
    if fault.get("first_event_delay"):
        await asyncio.sleep(float(fault["first_event_delay"]))
    for i, payload in enumerate(payloads):
        if i and chunk_delay:
            await asyncio.sleep(chunk_delay)
        await ws.send_str(dumps(payload))
    if drop_after is not None:
        # No close frame: the socket just goes away, as when a connection breaks.
        request.transport.close()
        return False
    if error_after is not None:
        status = int_option(fault, "error_status", 500)
        err_type, code, message = OPENAI.error_kind(status)
        await _send_error(ws, status, err_type, code, fault.get("message") or message)
    return True
