"""OpenAI Responses (/v1/responses) to and from the hub form."""
import time
import uuid

from .. import hub
from ..sse import EventSplitter
from . import (
    EventReader, InvalidField, came_from, dumps, error_message, load_json, require_bool, require_model,
    require_positive_int,
)
from .openai_chat import error_body, object_schema
from .seals import foreign, seal, sealed_thinking

FORMAT = "openai_responses"
ROLES = {"user", "assistant", "system", "developer"}
KNOWN = {
    "model", "input", "instructions", "tools", "tool_choice", "max_output_tokens", "temperature",
    "top_p", "stream", "text", "reasoning", "parallel_tool_calls", "user", "metadata",
    "previous_response_id", "conversation", "background", "prompt", "stream_options",
}
# Server-side state another provider cannot see: translating would silently change the meaning
STATEFUL = ("previous_response_id", "conversation", "prompt", "background")

__all__ = ["read_request", "write_request", "read_answer", "write_answer", "StreamReader", "StreamWriter",
           "error_body", "error_event", "read_error", "validate_request"]


# --- validation ------------------------------------------------------------------------

def validate_request(body: dict) -> None:
    if not isinstance(body, dict):
        raise InvalidField("body", "The body must be a JSON object.")
    require_model(body)
    items = body.get("input")
    if not isinstance(items, (str, list)) or not items:
        raise InvalidField("input", "`input` must be a non-empty string or array.")
    for i, item in enumerate(items if isinstance(items, list) else []):
        if not isinstance(item, dict):
            raise InvalidField(f"input[{i}]", "Each input item must be an object.")
        if item.get("type", "message") == "message":
            if item.get("role") not in ROLES:
                raise InvalidField(f"input[{i}].role", f"`role` must be one of {', '.join(sorted(ROLES))}.")
            if not isinstance(item.get("content"), (str, list)):
                raise InvalidField(f"input[{i}].content", "`content` must be a string or an array.")
        elif item["type"] in ("function_call_output", "custom_tool_call_output", "function_call", "custom_tool_call"):
            if not isinstance(item.get("call_id"), str):
                raise InvalidField(f"input[{i}].call_id", "`call_id` is required.")
    if body.get("instructions") is not None and not isinstance(body["instructions"], str):
        raise InvalidField("instructions", "`instructions` must be a string.")
    require_positive_int(body, "max_output_tokens")
    require_bool(body, "stream")


# --- requests ----------------------------------------------------------------------------

def read_request(body) -> hub.Request:
    body = load_json(body)
    validate_request(body)
    for name in STATEFUL:
        if body.get(name):
            raise InvalidField(name, f"`{name}` refers to state kept by OpenAI; it cannot be sent to another provider.")
    req = hub.Request(model=body.get("model") or "", format=FORMAT)
    if body.get("instructions"):
        req.system = [hub.Text(body["instructions"])]
    items = body["input"]
    if isinstance(items, str):
        items = [{"role": "user", "content": items}]
    for i, item in enumerate(items):
        start = len(req.messages)
        _read_item(item, f"input[{i}]", req)
        came_from(req.messages, start, f"input[{i}]")
    for i, tool in enumerate(body.get("tools") or []):
        kind = tool.get("type")
        if kind == "function":
            req.tools.append(hub.Tool(tool.get("name", ""), tool.get("description"), tool.get("parameters"),
                                      strict=tool.get("strict")))
        elif kind == "custom":
            req.tools.append(hub.Tool(tool.get("name", ""), tool.get("description"), tool.get("format"), "custom"))
        else:
            req.drop(f"tools[{i}]", f"built-in tool {kind!r} has no equivalent")
    req.tool_choice = _read_tool_choice(body.get("tool_choice"), req)
    req.max_tokens = body.get("max_output_tokens")
    req.temperature = body.get("temperature")
    req.top_p = body.get("top_p")
    req.stream = bool(body.get("stream"))
    spec = (body.get("text") or {}).get("format") or {}
    if spec.get("type") == "json_schema":
        req.response_format = hub.ResponseFormat("json_schema", spec.get("schema"), spec.get("name"), spec.get("strict"))
    elif spec.get("type") == "json_object":
        req.response_format = hub.ResponseFormat("json_object")
    req.reasoning_effort = (body.get("reasoning") or {}).get("effort")
    req.parallel_tool_calls = body.get("parallel_tool_calls")
    req.user = body.get("user")
    req.metadata = body.get("metadata")
    req.extras = {k: v for k, v in body.items() if k not in KNOWN}
    return req


