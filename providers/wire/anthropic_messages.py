"""Anthropic Messages (/v1/messages) to and from the hub form."""
import base64
import binascii
import json
import uuid
from json.encoder import encode_basestring_ascii

from .. import hub
from ..sse import EventSplitter, named_event
from . import (
    EventReader, InvalidField, came_from, custom_as_function, error_message, load_json, parse_arguments,
    require_bool, require_model, require_positive_int, user_turn_runs,
)
from .openai_chat import object_schema
from .seals import foreign, seal, sealed_thinking, unseal

FORMAT = "anthropic_messages"
DEFAULT_MAX_TOKENS = 8192  # Anthropic requires max_tokens; other formats may leave it out
MIN_THINKING_BUDGET = 1024  # the smallest budget_tokens Anthropic accepts

STOP_READ = {
    "end_turn": hub.StopReason.END,
    "max_tokens": hub.StopReason.MAX_TOKENS,
    "model_context_window_exceeded": hub.StopReason.MAX_TOKENS,
    "stop_sequence": hub.StopReason.STOP_SEQUENCE,
    "tool_use": hub.StopReason.TOOL_USE,
    "pause_turn": hub.StopReason.PAUSE_TURN,
    "refusal": hub.StopReason.REFUSAL,
}
STOP_WRITE = {
    hub.StopReason.END: "end_turn",
    hub.StopReason.MAX_TOKENS: "max_tokens",
    hub.StopReason.STOP_SEQUENCE: "stop_sequence",
    hub.StopReason.TOOL_USE: "tool_use",
    hub.StopReason.PAUSE_TURN: "pause_turn",
    hub.StopReason.REFUSAL: "refusal",
    hub.StopReason.CONTENT_FILTER: "refusal",
}
KNOWN = {
    "model", "messages", "system", "tools", "tool_choice", "max_tokens", "temperature", "top_p",
    "stop_sequences", "stream", "metadata", "thinking", "output_config", "output_format",
}
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
               404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error",
               500: "api_error", 529: "overloaded_error"}


# --- validation ------------------------------------------------------------------------

def validate_request(body: dict) -> None:
    if not isinstance(body, dict):
        raise InvalidField("body", "The body must be a JSON object.")
    require_model(body)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidField("messages", "`messages` must be a non-empty array.")
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise InvalidField(f"messages.{i}", "Each message must be an object.")
        # Claude Code sends its environment notes as a "system" message after the user turn.
        if message.get("role") not in ("user", "assistant", "system"):
            raise InvalidField(f"messages.{i}.role", "`role` must be \"user\" or \"assistant\".")
        content = message.get("content")
        if not isinstance(content, (str, list)):
            raise InvalidField(f"messages.{i}.content", "`content` must be a string or an array.")
        for j, block in enumerate(content if isinstance(content, list) else []):
            if not isinstance(block, dict) or not isinstance(block.get("type"), str):
                raise InvalidField(f"messages.{i}.content.{j}", "Each content block needs a `type`.")
    system = body.get("system")
    if system is not None and not isinstance(system, (str, list)):
        raise InvalidField("system", "`system` must be a string or an array of text blocks.")
    require_positive_int(body, "max_tokens", required=True)
    require_bool(body, "stream")


# --- requests ----------------------------------------------------------------------------

