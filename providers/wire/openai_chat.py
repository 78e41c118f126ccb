"""OpenAI Chat Completions (/v1/chat/completions) to and from the hub form."""
import json
import time
import uuid

from .. import hub
from ..adapters.base import Usage, as_int
from ..sse import EventSplitter, data_event, event_data, split_events
from . import (
    EventReader, InvalidField, came_from, dumps, error_message, load_json, require_bool, require_model,
    require_positive_int,
)

FORMAT = "openai_chat"
ROLES = {"system", "developer", "user", "assistant", "tool"}

FINISH_READ = {
    "stop": hub.StopReason.END,
    "length": hub.StopReason.MAX_TOKENS,
    "tool_calls": hub.StopReason.TOOL_USE,
    "function_call": hub.StopReason.TOOL_USE,
    "content_filter": hub.StopReason.CONTENT_FILTER,
}
FINISH_WRITE = {
    hub.StopReason.END: "stop",
    hub.StopReason.STOP_SEQUENCE: "stop",
    hub.StopReason.MAX_TOKENS: "length",
    hub.StopReason.TOOL_USE: "tool_calls",
    hub.StopReason.CONTENT_FILTER: "content_filter",
    hub.StopReason.REFUSAL: "content_filter",
}
# Fields read into the hub by name; anything else is an extra.
KNOWN = {
    "model", "messages", "tools", "tool_choice", "max_tokens", "max_completion_tokens",
    "temperature", "top_p", "stop", "stream", "stream_options", "response_format",
    "reasoning_effort", "parallel_tool_calls", "user", "metadata", "n", "functions",
    "function_call",
}


# --- validation ------------------------------------------------------------------------

def validate_request(body: dict) -> None:
    """Check the fields the gateway reads; raise InvalidField naming the first bad one."""
    if not isinstance(body, dict):
        raise InvalidField("body", "The body must be a JSON object.")
    require_model(body)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidField("messages", "`messages` must be a non-empty array.")
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise InvalidField(f"messages[{i}]", "Each message must be an object.")
        if message.get("role") not in ROLES:
            raise InvalidField(f"messages[{i}].role",
                               f"`role` must be one of {', '.join(sorted(ROLES))}.")
        content = message.get("content")
        if content is not None and not isinstance(content, (str, list)):
            raise InvalidField(f"messages[{i}].content", "`content` must be a string or an array.")
        if message["role"] == "tool" and not isinstance(message.get("tool_call_id"), str):
            raise InvalidField(f"messages[{i}].tool_call_id", "A tool message needs `tool_call_id`.")
    require_positive_int(body, "max_tokens")
    require_positive_int(body, "max_completion_tokens")
    require_bool(body, "stream")


# --- requests ----------------------------------------------------------------------------

def read_request(body) -> hub.Request:
    body = load_json(body)
    validate_request(body)
    if body.get("n") not in (None, 1):
        raise InvalidField("n", "Only n=1 can be translated to another provider's format.")
    if body.get("functions") or body.get("function_call"):
        raise InvalidField("functions", "Legacy `functions` are not supported; use `tools`.")
    req = hub.Request(model=body.get("model") or "", format=FORMAT)
    for i, message in enumerate(body["messages"]):
        req.messages.append(_read_message(message, f"messages[{i}]", req))
        came_from(req.messages, i, f"messages[{i}]")
    for i, tool in enumerate(body.get("tools") or []):
        req.tools.append(_read_tool(tool, f"tools[{i}]"))
    req.tool_choice = _read_tool_choice(body.get("tool_choice"), req)
    req.max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
    req.temperature = body.get("temperature")
    req.top_p = body.get("top_p")
    stop = body.get("stop")
    req.stop = [stop] if isinstance(stop, str) else list(stop or [])
    req.stream = bool(body.get("stream"))
    req.response_format = _read_response_format(body.get("response_format"))
    req.reasoning_effort = body.get("reasoning_effort")
    req.parallel_tool_calls = body.get("parallel_tool_calls")
    req.user = body.get("user")
    req.metadata = body.get("metadata")
    req.extras = {k: v for k, v in body.items() if k not in KNOWN}
    return req