def _assistant(req: hub.Request) -> hub.Message:
    """The assistant turn items belong to: reasoning, messages and calls in a row form one."""
    if not req.messages or req.messages[-1].role != hub.Role.ASSISTANT:
        req.messages.append(hub.Message(hub.Role.ASSISTANT))
    return req.messages[-1]


def _read_item(item: dict, where: str, req: hub.Request) -> None:
    kind = item.get("type", "message")
    if kind == "message":
        role = hub.Role(item["role"])
        parts = _read_content(item["content"], where)
        if role == hub.Role.ASSISTANT:
            _assistant(req).parts.extend(parts)
        else:
            req.messages.append(hub.Message(role, parts))
    elif kind == "reasoning":
        texts = [s.get("text", "") for s in item.get("summary") or []]
        texts = texts or [c.get("text", "") for c in item.get("content") or []]
        thinking = sealed_thinking("\n\n".join(texts), item.get("encrypted_content"), FORMAT)
        thinking.id = thinking.id or item.get("id")
        _assistant(req).parts.append(thinking)
    elif kind == "function_call":
        _assistant(req).parts.append(hub.ToolCall(item["call_id"], item.get("name", ""), item.get("arguments") or "{}"))
    elif kind == "custom_tool_call":
        _assistant(req).parts.append(hub.ToolCall(item["call_id"], item.get("name", ""), item.get("input", ""), "custom"))
    elif kind in ("function_call_output", "custom_tool_call_output"):
        output = item.get("output")
        parts = _read_content(output, where) if output else []
        result = hub.ToolResult(item["call_id"], parts)
        if req.messages and req.messages[-1].role == hub.Role.TOOL:
            req.messages[-1].parts.append(result)
        else:
            req.messages.append(hub.Message(hub.Role.TOOL, [result]))
    else:
        raise InvalidField(where, f"Input items of type {kind!r} cannot be translated to another format.")


def _read_content(content, where: str) -> list:
    if isinstance(content, str):
        return [hub.Text(content)]
    parts = []
    for j, part in enumerate(content):
        kind = part.get("type")
        if kind in ("input_text", "output_text", "text"):
            parts.append(hub.Text(part.get("text", "")))
        elif kind == "refusal":
            parts.append(hub.Text(part.get("refusal", "")))
        elif kind == "input_file" and (part.get("file_data") or part.get("file_url")):
            url = part.get("file_url") or part["file_data"]
            if not url.startswith(("data:", "http:", "https:")):  # bare base64 is accepted too
                url = f"data:application/pdf;base64,{url}"
            parts.append(hub.parse_file_url(url, part.get("filename")))
        elif kind == "input_image" and part.get("image_url"):
            image = hub.parse_data_url(part["image_url"])
            image.detail = None if part.get("detail") in (None, "auto") else part["detail"]
            parts.append(image)
        else:
            raise InvalidField(f"{where}.content[{j}]", f"Content of type {kind!r} cannot be translated to another format.")
    return parts


def _read_tool_choice(choice, req: hub.Request) -> hub.ToolChoice | None:
    if choice is None:
        return None
    if isinstance(choice, str):
        return hub.ToolChoice(choice)
    if choice.get("type") in ("function", "custom"):
        return hub.ToolChoice("tool", choice.get("name"))
    req.drop("tool_choice", f"tool_choice of type {choice.get('type')!r} has no equivalent")
    return None