def read_request(body) -> hub.Request:
    body = load_json(body)
    validate_request(body)
    req = hub.Request(model=body.get("model") or "", format=FORMAT)
    req.system = _read_system(body.get("system"), req)
    for i, message in enumerate(body["messages"]):
        start = len(req.messages)
        req.messages += _read_message(message, f"messages.{i}", req)
        came_from(req.messages, start, f"messages.{i}")
    for i, tool in enumerate(body.get("tools") or []):
        if tool.get("type") not in (None, "custom"):
            req.drop(f"tools.{i}", f"built-in tool {tool.get('type')!r} has no equivalent")
            continue
        req.tools.append(hub.Tool(tool.get("name", ""), tool.get("description"), tool.get("input_schema")))
        if tool.get("cache_control"):
            req.drop("cache_control", "prompt caching marks are Anthropic's own")
    _read_tool_choice(body.get("tool_choice"), req)
    req.max_tokens = body.get("max_tokens")
    req.temperature = body.get("temperature")
    req.top_p = body.get("top_p")
    req.stop = list(body.get("stop_sequences") or [])
    req.stream = bool(body.get("stream"))
    metadata = body.get("metadata") or {}
    req.user = metadata.get("user_id")
    _read_thinking(body, req)
    output_config = body.get("output_config") or {}
    spec = output_config.get("format") or body.get("output_format")
    if spec and spec.get("type") == "json_schema":
        req.response_format = hub.ResponseFormat("json_schema", spec.get("schema"))
    req.extras = {k: v for k, v in body.items() if k not in KNOWN}
    return req


def _read_system(system, req: hub.Request) -> list[hub.Text]:
    if system is None:
        return []
    if isinstance(system, str):
        return [hub.Text(system)] if system else []
    texts = []
    for block in system:
        if block.get("cache_control"):
            req.drop("cache_control", "prompt caching marks are Anthropic's own")
        texts.append(hub.Text(block.get("text", "")))
    return texts


def _read_thinking(body: dict, req: hub.Request) -> None:
    thinking = body.get("thinking") or {}
    effort = (body.get("output_config") or {}).get("effort")
    if thinking.get("type") == "enabled":
        req.reasoning_budget = thinking.get("budget_tokens")
    elif thinking.get("type") == "disabled":
        req.reasoning_budget = 0
    elif thinking.get("type") == "adaptive":
        req.reasoning_effort = effort or "medium"
    if effort and req.reasoning_effort is None and thinking.get("type") != "disabled":
        req.reasoning_effort = effort


def _read_tool_choice(choice, req: hub.Request) -> None:
    if not choice:
        return
    kind = choice.get("type")
    mode = {"auto": "auto", "any": "required", "tool": "tool", "none": "none"}.get(kind)
    if mode is None:
        req.drop("tool_choice", f"tool_choice of type {kind!r} has no equivalent")
        return
    req.tool_choice = hub.ToolChoice(mode, choice.get("name") if mode == "tool" else None)
    if choice.get("disable_parallel_tool_use"):
        req.parallel_tool_calls = False


def _read_block(block: dict, where: str, req: hub.Request, model: str | None = None):
    kind = block.get("type")
    if block.get("cache_control"):
        req.drop("cache_control", "prompt caching marks are Anthropic's own")
    if kind == "text":
        return hub.Text(block.get("text", ""))
    if kind == "image":
        source = block.get("source") or {}
        if source.get("type") == "url":
            return hub.Image(url=source.get("url"))
        if source.get("type") == "base64":
            return hub.Image(data=source.get("data"), media_type=source.get("media_type"))
        raise InvalidField(f"{where}.source", f"Image source {source.get('type')!r} cannot be translated.")
    if kind == "document":
        return _read_document(block, where, req)
    if kind == "thinking":
        return sealed_thinking(block.get("thinking", ""), block.get("signature"), FORMAT, source_model=model)
    if kind == "redacted_thinking":
        data, origin, sealed_by, _ = unseal(block.get("data") or "", FORMAT)
        return hub.Thinking(redacted=data, source_model=sealed_by or model, origin=origin)
    if kind == "tool_use":
        return hub.ToolCall(block.get("id", ""), block.get("name", ""),
                            json.dumps(block.get("input") or {}, ensure_ascii=False))
    if kind == "tool_result":
        content = block.get("content")
        if isinstance(content, str):
            parts = [hub.Text(content)] if content else []
        else:
            parts = [_read_block(b, f"{where}.content.{k}", req) for k, b in enumerate(content or [])]
            if not all(isinstance(p, (hub.Text, hub.Image)) for p in parts):
                raise InvalidField(f"{where}.content", "Tool results may hold only text and images here.")
        return hub.ToolResult(block.get("tool_use_id", ""), parts, bool(block.get("is_error")))
    raise InvalidField(where, f"Content blocks of type {kind!r} cannot be translated to another format.")