def _read_content(content, where: str, req: hub.Request) -> list:
    if content is None:
        return []
    if isinstance(content, str):
        return [hub.Text(content)]
    parts = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            parts.append(hub.Text(part.get("text", "")))
        elif kind == "image_url":
            spec = part.get("image_url")
            spec = {"url": spec} if isinstance(spec, str) else (spec or {})
            image = hub.parse_data_url(spec.get("url", ""))
            image.detail = spec.get("detail")
            parts.append(image)
        elif kind == "refusal":
            parts.append(hub.Text(part.get("refusal", "")))
        elif kind == "file" and (part.get("file") or {}).get("file_data"):
            spec = part["file"]
            parts.append(hub.parse_file_url(spec["file_data"], spec.get("filename")))
        else:
            raise InvalidField(f"{where}.content[{j}]",
                               f"Content of type {kind!r} cannot be translated to another format.")
    return parts


def _read_message(message: dict, where: str, req: hub.Request) -> hub.Message:
    role = hub.Role(message["role"])
    if message.get("name"):
        req.drop(f"{where}.name", "participant names have no equivalent")
    if role == hub.Role.TOOL:
        result = hub.ToolResult(message["tool_call_id"], _read_content(message.get("content"), where, req))
        return hub.Message(role, [result])
    parts = []
    if role == hub.Role.ASSISTANT:
        # DeepSeek, Kimi and GLM stream reasoning as `reasoning_content`; vLLM/OpenRouter as `reasoning`
        reasoning = message.get("reasoning_content") or message.get("reasoning")
        if isinstance(reasoning, str) and reasoning:
            parts.append(hub.Thinking(text=reasoning))
        if message.get("refusal"):
            parts.append(hub.Text(message["refusal"]))
    parts += _read_content(message.get("content"), where, req)
    for call in (message.get("tool_calls") or []) if role == hub.Role.ASSISTANT else []:
        if call.get("type") == "custom":
            custom = call.get("custom") or {}
            parts.append(hub.ToolCall(call.get("id", ""), custom.get("name", ""), custom.get("input", ""), "custom"))
        else:
            function = call.get("function") or {}
            parts.append(hub.ToolCall(call.get("id", ""), function.get("name", ""), function.get("arguments") or "{}"))
    return hub.Message(role, parts)


def _read_tool(tool: dict, where: str) -> hub.Tool:
    if tool.get("type") == "custom":
        custom = tool.get("custom") or {}
        return hub.Tool(custom.get("name", ""), custom.get("description"), custom.get("format"), "custom")
    if tool.get("type") != "function":
        raise InvalidField(where, f"Tools of type {tool.get('type')!r} cannot be translated.")
    function = tool.get("function") or {}
    if not function.get("name"):
        raise InvalidField(f"{where}.function.name", "A tool needs a name.")
    return hub.Tool(function["name"], function.get("description"), function.get("parameters"),
                    strict=function.get("strict"))


def _read_tool_choice(choice, req: hub.Request) -> hub.ToolChoice | None:
    if choice is None:
        return None
    if isinstance(choice, str):
        return hub.ToolChoice(choice)
    if choice.get("type") == "function":
        return hub.ToolChoice("tool", (choice.get("function") or {}).get("name"))
    if choice.get("type") == "custom":
        return hub.ToolChoice("tool", (choice.get("custom") or {}).get("name"))
    req.drop("tool_choice", f"tool_choice of type {choice.get('type')!r} has no equivalent")
    return None


def _read_response_format(spec) -> hub.ResponseFormat | None:
    if not spec or spec.get("type") == "text":
        return None
    if spec.get("type") == "json_schema":
        schema = spec.get("json_schema") or {}
        return hub.ResponseFormat("json_schema", schema.get("schema"), schema.get("name"), schema.get("strict"))
    return hub.ResponseFormat(spec.get("type", "json_object"))