def write_request(req: hub.Request, model: str) -> dict:
    body: dict = {"model": model}
    instructions = "\n\n".join(t.text for t in req.system if t.text)
    if instructions:
        body["instructions"] = instructions
    body["input"] = _write_items(req, model)
    if req.tools:
        body["tools"] = [_write_tool(tool) for tool in req.tools]
    if req.tool_choice:
        choice = req.tool_choice
        if choice.mode == "tool":
            kinds = {t.name: t.kind for t in req.tools}
            body["tool_choice"] = {"type": kinds.get(choice.name, "function"), "name": choice.name}
        else:
            body["tool_choice"] = choice.mode
    if req.max_tokens is not None:
        body["max_output_tokens"] = req.max_tokens
    for name in ("temperature", "top_p"):
        if getattr(req, name) is not None:
            body[name] = getattr(req, name)
    if req.stop:
        req.drop("stop", "the Responses API has no stop sequences")
    if req.stream:
        body["stream"] = True
    if req.response_format:
        spec = req.response_format
        if spec.type == "json_schema":
            fmt = {"type": "json_schema", "name": spec.name or "response", "schema": spec.schema or {}}
            if spec.strict is not None:
                fmt["strict"] = spec.strict
        else:
            fmt = {"type": spec.type}
        body["text"] = {"format": fmt}
    effort = req.reasoning_effort
    if effort is None and req.reasoning_budget:  # reasoning turned off: say nothing, as models
        effort = hub.effort_for_budget(req.reasoning_budget)  # that cannot reason refuse the field
    if effort is not None:
        body["reasoning"] = {"effort": effort}
    if req.parallel_tool_calls is not None:
        body["parallel_tool_calls"] = req.parallel_tool_calls
    if req.user is not None:
        body["user"] = req.user
    if req.metadata is not None:
        body["metadata"] = req.metadata
    if req.format == FORMAT:
        for name, value in req.extras.items():
            body.setdefault(name, value)
    else:
        for name in req.extras:
            req.drop(name, f"no equivalent in {FORMAT}")
        # A client of another format keeps its history itself: nothing stored at OpenAI, and
        # reasoning comes back encrypted so the next turn can carry it (with readable summaries).
        body["store"] = False
        if effort not in (None, "none"):
            body["reasoning"]["summary"] = "auto"
            body["include"] = ["reasoning.encrypted_content"]
    return body


def _write_items(req: hub.Request, model: str) -> list[dict]:
    items: list[dict] = []
    kinds: dict[str, str] = {}  # call id -> tool kind, for the matching output item
    for i, message in enumerate(req.messages):
        where = message.source or f"input[{i}]"
        if message.role == hub.Role.TOOL:
            items += [_write_result(p, kinds, where, req) for p in message.parts if isinstance(p, hub.ToolResult)]
        elif message.role == hub.Role.ASSISTANT:
            items += _write_assistant(message, kinds, where, req, model)
        else:
            parts = [_write_input_part(p) for p in message.parts if isinstance(p, (hub.Text, hub.Image, hub.File))]
            if message.role != hub.Role.USER:
                parts = [p for p in parts if p["type"] == "input_text"]
            results = [p for p in message.parts if isinstance(p, hub.ToolResult)]
            items += [_write_result(p, kinds, where, req) for p in results]
            if parts:
                items.append({"type": "message", "role": message.role.value, "content": parts})
    return items


def _write_input_part(part) -> dict:
    if isinstance(part, hub.Text):
        return {"type": "input_text", "text": part.text}
    if isinstance(part, hub.File):
        if part.url:
            return {"type": "input_file", "file_url": part.url}
        return {"type": "input_file", "filename": part.name or "document", "file_data": hub.file_data_url(part)}
    return {"type": "input_image", "image_url": hub.image_url(part), "detail": part.detail or "auto"}


def _write_assistant(message: hub.Message, kinds: dict, where: str, req: hub.Request, model: str) -> list[dict]:
    items: list[dict] = []
    for part in message.parts:
        if isinstance(part, hub.Text):
            if items and items[-1]["type"] == "message":  # a run of texts is one message item
                items[-1]["content"].append({"type": "output_text", "text": part.text})
            else:
                items.append({"type": "message", "role": "assistant",
                              "content": [{"type": "output_text", "text": part.text}]})
        elif isinstance(part, hub.ToolCall):
            kinds[part.id] = part.kind
            if part.kind == "custom":
                items.append({"type": "custom_tool_call", "call_id": part.id, "name": part.name, "input": part.arguments})
            else:
                items.append({"type": "function_call", "call_id": part.id, "name": part.name, "arguments": part.arguments})
        elif isinstance(part, hub.Thinking):
            item = _write_reasoning(part, where, req, model)
            if item:
                items.append(item)
    return items