def _read_document(block: dict, where: str, req: hub.Request) -> hub.File:
    source = block.get("source") or {}
    for name in ("citations", "context"):
        if block.get(name):
            req.drop(f"{where}.{name}", "document citations and context are Anthropic's own")
    if source.get("type") == "base64":
        return hub.File(data=source.get("data"), media_type=source.get("media_type"), name=block.get("title"))
    if source.get("type") == "url":
        return hub.File(url=source.get("url"), media_type="application/pdf", name=block.get("title"))
    if source.get("type") == "text":
        data = base64.b64encode(str(source.get("data", "")).encode()).decode()
        return hub.File(data=data, media_type=source.get("media_type") or "text/plain", name=block.get("title"))
    raise InvalidField(f"{where}.source", f"Document source {source.get('type')!r} cannot be translated.")


def _write_document(part: hub.File, where: str) -> dict:
    if part.url:
        source = {"type": "url", "url": part.url}
    elif (part.media_type or "").startswith("text/"):
        try:
            source = {"type": "text", "media_type": "text/plain", "data": base64.b64decode(part.data or "").decode()}
        except (binascii.Error, UnicodeDecodeError):
            raise InvalidField(where, "A text document whose bytes are not UTF-8 text.") from None
    elif part.media_type in (None, "application/pdf"):
        source = {"type": "base64", "media_type": "application/pdf", "data": part.data or ""}
    else:
        raise InvalidField(where, f"Anthropic takes PDF and text documents, not {part.media_type!r}.")
    block = {"type": "document", "source": source}
    if part.name:
        block["title"] = part.name
    return block


def _read_message(message: dict, where: str, req: hub.Request) -> list[hub.Message]:
    """An Anthropic user turn holds tool results and new input together; the hub keeps them
    as runs of TOOL and USER messages in their order."""
    content = message["content"]
    if isinstance(content, str):
        content = [{"type": "text", "text": content}]
    parts = [_read_block(block, f"{where}.content.{j}", req) for j, block in enumerate(content)]
    if message["role"] == "assistant":
        return [hub.Message(hub.Role.ASSISTANT, parts)]
    if message["role"] == "system":
        return [hub.Message(hub.Role.SYSTEM, parts)]
    return user_turn_runs(parts)


def write_request(req: hub.Request, model: str) -> dict:
    body: dict = {"model": model}
    # Anthropic has one system prompt: system and developer turns, wherever they were, join it
    system = list(req.system)
    for message in req.messages:
        if message.role in (hub.Role.SYSTEM, hub.Role.DEVELOPER):
            system += [p for p in message.parts if isinstance(p, hub.Text)]
    system = [t for t in system if t.text]
    if len(system) == 1:
        body["system"] = system[0].text
    elif system:
        body["system"] = [{"type": "text", "text": t.text} for t in system]
    body["messages"] = _write_messages(req, model)
    if req.tools:
        body["tools"] = [_write_tool(tool, req) for tool in req.tools]
    tool_choice = _write_tool_choice(req)
    if tool_choice:
        body["tool_choice"] = tool_choice
    body["max_tokens"] = req.max_tokens or DEFAULT_MAX_TOKENS
    if req.temperature is not None:
        body["temperature"] = req.temperature
    if req.top_p is not None:
        body["top_p"] = req.top_p
    if req.stop:
        body["stop_sequences"] = list(req.stop)
    if req.stream:
        body["stream"] = True
    if req.user is not None:
        body["metadata"] = {"user_id": req.user}
    if req.metadata:
        req.drop("metadata", "Anthropic metadata holds only user_id")
    _write_thinking(req, body)
    if req.response_format:
        if req.response_format.type == "json_schema" and req.response_format.schema is not None:
            body["output_config"] = {"format": {"type": "json_schema", "schema": req.response_format.schema}}
        else:
            req.drop("response_format", "Anthropic takes only a JSON schema as output format")
    for name, value in req.extras.items():
        if req.format == FORMAT:
            body.setdefault(name, value)
        else:
            req.drop(name, f"no equivalent in {FORMAT}")
    return body