def write_request(req: hub.Request, model: str) -> dict:
    body = {"model": model, "messages": []}
    messages = body["messages"]
    if req.system:
        messages.append({"role": "system", "content": _content_value(req.system)})
    for i, message in enumerate(req.messages):
        messages.extend(_write_message(message, message.source or f"messages[{i}]", req))
    if req.tools:
        body["tools"] = [_write_tool(tool) for tool in req.tools]
    if req.tool_choice:
        body["tool_choice"] = _write_tool_choice(req.tool_choice, req)
    if req.max_tokens is not None:
        body["max_completion_tokens"] = req.max_tokens
    for name in ("temperature", "top_p"):
        if getattr(req, name) is not None:
            body[name] = getattr(req, name)
    if req.stop:
        body["stop"] = list(req.stop)
    if req.stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}  # else no usage arrives on streams
    if req.response_format:
        body["response_format"] = _write_response_format(req.response_format)
    effort = req.reasoning_effort
    if effort is None and req.reasoning_budget:  # reasoning turned off: say nothing, as models
        effort = hub.effort_for_budget(req.reasoning_budget)  # that cannot reason refuse the field
    if effort is not None:
        body["reasoning_effort"] = effort
    if req.parallel_tool_calls is not None:
        body["parallel_tool_calls"] = req.parallel_tool_calls
    if req.user is not None:
        body["user"] = req.user
    if req.metadata is not None:
        body["metadata"] = req.metadata
    _write_extras(req, body)
    return body


def without_reasoning_history(body: dict) -> dict:
    """The chat body without `reasoning_content` on past assistant turns. Providers differ:
    Kimi and DeepSeek's thinking mode want it back in tool loops, OpenAI and older DeepSeek
    reasoners refuse it. An adapter whose provider refuses it applies this."""
    messages = [{k: v for k, v in m.items() if k != "reasoning_content"} for m in body.get("messages") or []]
    return {**body, "messages": messages}


def _write_extras(req: hub.Request, body: dict) -> None:
    for name, value in req.extras.items():
        if req.format == FORMAT:
            body.setdefault(name, value)
        else:
            req.drop(name, f"no equivalent in {FORMAT}")


def _content_value(parts: list):
    """A plain string for text only, the list form otherwise (what clients send most)."""
    if len(parts) == 1 and isinstance(parts[0], hub.Text):
        return parts[0].text
    return [_write_part(part) for part in parts]


def _write_part(part) -> dict:
    if isinstance(part, hub.Text):
        return {"type": "text", "text": part.text}
    if isinstance(part, hub.File):
        if part.url:  # chat takes documents only inline
            raise InvalidField("messages", "A document given by URL cannot be sent in the chat format.")
        return {"type": "file", "file": {"filename": part.name or "document", "file_data": hub.file_data_url(part)}}
    spec = {"url": hub.image_url(part)}
    if part.detail:
        spec["detail"] = part.detail
    return {"type": "image_url", "image_url": spec}


def _write_message(message: hub.Message, where: str, req: hub.Request) -> list[dict]:
    role = message.role.value
    if message.role == hub.Role.TOOL or any(isinstance(p, hub.ToolResult) for p in message.parts):
        return _write_tool_results(message, where, req)
    if message.role != hub.Role.ASSISTANT:
        parts = [p for p in message.parts if isinstance(p, (hub.Text, hub.Image, hub.File))]
        if len(parts) < len(message.parts):
            req.drop(f"{where}.content", "only text and images can be sent in a non-assistant turn")
        if message.role in (hub.Role.SYSTEM, hub.Role.DEVELOPER):
            parts = [p for p in parts if isinstance(p, hub.Text)]
        return [{"role": role, "content": _content_value(parts) if parts else ""}]
    out = {"role": "assistant"}
    texts = [p for p in message.parts if isinstance(p, hub.Text)]
    thoughts = [p for p in message.parts if isinstance(p, hub.Thinking)]
    calls = [p for p in message.parts if isinstance(p, hub.ToolCall)]
    out["content"] = "".join(p.text for p in texts) if texts else None
    if any(t.text for t in thoughts):
        out["reasoning_content"] = "".join(t.text for t in thoughts)
    if any(t.signature or t.redacted or t.encrypted_content for t in thoughts):
        req.drop(f"{where}.reasoning", "signed or encrypted reasoning has no equivalent")
    if calls:
        out["tool_calls"] = [_write_tool_call(call) for call in calls]
    return [out]


def _write_tool_call(call: hub.ToolCall) -> dict:
    if call.kind == "custom":
        return {"id": call.id, "type": "custom", "custom": {"name": call.name, "input": call.arguments}}
    return {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}