def _write_reasoning(part: hub.Thinking, where: str, req: hub.Request, model: str) -> dict | None:
    """OpenAI accepts only its own reasoning items back: an id and, when stateless, the
    encrypted_content it issued (passed on byte for byte)."""
    if foreign(part, FORMAT):
        req.drop(f"{where}.reasoning", f"reasoning sealed by a {part.origin} provider is only valid there")
        return None
    if part.source_model and part.source_model != model and part.encrypted_content:
        req.drop(f"{where}.reasoning", f"encrypted reasoning from {part.source_model} is not valid for {model}")
        return None
    if not (part.id and part.encrypted_content) and not (part.id and req.format == FORMAT and part.origin in (None, FORMAT)):
        req.drop(f"{where}.reasoning", "reasoning not issued by OpenAI cannot be sent back to it")
        return None
    item = {"type": "reasoning", "id": part.id,
            "summary": [{"type": "summary_text", "text": part.text}] if part.text else []}
    if part.encrypted_content is not None:
        item["encrypted_content"] = part.encrypted_content
    return item


def _write_result(part: hub.ToolResult, kinds: dict, where: str, req: hub.Request) -> dict:
    if part.is_error:
        req.drop(f"{where}.is_error", "Responses tool outputs carry no error flag")
    if len(part.parts) == 1 and isinstance(part.parts[0], hub.Text):
        output = part.parts[0].text
    else:
        output = [_write_input_part(p) for p in part.parts]
    kind = "custom_tool_call_output" if kinds.get(part.call_id) == "custom" else "function_call_output"
    return {"type": kind, "call_id": part.call_id, "output": output}


def _write_tool(tool: hub.Tool) -> dict:
    if tool.kind == "custom":
        out = {"type": "custom", "name": tool.name}
        if tool.description is not None:
            out["description"] = tool.description
        if tool.parameters is not None:
            out["format"] = tool.parameters
        return out
    out = {"type": "function", "name": tool.name}
    if tool.description is not None:
        out["description"] = tool.description
    out["parameters"] = object_schema(tool.parameters)
    # Responses makes function tools strict unless told; schemas from other formats rarely fit strict mode
    out["strict"] = bool(tool.strict)
    return out


# --- answers ---------------------------------------------------------------------------

def read_usage(usage: dict | None) -> hub.Usage | None:
    """Responses input_tokens INCLUDE cached tokens (and cache writes): the hub counts them apart."""
    if not usage:
        return None
    details = usage.get("input_tokens_details") or {}
    cached = details.get("cached_tokens") or 0
    written = details.get("cache_write_tokens") or 0
    return hub.Usage(input_tokens=max((usage.get("input_tokens") or 0) - cached - written, 0), cached_read=cached,
                     cache_write=written, output_tokens=usage.get("output_tokens") or 0,
                     reasoning_tokens=(usage.get("output_tokens_details") or {}).get("reasoning_tokens") or 0)


def write_usage(usage: hub.Usage | None) -> dict | None:
    if usage is None:
        return None
    details = {"cached_tokens": usage.cached_read}
    if usage.cache_write:
        details["cache_write_tokens"] = usage.cache_write
    return {"input_tokens": usage.prompt_tokens, "input_tokens_details": details,
            "output_tokens": usage.output_tokens,
            "output_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
            "total_tokens": usage.prompt_tokens + usage.output_tokens}


def read_status(response: dict, has_calls: bool, refused: bool) -> tuple[hub.StopReason, str | None]:
    """Responses has no stop reason: the status, incomplete_details and the output say it."""
    status = response.get("status")
    if status == "completed":
        if refused:
            return hub.StopReason.REFUSAL, None
        return (hub.StopReason.TOOL_USE if has_calls else hub.StopReason.END), None
    if status == "incomplete":
        reason = (response.get("incomplete_details") or {}).get("reason")
        if reason == "max_output_tokens":
            return hub.StopReason.MAX_TOKENS, None
        if reason == "content_filter":
            return hub.StopReason.CONTENT_FILTER, None
        return hub.StopReason.OTHER, reason or status
    return hub.StopReason.OTHER, status


def write_status(stop: hub.StopReason, raw: str | None) -> tuple[str, dict | None]:
    """(status, incomplete_details) for a stop reason."""
    if stop in (hub.StopReason.END, hub.StopReason.TOOL_USE, hub.StopReason.STOP_SEQUENCE, hub.StopReason.REFUSAL):
        return "completed", None
    if stop == hub.StopReason.MAX_TOKENS:
        return "incomplete", {"reason": "max_output_tokens"}
    if stop == hub.StopReason.CONTENT_FILTER:
        return "incomplete", {"reason": "content_filter"}
    return "incomplete", {"reason": raw or stop.value}  # never passed off as completed