def _write_thinking(req: hub.Request, body: dict) -> None:
    budget = req.reasoning_budget
    if budget is None and req.reasoning_effort is not None:
        budget = hub.budget_for_effort(req.reasoning_effort) or 0
    if budget is None:
        return
    if budget == 0:
        body["thinking"] = {"type": "disabled"}
        return
    if body.get("tool_choice", {}).get("type") in ("any", "tool"):
        req.drop("reasoning", "Anthropic cannot think while a tool use is forced")
        return
    if _unsigned_tool_turn(body["messages"]):
        req.drop("reasoning", "the tool-use turn being continued has no Anthropic thinking block, "
                              "which Anthropic requires while thinking")
        return
    budget = max(budget, MIN_THINKING_BUDGET)
    if req.max_tokens is None:
        body["max_tokens"] = budget + DEFAULT_MAX_TOKENS
    elif budget >= req.max_tokens:  # budget_tokens must stay below max_tokens
        budget = req.max_tokens - 1
        if budget < MIN_THINKING_BUDGET:
            req.drop("reasoning", f"max_tokens {req.max_tokens} leaves no room for a thinking budget")
            return
    body["thinking"] = {"type": "enabled", "budget_tokens": budget}
    # Extended thinking refuses a changed temperature and a top_p below 0.95
    if body.pop("temperature", 1) != 1:
        req.drop("temperature", "Anthropic does not accept temperature while thinking")
    if body.get("top_p") is not None and body["top_p"] < 0.95:
        del body["top_p"]
        req.drop("top_p", "Anthropic does not accept top_p below 0.95 while thinking")


def _unsigned_tool_turn(messages: list[dict]) -> bool:
    """Does the last assistant turn call tools without starting with a thinking block? (With
    thinking on, Anthropic wants the turn a tool loop continues to keep its signed thinking;
    history from another provider has none.)"""
    turns = [m for m in messages if m["role"] == "assistant"]
    if not turns or isinstance(turns[-1]["content"], str):
        return False
    blocks = turns[-1]["content"]
    calls = any(b["type"] == "tool_use" for b in blocks)
    return calls and blocks[0]["type"] not in ("thinking", "redacted_thinking")


def _write_messages(req: hub.Request, model: str) -> list[dict]:
    out: list[dict] = []
    previous_role = None
    for i, message in enumerate(req.messages):
        if message.role in (hub.Role.SYSTEM, hub.Role.DEVELOPER):
            continue
        role = "assistant" if message.role == hub.Role.ASSISTANT else "user"
        where = message.source or f"messages.{i}"
        blocks = [b for b in (_write_part(p, where, req, model) for p in message.parts) if b]
        if not blocks:
            req.drop(where, "a turn with nothing Anthropic can carry")
            continue
        # tool results share a user turn with the input around them (Anthropic wants them there)
        joins = out and out[-1]["role"] == role == "user" and hub.Role.TOOL in (message.role, previous_role)
        if joins:
            out[-1]["content"] += blocks
        else:
            out.append({"role": role, "content": blocks})
        previous_role = message.role
    for message in out:  # the plain string form for a lone text, as clients usually send
        content = message["content"]
        if len(content) == 1 and content[0]["type"] == "text":
            message["content"] = content[0]["text"]
    return out


def _write_image(image: hub.Image) -> dict:
    if image.url:
        return {"type": "image", "source": {"type": "url", "url": image.url}}
    return {"type": "image", "source": {"type": "base64", "media_type": image.media_type or "image/png",
                                        "data": image.data or ""}}