def _write_tool_results(message: hub.Message, where: str, req: hub.Request) -> list[dict]:
    """One tool message per result; images (which chat tool messages cannot hold) follow in a
    user message so the model still sees them."""
    out, images, rest = [], [], []
    for part in message.parts:
        if not isinstance(part, hub.ToolResult):
            rest.append(part)
            continue
        texts = [p for p in part.parts if isinstance(p, hub.Text)]
        images += [p for p in part.parts if isinstance(p, hub.Image)]
        if part.is_error:
            req.drop(f"{where}.is_error", "chat tool messages carry no error flag")
        content = texts[0].text if len(texts) == 1 else [_write_part(t) for t in texts] if texts else ""
        out.append({"role": "tool", "tool_call_id": part.call_id, "content": content})
    if images:
        req.drop(f"{where}.content", "images in tool results are sent in a following user message")
    if images or rest:
        user = [p for p in rest + images if isinstance(p, (hub.Text, hub.Image))]
        if user:
            out.append({"role": "user", "content": _content_value(user)})
    return out


def _write_tool(tool: hub.Tool) -> dict:
    if tool.kind == "custom":
        custom = {"name": tool.name}
        if tool.description is not None:
            custom["description"] = tool.description
        if tool.parameters is not None:
            custom["format"] = tool.parameters
        return {"type": "custom", "custom": custom}
    function = {"name": tool.name}
    if tool.description is not None:
        function["description"] = tool.description
    function["parameters"] = object_schema(tool.parameters)
    if tool.strict is not None:
        function["strict"] = tool.strict
    return {"type": "function", "function": function}


def object_schema(schema: dict | None) -> dict:
    """A parameters schema providers accept: MCP servers may send one without `properties`."""
    schema = dict(schema or {"type": "object"})
    if schema.get("type", "object") == "object" and "properties" not in schema:
        schema["properties"] = {}
    return schema


def _write_tool_choice(choice: hub.ToolChoice, req: hub.Request):
    if choice.mode == "tool":
        kinds = {t.name: t.kind for t in req.tools}
        if kinds.get(choice.name) == "custom":
            return {"type": "custom", "custom": {"name": choice.name}}
        return {"type": "function", "function": {"name": choice.name}}
    return choice.mode


def _write_response_format(spec: hub.ResponseFormat) -> dict:
    if spec.type != "json_schema":
        return {"type": spec.type}
    schema = {"name": spec.name or "response", "schema": spec.schema or {}}
    if spec.strict is not None:
        schema["strict"] = spec.strict
    return {"type": "json_schema", "json_schema": schema}


# --- answers ---------------------------------------------------------------------------

def read_usage(usage: dict | None) -> hub.Usage | None:
    """OpenAI prompt_tokens INCLUDE cached tokens: the hub counts them apart."""
    if not usage:
        return None
    prompt = usage.get("prompt_tokens") or 0
    # DeepSeek reports cache hits as prompt_cache_hit_tokens
    cached = ((usage.get("prompt_tokens_details") or {}).get("cached_tokens")
              or usage.get("prompt_cache_hit_tokens") or 0)
    reasoning = (usage.get("completion_tokens_details") or {}).get("reasoning_tokens") or 0
    return hub.Usage(input_tokens=max(prompt - cached, 0), cached_read=cached,
                     output_tokens=usage.get("completion_tokens") or 0, reasoning_tokens=reasoning)


def write_usage(usage: hub.Usage) -> dict:
    prompt = usage.prompt_tokens
    out = {"prompt_tokens": prompt, "completion_tokens": usage.output_tokens,
           "total_tokens": prompt + usage.output_tokens}
    if usage.cached_read:
        out["prompt_tokens_details"] = {"cached_tokens": usage.cached_read}
    if usage.reasoning_tokens:
        out["completion_tokens_details"] = {"reasoning_tokens": usage.reasoning_tokens}
    return out


def read_finish(reason: str | None) -> tuple[hub.StopReason, str | None]:
    if reason in FINISH_READ:
        return FINISH_READ[reason], None
    return hub.StopReason.OTHER, reason