def read_answer(body) -> hub.Answer:
    body = load_json(body)
    model = body.get("model") or ""
    parts, refused = [], False
    for item in body.get("output") or []:
        kind = item.get("type")
        if kind == "reasoning":
            texts = [s.get("text", "") for s in item.get("summary") or []]
            texts = texts or [c.get("text", "") for c in item.get("content") or []]
            parts.append(hub.Thinking(text="\n\n".join(texts), encrypted_content=item.get("encrypted_content"),
                                      source_model=model, id=item.get("id"),
                                      origin=FORMAT if item.get("encrypted_content") else None))
        elif kind == "message":
            for content in item.get("content") or []:
                if content.get("type") == "refusal":
                    refused = True
                    parts.append(hub.Text(content.get("refusal", "")))
                elif content.get("type") == "output_text":
                    parts.append(hub.Text(content.get("text", "")))
        elif kind == "function_call":
            parts.append(hub.ToolCall(item.get("call_id", ""), item.get("name", ""), item.get("arguments") or "{}"))
        elif kind == "custom_tool_call":
            parts.append(hub.ToolCall(item.get("call_id", ""), item.get("name", ""), item.get("input", ""), "custom"))
    has_calls = any(isinstance(p, hub.ToolCall) for p in parts)
    stop, raw = read_status(body, has_calls, refused)
    return hub.Answer(id=body.get("id") or "", model=model, parts=parts, stop_reason=stop,
                      usage=read_usage(body.get("usage")), stop_raw=raw)


def _response_id(answer_id: str) -> str:
    return answer_id if answer_id.startswith("resp_") else f"resp_{answer_id or uuid.uuid4().hex}"


def _output_items(parts: list, response_id: str) -> list[dict]:
    items = []
    for n, part in enumerate(parts):
        if isinstance(part, hub.Text):
            if items and items[-1]["type"] == "message":
                items[-1]["content"].append({"type": "output_text", "text": part.text, "annotations": []})
                continue
            items.append({"type": "message", "id": f"msg_{response_id}_{n}", "status": "completed",
                          "role": "assistant",
                          "content": [{"type": "output_text", "text": part.text, "annotations": []}]})
        elif isinstance(part, hub.Thinking):
            if part.redacted:
                continue  # Anthropic's redacted reasoning has no Responses form
            item = {"type": "reasoning", "id": part.id or f"rs_{response_id}_{n}",
                    "summary": [{"type": "summary_text", "text": part.text}] if part.text else []}
            value = part.encrypted_content or part.signature
            if value or part.origin not in (None, FORMAT):  # another provider's signature (or the
                # mark of unsigned reasoning) rides here, sealed, to come back with the history
                item["encrypted_content"] = seal(value or "", part.origin, FORMAT, part.id, part.source_model)
            items.append(item)
        elif isinstance(part, hub.ToolCall):
            if part.kind == "custom":
                items.append({"type": "custom_tool_call", "id": f"ctc_{part.id}", "call_id": part.id,
                              "name": part.name, "input": part.arguments, "status": "completed"})
            else:
                items.append({"type": "function_call", "id": f"fc_{part.id}", "call_id": part.id,
                              "name": part.name, "arguments": part.arguments, "status": "completed"})
    return items


def _response(response_id: str, model: str, created: int, status: str, output: list, usage=None,
              incomplete=None, error=None) -> dict:
    return {"id": response_id, "object": "response", "created_at": created, "status": status,
            "error": error, "incomplete_details": incomplete, "model": model, "output": output,
            "parallel_tool_calls": True, "tool_choice": "auto", "tools": [], "usage": usage}


def write_answer(ans: hub.Answer, model: str, created: int | None = None) -> dict:
    response_id = _response_id(ans.id)
    status, incomplete = write_status(ans.stop_reason, ans.stop_raw)
    return _response(response_id, model, int(time.time()) if created is None else created, status,
                     _output_items(ans.parts, response_id), write_usage(ans.usage), incomplete)


# --- errors ------------------------------------------------------------------------------