def _write_part(part, where: str, req: hub.Request, model: str) -> dict | None:
    if isinstance(part, hub.Text):
        return {"type": "text", "text": part.text} if part.text else None  # empty text is refused
    if isinstance(part, hub.Image):
        return _write_image(part)
    if isinstance(part, hub.File):
        return _write_document(part, where)
    if isinstance(part, hub.Thinking):
        if foreign(part, FORMAT):
            req.drop(f"{where}.thinking", f"reasoning sealed by a {part.origin} provider is only valid there")
            return None
        if part.source_model and part.source_model != model and (part.signature or part.redacted):
            req.drop(f"{where}.thinking", f"signed reasoning from {part.source_model} is not valid for {model}")
            return None
        if part.redacted:
            return {"type": "redacted_thinking", "data": part.redacted}
        if part.signature:
            return {"type": "thinking", "thinking": part.text, "signature": part.signature}
        req.drop(f"{where}.thinking", "Anthropic accepts only reasoning it signed")
        return None
    if isinstance(part, hub.ToolCall):
        arguments = {"input": part.arguments} if part.kind == "custom" else parse_arguments(part.arguments)
        return {"type": "tool_use", "id": part.id, "name": part.name, "input": arguments}
    if isinstance(part, hub.ToolResult):
        block = {"type": "tool_result", "tool_use_id": part.call_id}
        if len(part.parts) == 1 and isinstance(part.parts[0], hub.Text):
            block["content"] = part.parts[0].text
        elif part.parts:
            block["content"] = [_write_image(p) if isinstance(p, hub.Image) else {"type": "text", "text": p.text}
                                for p in part.parts if not isinstance(p, hub.Text) or p.text]
        if part.is_error:
            block["is_error"] = True
        return block
    return None


def _write_tool(tool: hub.Tool, req: hub.Request) -> dict:
    out = {"name": tool.name}
    if tool.description is not None:
        out["description"] = tool.description
    if tool.kind == "custom":
        out["input_schema"] = custom_as_function(tool, req, f"tools.{tool.name}")
        return out
    out["input_schema"] = object_schema(tool.parameters)
    if tool.strict:
        req.drop("tools.strict", "Anthropic tools take no strict flag")
    return out


def _write_tool_choice(req: hub.Request) -> dict | None:
    choice = req.tool_choice
    out = None
    if choice:
        out = {"type": {"auto": "auto", "required": "any", "tool": "tool", "none": "none"}.get(choice.mode, "auto")}
        if choice.mode == "tool":
            out["name"] = choice.name
    if req.parallel_tool_calls is False:
        out = out or {"type": "auto"}
        if out["type"] != "none":
            out["disable_parallel_tool_use"] = True
    return out


# --- answers ---------------------------------------------------------------------------

def read_usage(usage: dict | None) -> hub.Usage | None:
    """Anthropic input_tokens already EXCLUDE cache reads and writes, as the hub does."""
    if not usage:
        return None
    details = usage.get("output_tokens_details") or {}
    return hub.Usage(input_tokens=usage.get("input_tokens") or 0,
                     cached_read=usage.get("cache_read_input_tokens") or 0,
                     cache_write=usage.get("cache_creation_input_tokens") or 0,
                     output_tokens=usage.get("output_tokens") or 0,
                     reasoning_tokens=details.get("thinking_tokens") or 0)


def write_usage(usage: hub.Usage | None) -> dict:
    usage = usage or hub.Usage()
    out = {"input_tokens": usage.input_tokens, "cache_creation_input_tokens": usage.cache_write,
           "cache_read_input_tokens": usage.cached_read, "output_tokens": usage.output_tokens}
    if usage.reasoning_tokens:
        out["output_tokens_details"] = {"thinking_tokens": usage.reasoning_tokens}
    return out


def read_stop(reason: str | None) -> tuple[hub.StopReason, str | None]:
    if reason in STOP_READ:
        return STOP_READ[reason], reason if reason == "model_context_window_exceeded" else None
    return hub.StopReason.OTHER, reason


def write_stop(reason: hub.StopReason, raw: str | None) -> str:
    """Anthropic's own raw value when there is one; an unknown reason stays as it was."""
    if raw in STOP_READ:
        return raw
    return STOP_WRITE.get(reason) or raw or reason.value