def write_finish(reason: hub.StopReason, raw: str | None) -> str:
    """Reasons chat has no word for are written as they are, never as a normal "stop"."""
    return FINISH_WRITE.get(reason) or raw or reason.value


def read_answer(body) -> hub.Answer:
    body = load_json(body)
    model = body.get("model") or ""
    choices = body.get("choices") or [{}]
    message = choices[0].get("message") or {}
    parts = []
    reasoning = message.get("reasoning_content") or message.get("reasoning")
    if isinstance(reasoning, str) and reasoning:
        parts.append(hub.Thinking(text=reasoning, source_model=model))
    if isinstance(message.get("content"), str) and message["content"]:
        parts.append(hub.Text(message["content"]))
    stop, raw = read_finish(choices[0].get("finish_reason"))
    if message.get("refusal"):
        parts.append(hub.Text(message["refusal"]))
        stop, raw = hub.StopReason.REFUSAL, None
    for call in message.get("tool_calls") or []:
        if call.get("type") == "custom":
            custom = call.get("custom") or {}
            parts.append(hub.ToolCall(call.get("id", ""), custom.get("name", ""), custom.get("input", ""), "custom"))
        else:
            function = call.get("function") or {}
            parts.append(hub.ToolCall(call.get("id", ""), function.get("name", ""), function.get("arguments") or "{}"))
    return hub.Answer(id=body.get("id") or "", model=model, parts=parts, stop_reason=stop,
                      usage=read_usage(body.get("usage")), stop_raw=raw)


def write_answer(ans: hub.Answer, model: str, created: int | None = None) -> dict:
    message = {"role": "assistant", "content": None}
    texts = [p.text for p in ans.parts if isinstance(p, hub.Text)]
    if texts:
        message["content"] = "".join(texts)
    thoughts = [p.text for p in ans.parts if isinstance(p, hub.Thinking) and p.text]
    if thoughts:
        message["reasoning_content"] = "".join(thoughts)
    calls = [_write_tool_call(p) for p in ans.parts if isinstance(p, hub.ToolCall)]
    if calls:
        message["tool_calls"] = calls
    body = {
        "id": _chat_id(ans.id), "object": "chat.completion",
        "created": int(time.time()) if created is None else created, "model": model,
        "choices": [{"index": 0, "message": message, "logprobs": None,
                     "finish_reason": write_finish(ans.stop_reason, ans.stop_raw)}],
    }
    if ans.usage:
        body["usage"] = write_usage(ans.usage)
    return body


def _chat_id(answer_id: str) -> str:
    return answer_id if answer_id.startswith("chatcmpl") else f"chatcmpl-{answer_id or uuid.uuid4().hex}"


# --- errors ------------------------------------------------------------------------------

def error_body(status: int, type: str, message: str, code=None, param=None) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def error_event(status: int, type: str, message: str, code=None, param=None) -> bytes:
    """A mid-stream error: the OpenAI SDKs raise on a chunk carrying `error`."""
    return data_event(error_body(status, type, message, code, param)) + b"data: [DONE]\n\n"


def read_error(content: bytes) -> str:
    return error_message(content)


# --- streams -------------------------------------------------------------------------------