def error_event(status: int, type: str, message: str, code=None, param=None, sequence_number: int = 0) -> bytes:
    payload = {"type": "error", "code": code or type, "message": message, "param": param,
               "sequence_number": sequence_number}
    return b"event: error\ndata: " + dumps(payload).encode() + b"\n\n"


def read_error(content: bytes) -> str:
    return error_message(content)


# --- streams -------------------------------------------------------------------------------

class StreamReader(EventReader):
    """Responses SSE events in, hub events out. Blocks are keyed by output_index (and
    content_index for text), numbered in the order they open."""

    def __init__(self):
        self._splitter = EventSplitter()
        self.done = False
        self._next = 0
        self._blocks: dict[tuple, int] = {}  # (output_index, content_index|None) -> hub index
        self._args_seen: set[int] = set()
        self._summaries: dict[int, int] = {}  # hub index -> summary parts seen
        self._calls = False
        self._refused = False

    def close(self) -> list:
        return []

    def _open(self, key: tuple, kind: hub.BlockKind, **fields) -> list:
        if key in self._blocks:
            return []
        index = self._blocks[key] = self._next
        self._next += 1
        return [hub.BlockStart(index, kind, **fields)]

    def read_event(self, event: dict) -> list:
        kind = event.get("type", "")
        output_index = event.get("output_index", 0)
        if kind == "response.created":
            response = event.get("response") or {}
            return [hub.Start(response.get("id") or "", response.get("model") or "", read_usage(response.get("usage")))]
        if kind == "response.output_item.added":
            item = event.get("item") or {}
            if item.get("type") == "reasoning":
                return self._open((output_index, None), hub.BlockKind.THINKING)
            if item.get("type") in ("function_call", "custom_tool_call"):
                self._calls = True
                events = self._open((output_index, None), hub.BlockKind.TOOL_CALL,
                                    tool_id=item.get("call_id"), tool_name=item.get("name"),
                                    custom=item["type"] == "custom_tool_call")
                arguments = item.get("arguments") or item.get("input")
                if arguments:
                    self._args_seen.add(self._blocks[(output_index, None)])
                    events.append(hub.ToolArgsDelta(self._blocks[(output_index, None)], arguments))
                return events
            return []
        if kind == "response.content_part.added":
            part = event.get("part") or {}
            if part.get("type") not in ("output_text", "refusal"):
                return []
            self._refused |= part.get("type") == "refusal"
            return self._open((output_index, event.get("content_index", 0)), hub.BlockKind.TEXT)
        if kind in ("response.output_text.delta", "response.refusal.delta"):
            key = (output_index, event.get("content_index", 0))
            events = self._open(key, hub.BlockKind.TEXT)
            return events + ([hub.TextDelta(self._blocks[key], event["delta"])] if event.get("delta") else [])
        if kind == "response.content_part.done":
            index = self._blocks.get((output_index, event.get("content_index", 0)))
            return [] if index is None else [hub.BlockStop(index)]
        if kind == "response.reasoning_summary_part.added":
            index = self._blocks.get((output_index, None))
            if index is None:
                return []
            seen = self._summaries[index] = self._summaries.get(index, 0) + 1
            return [hub.ThinkingDelta(index, "\n\n")] if seen > 1 else []  # parts joined as in read_answer
        if kind in ("response.reasoning_summary_text.delta", "response.reasoning_text.delta"):
            index = self._blocks.get((output_index, None))
            return [] if index is None or not event.get("delta") else [hub.ThinkingDelta(index, event["delta"])]
        if kind in ("response.function_call_arguments.delta", "response.custom_tool_call_input.delta"):
            index = self._blocks.get((output_index, None))
            if index is None or not event.get("delta"):
                return []
            self._args_seen.add(index)
            return [hub.ToolArgsDelta(index, event["delta"])]
        if kind == "response.output_item.done":
            return self._item_done(output_index, event.get("item") or {})
        if kind in ("response.completed", "response.incomplete"):
            self.done = True
            response = event.get("response") or {}
            stop, raw = read_status(response, self._calls, self._refused)
            return [hub.Finish(stop, read_usage(response.get("usage")), raw)]
        if kind == "response.failed":
            self.done = True
            error = (event.get("response") or {}).get("error") or {}
            return [hub.Error(error.get("code") or "server_error", error.get("message") or "The response failed.")]
        if kind == "error":
            self.done = True
            return [hub.Error(event.get("code") or "server_error", event.get("message") or "")]
        return []

    def _item_done(self, output_index: int, item: dict) -> list:
        index = self._blocks.get((output_index, None))
        if index is None:
            return []
        events = []
        if item.get("type") == "reasoning" and item.get("encrypted_content"):
            events.append(hub.SignatureDelta(index, item["encrypted_content"], True, FORMAT, item.get("id")))
        arguments = item.get("arguments") or item.get("input")
        if item.get("type") in ("function_call", "custom_tool_call") and index not in self._args_seen and arguments:
            events.append(hub.ToolArgsDelta(index, arguments))  # some servers send arguments only here
        return events + [hub.BlockStop(index)]