def read_answer(body) -> hub.Answer:
    body = load_json(body)
    model = body.get("model") or ""
    req = hub.Request(model=model)  # collects nothing an answer needs; blocks are read leniently
    parts = []
    for j, block in enumerate(body.get("content") or []):
        try:
            parts.append(_read_block(block, f"content.{j}", req, model))
        except InvalidField:
            continue  # server tool blocks (web search results...) have no hub form
    stop, raw = read_stop(body.get("stop_reason"))
    return hub.Answer(id=body.get("id") or "", model=model, parts=parts, stop_reason=stop,
                      usage=read_usage(body.get("usage")), stop_raw=raw,
                      stop_sequence=body.get("stop_sequence"))


def _answer_block(part, model: str) -> dict | None:
    if isinstance(part, hub.Text):
        return {"type": "text", "text": part.text}
    if isinstance(part, hub.Thinking):
        if part.redacted:
            return {"type": "redacted_thinking", "data": seal(part.redacted, part.origin, FORMAT, None, part.source_model)}
        value = part.signature or part.encrypted_content
        if not part.text and not value:
            return None
        # unsigned reasoning (chat providers) is sealed empty with its origin: the field is required
        return {"type": "thinking", "thinking": part.text,
                "signature": seal(value or "", part.origin, FORMAT, part.id, part.source_model)}
    if isinstance(part, hub.ToolCall):
        return {"type": "tool_use", "id": part.id, "name": part.name, "input": parse_arguments(part.arguments)}
    return None


def write_answer(ans: hub.Answer, model: str) -> dict:
    content = [b for b in (_answer_block(p, model) for p in ans.parts) if b]
    return {"id": _message_id(ans.id), "type": "message", "role": "assistant", "model": model,
            "content": content, "stop_reason": write_stop(ans.stop_reason, ans.stop_raw),
            "stop_sequence": ans.stop_sequence, "usage": write_usage(ans.usage)}


def _message_id(answer_id: str) -> str:
    return answer_id if answer_id.startswith("msg_") else f"msg_{answer_id or uuid.uuid4().hex}"


# --- errors ------------------------------------------------------------------------------

def error_body(status: int, type: str, message: str, code=None, param=None) -> dict:
    """Anthropic's error shape; its types are fixed by status, so a foreign type is mapped."""
    if type not in ERROR_TYPES.values():
        type = ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    return {"type": "error", "error": {"type": type, "message": message}}


def error_event(status: int, type: str, message: str, code=None, param=None) -> bytes:
    return named_event("error", error_body(status, type, message, code, param))


def read_error(content: bytes) -> str:
    return error_message(content)


# --- streams -------------------------------------------------------------------------------