class StreamReader(EventReader):
    """Chat completion chunks (SSE bytes) in, hub events out. Blocks are numbered in the
    order they open; one block is open at a time, except that tool calls keep their own
    index so interleaved argument deltas still reach the right call."""

    def __init__(self):
        self._splitter = EventSplitter()
        self.started = False
        self.done = False
        self._next = 0
        self._open: tuple[str, int] | None = None  # ("text"|"thinking"|"tool:<i>", hub index)
        self._tools: dict[int, int] = {}  # chat tool index -> hub block index
        self._finish: tuple[hub.StopReason, str | None] | None = None
        self._usage: hub.Usage | None = None

    def on_done(self) -> list:
        return self._end()

    def close(self) -> list:
        """Events owed at the end: blocks still open, and Finish if a finish reason came."""
        return [] if self.done else self._end()

    def _end(self) -> list:
        events = self._close_open()
        self.done = True
        if self._finish:
            stop, raw = self._finish
            events.append(hub.Finish(stop, self._usage, raw))
        return events

    def _close_open(self) -> list:
        if self._open is None:
            return []
        index = self._open[1]
        self._open = None
        return [hub.BlockStop(index)]

    def _begin(self, key: str, kind: hub.BlockKind, **fields) -> list:
        events = self._close_open()
        index = self._next
        self._next += 1
        self._open = (key, index)
        return events + [hub.BlockStart(index, kind, **fields)]

    def read_event(self, chunk: dict) -> list:
        if "error" in chunk and not chunk.get("choices"):
            error = chunk["error"] if isinstance(chunk["error"], dict) else {"message": str(chunk["error"])}
            self.done = True
            return self._close_open() + [hub.Error(error.get("type") or "upstream_error", error.get("message") or "")]
        events = []
        if not self.started:
            self.started = True
            events.append(hub.Start(chunk.get("id") or "", chunk.get("model") or ""))
        if chunk.get("usage"):
            self._usage = read_usage(chunk["usage"])
        for choice in chunk.get("choices") or []:
            if choice.get("index", 0) != 0:
                continue  # n > 1 is refused on the way in
            events += self._read_delta(choice.get("delta") or {})
            if choice.get("finish_reason"):
                self._finish = read_finish(choice["finish_reason"])
        return events

    def _read_delta(self, delta: dict) -> list:
        if len(delta) == 1 and self._open is not None and self._open[0] == "text":  # most chunks: more text
            content = delta.get("content")
            if content and content.__class__ is str:
                return [hub.TextDelta(self._open[1], content)]
        events = []
        reasoning = delta.get("reasoning_content") or delta.get("reasoning")
        if isinstance(reasoning, str) and reasoning:
            if not self._open or self._open[0] != "thinking":
                events += self._begin("thinking", hub.BlockKind.THINKING)
            events.append(hub.ThinkingDelta(self._open[1], reasoning))
        content = delta.get("content") or delta.get("refusal")
        if isinstance(content, str) and content:
            if not self._open or self._open[0] != "text":
                events += self._begin("text", hub.BlockKind.TEXT)
            events.append(hub.TextDelta(self._open[1], content))
        for position, call in enumerate(delta.get("tool_calls") or []):
            tool_index = call.get("index", position)
            function = call.get("function") or call.get("custom") or {}
            if tool_index not in self._tools:
                events += self._begin(f"tool:{tool_index}", hub.BlockKind.TOOL_CALL,
                                      tool_id=call.get("id") or f"call_{tool_index}",
                                      tool_name=function.get("name") or "", custom="custom" in call)
                self._tools[tool_index] = self._open[1]
            arguments = function.get("arguments") or function.get("input")
            if arguments:
                events.append(hub.ToolArgsDelta(self._tools[tool_index], arguments))
        return events