class StreamWriter:
    """Hub events in, Responses SSE out: response.created and .in_progress first; each block an
    output item (added, its parts and deltas, done) with one id and output_index throughout;
    then response.completed, .incomplete or .failed carrying the id, the output and usage."""

    def __init__(self, model: str, created: int | None = None):
        self.model = model
        self.created = int(time.time()) if created is None else created
        self.id = None
        self.finished = False
        self._sequence = 0
        self._output: list[dict] = []
        self._items: dict[int, int] = {}  # hub index -> output_index
        self._open: int | None = None  # hub index of the open block
        self._usage: hub.Usage | None = None

    def write(self, event) -> bytes:
        if self.finished:
            return b""
        out = b""
        if self.id is None:
            out += self._start(event if isinstance(event, hub.Start) else hub.Start("", ""))
            if isinstance(event, hub.Start):
                return out
        if isinstance(event, hub.BlockStart):
            out += self._open_block(event)
        elif isinstance(event, hub.TextDelta):
            out += self._delta(event.index, hub.BlockKind.TEXT, event.text)
        elif isinstance(event, hub.ThinkingDelta):
            out += self._delta(event.index, hub.BlockKind.THINKING, event.text)
        elif isinstance(event, hub.ToolArgsDelta):
            out += self._delta(event.index, hub.BlockKind.TOOL_CALL, event.json)
        elif isinstance(event, hub.SignatureDelta):
            item = self._item(event.index)
            if item is not None and item["type"] == "reasoning":  # sent in output_item.done
                item["encrypted_content"] = seal(event.signature, event.origin, FORMAT, event.id, event.model)
        elif isinstance(event, hub.BlockStop):
            if self._open == event.index:
                out += self._close_open()
        elif isinstance(event, hub.Finish):
            out += self._finish(event)
        elif isinstance(event, hub.Error):
            out += self._fail(event.type, event.message)
        return out

    def fail(self, message: str, type: str = "server_error") -> bytes:
        return self.write(hub.Error(type, message))

    def _event(self, kind: str, **fields) -> bytes:
        payload = {"type": kind, **fields, "sequence_number": self._sequence}
        self._sequence += 1
        return f"event: {kind}\n".encode() + b"data: " + dumps(payload).encode() + b"\n\n"

    def _response(self, status: str, **fields) -> dict:
        return _response(self.id, self.model, self.created, status, self._output, **fields)

    def _start(self, event: hub.Start) -> bytes:
        self.id = _response_id(event.id)
        self._usage = event.usage
        return (self._event("response.created", response=self._response("in_progress"))
                + self._event("response.in_progress", response=self._response("in_progress")))

    def _item(self, index: int) -> dict | None:
        position = self._items.get(index)
        return None if position is None else self._output[position]

    def _open_block(self, event: hub.BlockStart) -> bytes:
        if event.index in self._items or event.kind == hub.BlockKind.REDACTED_THINKING:
            return b""  # redacted thinking is another provider's secret: nothing to show here
        out = self._close_open()
        output_index = len(self._output)
        if event.kind == hub.BlockKind.TEXT:
            item = {"id": f"msg_{self.id[5:]}_{output_index}", "type": "message", "status": "in_progress",
                    "role": "assistant", "content": []}
        elif event.kind == hub.BlockKind.THINKING:
            item = {"id": f"rs_{self.id[5:]}_{output_index}", "type": "reasoning", "summary": []}
        elif event.custom:
            item = {"id": f"ctc_{event.tool_id}", "type": "custom_tool_call", "status": "in_progress",
                    "input": "", "call_id": event.tool_id, "name": event.tool_name}
        else:
            item = {"id": f"fc_{event.tool_id}", "type": "function_call", "status": "in_progress",
                    "arguments": "", "call_id": event.tool_id, "name": event.tool_name}
        self._output.append(item)
        self._items[event.index] = output_index
        self._open = event.index
        out += self._event("response.output_item.added", output_index=output_index, item=dict(item, content=[])
                           if item["type"] == "message" else dict(item))
        if item["type"] == "message":
            item["content"].append({"type": "output_text", "text": "", "annotations": []})
            out += self._event("response.content_part.added", item_id=item["id"], output_index=output_index,
                               content_index=0, part={"type": "output_text", "text": "", "annotations": []})
        return out

    def _delta(self, index: int, kind: hub.BlockKind, text: str) -> bytes:
        out = b""
        if index not in self._items:
            out += self._open_block(hub.BlockStart(index, kind, tool_id=f"call_{index}", tool_name=""))
        elif self._open != index:
            return b""  # a block already done cannot take more
        item, output_index = self._item(index), self._items[index]
        if item["type"] == "message":
            item["content"][0]["text"] += text
            return out + self._event("response.output_text.delta", item_id=item["id"], output_index=output_index,
                                     content_index=0, delta=text, logprobs=[])
        if item["type"] == "reasoning":
            if not item["summary"]:
                item["summary"].append({"type": "summary_text", "text": ""})
                out += self._event("response.reasoning_summary_part.added", item_id=item["id"],
                                   output_index=output_index, summary_index=0,
                                   part={"type": "summary_text", "text": ""})
            item["summary"][0]["text"] += text
            return out + self._event("response.reasoning_summary_text.delta", item_id=item["id"],
                                     output_index=output_index, summary_index=0, delta=text)
        if item["type"] == "function_call" and kind == hub.BlockKind.TOOL_CALL:
            item["arguments"] += text
            return out + self._event("response.function_call_arguments.delta", item_id=item["id"],
                                     output_index=output_index, delta=text)
        if item["type"] == "custom_tool_call" and kind == hub.BlockKind.TOOL_CALL:
            item["input"] += text
            return out + self._event("response.custom_tool_call_input.delta", item_id=item["id"],
                                     output_index=output_index, delta=text)
        return out

    def _close_open(self) -> bytes:
        if self._open is None:
            return b""
        index, self._open = self._open, None
        item, output_index = self._item(index), self._items[index]
        out = b""
        if item["type"] == "message":
            part = item["content"][0]
            out += self._event("response.output_text.done", item_id=item["id"], output_index=output_index,
                               content_index=0, text=part["text"], logprobs=[])
            out += self._event("response.content_part.done", item_id=item["id"], output_index=output_index,
                               content_index=0, part=part)
            item["status"] = "completed"
        elif item["type"] == "reasoning" and item["summary"]:
            part = item["summary"][0]
            out += self._event("response.reasoning_summary_text.done", item_id=item["id"],
                               output_index=output_index, summary_index=0, text=part["text"])
            out += self._event("response.reasoning_summary_part.done", item_id=item["id"],
                               output_index=output_index, summary_index=0, part=part)
        elif item["type"] == "function_call":
            out += self._event("response.function_call_arguments.done", item_id=item["id"],
                               output_index=output_index, arguments=item["arguments"])
            item["status"] = "completed"
        elif item["type"] == "custom_tool_call":
            out += self._event("response.custom_tool_call_input.done", item_id=item["id"],
                               output_index=output_index, input=item["input"])
            item["status"] = "completed"
        return out + self._event("response.output_item.done", output_index=output_index, item=item)

    def _finish(self, event: hub.Finish) -> bytes:
        out = self._close_open()
        self.finished = True
        status, incomplete = write_status(event.stop_reason, event.stop_raw)
        usage = write_usage(hub.merge_usage(self._usage, event.usage))
        kind = "response.completed" if status == "completed" else "response.incomplete"
        return out + self._event(kind, response=self._response(status, usage=usage, incomplete=incomplete))

    def _fail(self, code: str, message: str) -> bytes:
        out = self._close_open()
        self.finished = True
        out += error_event(500, code, message, sequence_number=self._sequence)
        self._sequence += 1
        return out + self._event("response.failed", response=self._response(
            "failed", error={"code": code, "message": message}))