class StreamReader(EventReader):
    """Anthropic SSE events in, hub events out."""

    def __init__(self):
        self._splitter = EventSplitter()
        self.done = False
        self._next = 0
        self._blocks: dict[int, int] = {}  # Anthropic index -> hub index (server tool blocks skipped)
        self._usage: hub.Usage | None = None
        self._stop: tuple[hub.StopReason, str | None] | None = None
        self._stop_sequence = None

    def close(self) -> list:
        return []  # a stream without message_stop has not finished: no Finish is made up

    def read_event(self, event: dict) -> list:
        kind = event.get("type")
        if kind == "message_start":
            message = event.get("message") or {}
            self._usage = read_usage(message.get("usage"))
            return [hub.Start(message.get("id") or "", message.get("model") or "", self._usage)]
        if kind == "content_block_start":
            return self._start_block(event.get("index", 0), event.get("content_block") or {})
        if kind == "content_block_delta":
            index = self._blocks.get(event.get("index", 0))
            return [] if index is None else self._delta(index, event.get("delta") or {})
        if kind == "content_block_stop":
            index = self._blocks.get(event.get("index", 0))
            return [] if index is None else [hub.BlockStop(index)]
        if kind == "message_delta":
            delta = event.get("delta") or {}
            if delta.get("stop_reason"):
                self._stop = read_stop(delta["stop_reason"])
                self._stop_sequence = delta.get("stop_sequence")
            self._usage = hub.merge_usage(self._usage, read_usage(event.get("usage")))
            return []
        if kind == "message_stop":
            self.done = True
            stop, raw = self._stop or (hub.StopReason.OTHER, None)
            return [hub.Finish(stop, self._usage, raw, self._stop_sequence)]
        if kind == "error":
            self.done = True
            error = event.get("error") or {}
            return [hub.Error(error.get("type") or "api_error", error.get("message") or "")]
        return []  # ping, and event types added later

    def _start_block(self, index: int, block: dict) -> list:
        kind = block.get("type")
        fields = {}
        if kind == "text":
            hub_kind = hub.BlockKind.TEXT
        elif kind == "thinking":
            hub_kind = hub.BlockKind.THINKING
        elif kind == "redacted_thinking":
            hub_kind, fields = hub.BlockKind.REDACTED_THINKING, {"redacted": block.get("data")}
        elif kind == "tool_use":
            hub_kind = hub.BlockKind.TOOL_CALL
            fields = {"tool_id": block.get("id"), "tool_name": block.get("name")}
        else:
            return []  # server tool blocks have no hub form
        hub_index = self._blocks[index] = self._next
        self._next += 1
        events = [hub.BlockStart(hub_index, hub_kind, **fields)]
        if kind == "text" and block.get("text"):
            events.append(hub.TextDelta(hub_index, block["text"]))
        if kind == "thinking" and block.get("thinking"):
            events.append(hub.ThinkingDelta(hub_index, block["thinking"]))
        if kind == "tool_use" and block.get("input"):
            events.append(hub.ToolArgsDelta(hub_index, json.dumps(block["input"], ensure_ascii=False)))
        return events

    def _delta(self, index: int, delta: dict) -> list:
        kind = delta.get("type")
        value = delta.get({"text_delta": "text", "thinking_delta": "thinking", "signature_delta": "signature",
                           "input_json_delta": "partial_json"}.get(kind, ""))
        if not value:
            return []  # empty deltas (the first input_json_delta often is) carry nothing
        if kind == "text_delta":
            return [hub.TextDelta(index, delta.get("text", ""))]
        if kind == "thinking_delta":
            return [hub.ThinkingDelta(index, delta.get("thinking", ""))]
        if kind == "signature_delta":
            return [hub.SignatureDelta(index, delta.get("signature", ""), origin=FORMAT)]
        if kind == "input_json_delta":
            return [hub.ToolArgsDelta(index, delta.get("partial_json", ""))]
        return []  # citations_delta and later kinds