class StreamWriter:
    """Hub events in, chat completion chunks out: role in the first chunk, one chunk per
    delta, finish_reason with usage, then `data: [DONE]`."""

    def __init__(self, model: str, created: int | None = None):
        self.model = model
        self.created = int(time.time()) if created is None else created
        self.id = None
        self.finished = False
        self._kinds: dict[int, hub.BlockKind] = {}
        self._tools: dict[int, int] = {}  # hub block index -> chat tool index
        self._custom: set[int] = set()  # hub block indices of custom tool calls

    def write(self, event) -> bytes:
        if self.finished:
            return b""
        if isinstance(event, hub.Error):  # the SDKs raise on a chunk that carries `error`
            self.finished = True
            return error_event(500, event.type, event.message)
        out = b""
        if self.id is None:
            out += self._start(event.id if isinstance(event, hub.Start) else "")
            if isinstance(event, hub.Start):
                return out
        if isinstance(event, hub.BlockStart):
            self._kinds[event.index] = event.kind
            if event.kind == hub.BlockKind.TOOL_CALL:
                k = self._tools[event.index] = len(self._tools)
                if event.custom:
                    self._custom.add(event.index)
                    call = {"index": k, "id": event.tool_id, "type": "custom",
                            "custom": {"name": event.tool_name, "input": ""}}
                else:
                    call = {"index": k, "id": event.tool_id, "type": "function",
                            "function": {"name": event.tool_name, "arguments": ""}}
                out += self._chunk({"tool_calls": [call]})
        elif isinstance(event, hub.TextDelta):
            out += self._chunk({"content": event.text})
        elif isinstance(event, hub.ThinkingDelta):
            out += self._chunk({"reasoning_content": event.text})
        elif isinstance(event, hub.ToolArgsDelta):
            k = self._tools.get(event.index)
            if k is not None and event.index in self._custom:
                out += self._chunk({"tool_calls": [{"index": k, "custom": {"input": event.json}}]})
            elif k is not None:
                out += self._chunk({"tool_calls": [{"index": k, "function": {"arguments": event.json}}]})
        elif isinstance(event, hub.Finish):
            out += self._finish(event)
        return out  # Start again, BlockStop and signatures have no chat form

    def fail(self, message: str, type: str = "upstream_error") -> bytes:
        return self.write(hub.Error(type, message))

    def _start(self, upstream_id: str) -> bytes:
        self.id = _chat_id(upstream_id)
        return self._chunk({"role": "assistant", "content": ""})

    def _chunk(self, delta: dict, finish_reason=None, usage=None) -> bytes:
        chunk = {"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                 "model": self.model,
                 "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]}
        if usage is not None:
            chunk["usage"] = usage
        return b"data: " + dumps(chunk).encode() + b"\n\n"

    def _finish(self, event: hub.Finish) -> bytes:
        self.finished = True
        usage = write_usage(event.usage) if event.usage else None
        return self._chunk({}, write_finish(event.stop_reason, event.stop_raw), usage) + b"data: [DONE]\n\n"


# --- usage and text, read by the log writer -------------------------------------------------

def usage_from_dict(usage) -> Usage | None:
    if not isinstance(usage, dict):
        return None
    details = usage.get("prompt_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, dict) else 0
    return Usage(
        input_tokens=as_int(usage.get("prompt_tokens")),
        output_tokens=as_int(usage.get("completion_tokens")),
        cached_tokens=as_int(cached),
    )


def usage_from_answer(content: bytes) -> Usage | None:
    """Usage reported in a non-streamed answer, if any."""
    try:
        usage = json.loads(content).get("usage")
    except (ValueError, AttributeError):
        return None
    return usage_from_dict(usage)


def text_from_answer(content: bytes) -> str:
    """The generated text of a non-streamed answer, for a token estimate."""
    try:
        choices = json.loads(content).get("choices") or []
    except (ValueError, AttributeError):
        return ""
    parts = []
    for choice in choices if isinstance(choices, list) else []:
        message = choice.get("message") if isinstance(choice, dict) else None
        text = message.get("content") if isinstance(message, dict) else choice.get("text")
        if isinstance(text, str):
            parts.append(text)
    return "".join(parts)


def usage_from_events(blocks: list[bytes]) -> Usage | None:
    """The usage a stream reported (its last usage event), if any."""
    for event in reversed(split_events(b"".join(blocks))):
        data = event_data(event)
        if data and (b'"usage":{' in data or b'"usage": {' in data):
            usage = usage_from_answer(data)
            if usage is not None:
                return usage
    return None


def text_from_events(blocks: list[bytes]) -> str:
    """The generated text of a stream, from its content events, for a token estimate."""
    parts = []
    for event in split_events(b"".join(blocks)):
        data = event_data(event)
        try:
            chunk = json.loads(data) if data else None
        except ValueError:
            continue
        choices = chunk.get("choices") if isinstance(chunk, dict) else None
        for choice in choices if isinstance(choices, list) else ():
            if not isinstance(choice, dict):
                continue
            delta = choice.get("delta")
            piece = delta.get("content") if isinstance(delta, dict) else choice.get("text")
            if isinstance(piece, str):
                parts.append(piece)
    return "".join(parts)


# --- the same-format stream relay ----------------------------------------------------------

# Events worth a look: usage (not the `"usage":null` of every chunk), errors, the end.
_MARKERS = (b'"usage":{', b'"usage": {', b'"error"', b"[DONE]")


def _no_choices(data: bytes) -> bool:
    return b'"choices":[]' in data or b'"choices": []' in data or b'"choices"' not in data


class StreamRelay:
    """Passes an OpenAI stream through as it arrives, reading only what accounting needs.

    Pure: fed the upstream's bytes, returns the client's bytes. Content events go out
    untouched and unparsed: decoding every token costs several times more than relaying it.
    A block is searched (in C) for the markers of the few events that matter: usage, an
    error, the end. Everything before the first marker goes out as it came; only the events
    from there on are looked at one by one, and only errors are decoded.

    - Comments (`: PROCESSING`) before the first data event are dropped: until a real event
      arrives the attempt can still fail over, so nothing may reach the client yet.
    - The provider key is scrubbed from anything relayed, should an upstream echo it.
    - Of the usage events only the last is kept (some upstreams send usage on every chunk).
    """

    __slots__ = ("client_wants_usage", "error", "done", "started", "_content", "_usage", "_splitter",
                 "_secret", "_mask")

    def __init__(self, client_wants_usage: bool, secret: str | None = None):
        self.client_wants_usage = client_wants_usage
        self.error: str | None = None
        self.done = False
        self.started = False  # a data event has been relayed
        self._content: list[bytes] = []
        self._usage: bytes | None = None  # the last event that carried usage
        self._splitter = EventSplitter()
        self._secret = secret.encode() if secret else None
        self._mask = b"***"

    def feed(self, chunk: bytes) -> bytes:
        """The bytes to send the client for a chunk read from the upstream (events that
        arrived together go out together; an event cut in two waits for its end)."""
        block = self._splitter.feed_block(chunk)
        if not block:
            return b""
        if self._secret is not None and self._secret in block:
            block = block.replace(self._secret, self._mask)
        if not self.started:
            if block[:1] == b":":  # rare: only then look at the events one by one
                block = self._drop_leading_comments(block)
            if not block:
                return b""
            self.started = True
        first = min((i for i in map(block.find, _MARKERS) if i >= 0), default=-1)
        if first < 0:
            self._content.append(block)
            return block
        previous_end = block.rfind(b"\n\n", 0, first)
        start = previous_end + 2 if previous_end >= 0 else 0  # where the marked event begins
        head = block[:start]
        if head:
            self._content.append(head)
        return head + b"".join(out for event in split_events(block[start:]) if (out := self.relay(event)))

    @staticmethod
    def _drop_leading_comments(block: bytes) -> bytes:
        events = split_events(block)
        for i, event in enumerate(events):
            if event_data(event) is not None:
                return b"".join(events[i:])
        return b""

    def relay(self, event: bytes) -> bytes | None:
        """The bytes to send the client for one upstream event (None: send nothing)."""
        data = event_data(event)
        if data is None:
            return event
        if data == b"[DONE]":
            self.done = True
            return event
        if b'"error"' in data:
            return self._inspect_error(event, data)
        if b'"usage":{' not in data and b'"usage": {' not in data:
            self._content.append(event)
            return event
        self._usage = event  # the log writer reads the usage from it
        if not self.client_wants_usage and _no_choices(data):
            return None  # the usage-only chunk the gateway asked for on its own account
        return event

    def _inspect_error(self, event: bytes, data: bytes) -> bytes:
        try:
            chunk = json.loads(data)
        except ValueError:
            chunk = None
        error = chunk.get("error") if isinstance(chunk, dict) else None
        if error:  # `"error": null` on an ordinary chunk is no error
            self.error = str(error.get("message") if isinstance(error, dict) else error)
        else:  # not ours to judge: relayed like any other event
            self._content.append(event)
        return event

    usage = None  # not decoded here: the log writer reads it from events_to_log

    def close(self) -> bytes:
        return b""

    def fail(self, err) -> bytes:
        return error_event(err.status, err.type, err.message, err.code, err.param)

    def events_to_log(self, with_text: bool) -> list[bytes]:
        """The events the log writer needs (raw SSE) for `usage_from_events` and
        `text_from_events`: the usage event, and the content only when there is no usage
        (for an estimate) or the text is to be logged. Holding every stream's content
        until it is handed over would cost memory in proportion to traffic."""
        usage = [self._usage] if self._usage is not None else []
        if usage and not with_text:
            return usage
        return self._content + usage

    @property
    def finished(self) -> bool:
        return self.done or self.error is not None