class StreamWriter:
    """Hub events in, Anthropic SSE out, in the order the SDKs require: message_start first,
    blocks numbered from 0 and opened one at a time, each stopped, then message_delta with
    stop_reason and usage, then message_stop."""

    def __init__(self, model: str):
        self.model = model
        self.started = False
        self.finished = False
        self._next = 0
        self._blocks: dict[int, int] = {}  # hub index -> Anthropic index
        self._kinds: dict[int, hub.BlockKind] = {}
        self._open: int | None = None  # the hub index of the open block
        self._input_usage: hub.Usage | None = None

    def write(self, event) -> bytes:
        kind = type(event)
        if kind is hub.TextDelta and self._open == event.index and self._kinds[event.index] is hub.BlockKind.TEXT:
            return _delta_event(self._blocks[event.index], _TEXT_DELTA, event.text)  # most events: text, in order
        if self.finished:
            return b""
        if kind is hub.Error:  # also before message_start: the SDKs raise on it
            self.finished = True
            return self._close_open() + error_event(500, event.type, event.message)
        out = b""
        if not self.started:
            out += self._start(event if kind is hub.Start else hub.Start("", ""))
            if kind is hub.Start:
                return out
        if kind is hub.BlockStart:
            out += self._open_block(event)
        elif kind is hub.TextDelta:
            out += self._delta(event.index, hub.BlockKind.TEXT, _TEXT_DELTA, event.text)
        elif kind is hub.ThinkingDelta:
            out += self._delta(event.index, hub.BlockKind.THINKING, _THINKING_DELTA, event.text)
        elif kind is hub.SignatureDelta:
            signature = seal(event.signature, event.origin, FORMAT, event.id, event.model)
            out += self._delta(event.index, hub.BlockKind.THINKING, _SIGNATURE_DELTA, signature)
        elif kind is hub.ToolArgsDelta:
            out += self._delta(event.index, hub.BlockKind.TOOL_CALL, _JSON_DELTA, event.json)
        elif kind is hub.BlockStop:
            if self._open == event.index:
                out += self._close_open()
        elif kind is hub.Finish:
            out += self._finish(event)
        return out

    def fail(self, message: str, type: str = "api_error") -> bytes:
        return self.write(hub.Error(type, message))

    def _start(self, event: hub.Start) -> bytes:
        self.started = True
        self._input_usage = event.usage
        usage = write_usage(event.usage)
        message = {"id": _message_id(event.id), "type": "message", "role": "assistant", "model": self.model,
                   "content": [], "stop_reason": None, "stop_sequence": None, "usage": usage}
        return named_event("message_start", {"type": "message_start", "message": message})

    def _open_block(self, event: hub.BlockStart) -> bytes:
        if event.index in self._blocks:
            return b""
        out = self._close_open()
        if event.kind == hub.BlockKind.TEXT:
            block = {"type": "text", "text": ""}
        elif event.kind == hub.BlockKind.THINKING:
            block = {"type": "thinking", "thinking": "", "signature": ""}
        elif event.kind == hub.BlockKind.REDACTED_THINKING:
            block = {"type": "redacted_thinking", "data": event.redacted or ""}
        else:
            block = {"type": "tool_use", "id": event.tool_id, "name": event.tool_name, "input": {}}
        index = self._blocks[event.index] = self._next
        self._next += 1
        self._kinds[event.index] = event.kind
        self._open = event.index
        return out + named_event("content_block_start",
                                 {"type": "content_block_start", "index": index, "content_block": block})

    def _delta(self, index: int, kind: hub.BlockKind, template: tuple[bytes, bytes], value: str) -> bytes:
        out = b""
        if index not in self._blocks:  # a delta with no BlockStart before it opens its block
            out += self._open_block(hub.BlockStart(index, kind))
        elif self._open != index or self._kinds[index] != kind:
            return b""  # a block already stopped cannot be reopened; a mismatched delta has no place
        return out + _delta_event(self._blocks[index], template, value)

    def _close_open(self) -> bytes:
        if self._open is None:
            return b""
        index = self._blocks[self._open]
        self._open = None
        return _BLOCK_STOP_EVENT % index

    def _finish(self, event: hub.Finish) -> bytes:
        self.finished = True
        usage = hub.merge_usage(self._input_usage, event.usage)
        delta = {"type": "message_delta",
                 "delta": {"stop_reason": write_stop(event.stop_reason, event.stop_raw),
                           "stop_sequence": event.stop_sequence},
                 "usage": write_usage(usage)}
        return (self._close_open() + named_event("message_delta", delta)
                + _MESSAGE_STOP_EVENT)


# content_block_delta events (and the fixed stop events), filled in rather than serialised: a
# stream is mostly these, and the bytes are what named_event would write (compact JSON,
# non-ASCII escaped).
_DELTA_EVENT = (b'event: content_block_delta\ndata: {"type":"content_block_delta","index":%d,'
                b'"delta":{"type":"%b","%b":%b}}\n\n')
_BLOCK_STOP_EVENT = b'event: content_block_stop\ndata: {"type":"content_block_stop","index":%d}\n\n'
_MESSAGE_STOP_EVENT = b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
_TEXT_DELTA = (b"text_delta", b"text")
_THINKING_DELTA = (b"thinking_delta", b"thinking")
_SIGNATURE_DELTA = (b"signature_delta", b"signature")
_JSON_DELTA = (b"input_json_delta", b"partial_json")


def _delta_event(index: int, template: tuple[bytes, bytes], value: str) -> bytes:
    return _DELTA_EVENT % (index, template[0], template[1], encode_basestring_ascii(value).encode())
