"""Google Gemini generateContent / streamGenerateContent?alt=sse to and from the hub form.

The model and streaming are named by the URL, not the body: `read_request` leaves `stream`
False and `write_request` puts no model in the body; the adapter builds the URL.
"""
import json
import uuid

from .. import hub
from ..sse import EventSplitter, data_event
from . import (
    EventReader, InvalidField, came_from, custom_as_function, error_message, load_json, parse_arguments,
    require_positive_int, user_turn_runs,
)
from .openai_chat import object_schema
from .seals import foreign, seal, sealed_thinking

FORMAT = "gemini"
SYNTHETIC_ID = "gemini_call_"  # ids made up for calls Gemini sent without one: never sent back
KNOWN = {"contents", "systemInstruction", "system_instruction", "tools", "toolConfig", "generationConfig", "model"}
GENERATION_KNOWN = {"maxOutputTokens", "temperature", "topP", "stopSequences", "responseMimeType",
                    "responseSchema", "responseJsonSchema", "thinkingConfig", "candidateCount"}
FILTERED = {"SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII", "IMAGE_SAFETY"}
STATUS = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
          409: "ABORTED", 429: "RESOURCE_EXHAUSTED", 499: "CANCELLED", 500: "INTERNAL", 501: "NOT_IMPLEMENTED",
          503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}


# --- validation ------------------------------------------------------------------------

def validate_request(body: dict) -> None:
    if not isinstance(body, dict):
        raise InvalidField("body", "The body must be a JSON object.")
    contents = body.get("contents")
    if not isinstance(contents, list) or not contents:
        raise InvalidField("contents", "`contents` must be a non-empty array.")
    for i, content in enumerate(contents):
        if not isinstance(content, dict):
            raise InvalidField(f"contents[{i}]", "Each content must be an object.")
        if content.get("role", "user") not in ("user", "model"):
            raise InvalidField(f"contents[{i}].role", "`role` must be \"user\" or \"model\".")
        parts = content.get("parts")
        if not isinstance(parts, list) or not all(isinstance(p, dict) for p in parts):
            raise InvalidField(f"contents[{i}].parts", "`parts` must be an array of objects.")
    config = body.get("generationConfig") or {}
    if not isinstance(config, dict):
        raise InvalidField("generationConfig", "`generationConfig` must be an object.")
    require_positive_int(config, "maxOutputTokens")
    if config.get("candidateCount") not in (None, 1):
        raise InvalidField("generationConfig.candidateCount", "Only one candidate can be translated.")


# --- requests ----------------------------------------------------------------------------

class _CallIds:
    """Gemini may send calls and responses without ids, matched by name and order: give each
    call an id and each response the id of the oldest unanswered call of that name."""

    def __init__(self):
        self.count = 0
        self.waiting: list[tuple[str, str]] = []  # (name, id)
        self.names: dict[str, str] = {}  # id -> name

    def call(self, part: dict) -> str:
        call_id = part.get("id")
        if not call_id:
            call_id = f"{SYNTHETIC_ID}{self.count}"
            self.count += 1
        self.waiting.append((part.get("name", ""), call_id))
        self.names[call_id] = part.get("name", "")
        return call_id

    def response(self, part: dict) -> str:
        name = part.get("name", "")
        if part.get("id"):
            self.waiting = [w for w in self.waiting if w[1] != part["id"]]
            return part["id"]
        for position, (waiting_name, call_id) in enumerate(self.waiting):
            if waiting_name == name:
                del self.waiting[position]
                return call_id
        return self.call({"name": name})


def read_request(body) -> hub.Request:
    body = load_json(body)
    validate_request(body)
    if body.get("cachedContent"):
        raise InvalidField("cachedContent", "`cachedContent` refers to state kept by Google; it cannot be sent elsewhere.")
    req = hub.Request(model=body.get("model") or "", format=FORMAT)
    system = body.get("systemInstruction") or body.get("system_instruction") or {}
    req.system = [hub.Text(p.get("text", "")) for p in system.get("parts") or [] if "text" in p]
    ids = _CallIds()
    for i, content in enumerate(body["contents"]):
        start = len(req.messages)
        req.messages += _read_content(content, f"contents[{i}]", ids)
        came_from(req.messages, start, f"contents[{i}]")
    for i, tool in enumerate(body.get("tools") or []):
        declarations = tool.get("functionDeclarations") or tool.get("function_declarations")
        if declarations is None:
            req.drop(f"tools[{i}]", f"built-in tool {', '.join(tool)} has no equivalent")
            continue
        for declaration in declarations:
            schema = declaration.get("parametersJsonSchema") or _json_schema(declaration.get("parameters"))
            req.tools.append(hub.Tool(declaration.get("name", ""), declaration.get("description"), schema))
    config = (body.get("toolConfig") or {}).get("functionCallingConfig") or {}
    mode, allowed = config.get("mode"), config.get("allowedFunctionNames") or []
    if mode == "ANY" and len(allowed) == 1:
        req.tool_choice = hub.ToolChoice("tool", allowed[0])
    elif mode == "ANY" and allowed:
        req.drop("toolConfig.functionCallingConfig.allowedFunctionNames", "only one forced function can be carried")
        req.tool_choice = hub.ToolChoice("required")
    elif mode in ("AUTO", "ANY", "NONE"):
        req.tool_choice = hub.ToolChoice({"AUTO": "auto", "ANY": "required", "NONE": "none"}[mode])
    _read_generation(body.get("generationConfig") or {}, req)
    req.extras.update({k: v for k, v in body.items() if k not in KNOWN})
    return req


def _json_schema(schema):
    """JSON Schema from Gemini's OpenAPI-style schema, whose types are upper case ("OBJECT")."""
    if isinstance(schema, list):
        return [_json_schema(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _json_schema(v) for k, v in schema.items()}
    if isinstance(out.get("type"), str):
        out["type"] = out["type"].lower()
    return out


def _read_generation(config: dict, req: hub.Request) -> None:
    req.max_tokens = config.get("maxOutputTokens")
    req.temperature = config.get("temperature")
    req.top_p = config.get("topP")
    req.stop = list(config.get("stopSequences") or [])
    if config.get("responseMimeType") == "application/json":
        schema = config.get("responseJsonSchema") or _json_schema(config.get("responseSchema"))
        req.response_format = hub.ResponseFormat("json_schema", schema) if schema else hub.ResponseFormat("json_object")
    thinking = config.get("thinkingConfig") or {}
    budget = thinking.get("thinkingBudget")
    if budget == -1:  # dynamic: the model decides
        req.reasoning_effort = "medium"
    elif budget is not None:
        req.reasoning_budget = budget
    elif thinking.get("thinkingLevel"):
        req.reasoning_effort = thinking["thinkingLevel"].lower()
    rest = {k: v for k, v in config.items() if k not in GENERATION_KNOWN}
    if rest:
        req.extras["generationConfig"] = rest


def _read_parts(parts: list, where: str, ids: _CallIds, model: str | None = None) -> list:
    """Hub parts of Gemini parts. A thoughtSignature on a part that is not a thought becomes a
    signature-only Thinking just before it, so every format can carry it."""
    out = []
    for j, part in enumerate(parts):
        signature = part.get("thoughtSignature")
        if part.get("thought"):
            last = out[-1] if out else None
            if signature and not part.get("text") and isinstance(last, hub.Thinking) and last.text and not (
                    last.signature or last.encrypted_content):
                # the seal streamed after a thought's text (see StreamWriter) belongs to that thought
                sealed = sealed_thinking(last.text, signature, FORMAT, source_model=model)
                out[-1] = sealed
                continue
            out.append(sealed_thinking(part.get("text", ""), signature, FORMAT, source_model=model))
            continue
        if signature:
            out.append(sealed_thinking("", signature, FORMAT, source_model=model))
        if "text" in part:
            if part["text"] or not signature:
                out.append(hub.Text(part["text"]))
        elif "inlineData" in part or "fileData" in part:
            out.append(_read_data(part, f"{where}.parts[{j}]"))
        elif "functionCall" in part:
            call = part["functionCall"]
            out.append(hub.ToolCall(ids.call(call), call.get("name", ""),
                                    json.dumps(call.get("args") or {}, ensure_ascii=False)))
        elif "functionResponse" in part:
            response = part["functionResponse"]
            value = response.get("response") or {}
            is_error = set(value) == {"error"}
            text = value.get("error" if is_error else "result")
            if not isinstance(text, str) or len(value) != 1:
                text = json.dumps(value, ensure_ascii=False)
            out.append(hub.ToolResult(ids.response(response), [hub.Text(text)], is_error, response.get("name")))
        elif not signature:
            raise InvalidField(f"{where}.parts[{j}]", f"Parts with {', '.join(part)} cannot be translated.")
    return out


def _read_data(part: dict, where: str):
    """An image or a document (PDF, text) given inline or by URI."""
    inline = "inlineData" in part
    data = part["inlineData" if inline else "fileData"]
    media_type = str(data.get("mimeType") or "")
    kind = hub.Image if media_type.startswith("image/") else hub.File
    if kind is hub.File and not (media_type == "application/pdf" or media_type.startswith("text/")):
        raise InvalidField(where, f"Data of type {media_type!r} cannot be translated.")
    if inline:
        return kind(data=data.get("data"), media_type=media_type or None)
    return kind(url=data.get("fileUri"), media_type=media_type or None)


def _read_content(content: dict, where: str, ids: _CallIds) -> list[hub.Message]:
    parts = _read_parts(content.get("parts") or [], where, ids)
    if content.get("role") == "model":
        return [hub.Message(hub.Role.ASSISTANT, parts)]
    return user_turn_runs(parts)


def write_request(req: hub.Request, model: str) -> dict:
    body: dict = {}
    system = list(req.system) + [p for m in req.messages if m.role in (hub.Role.SYSTEM, hub.Role.DEVELOPER)
                                 for p in m.parts if isinstance(p, hub.Text)]
    system = [t for t in system if t.text]
    if system:
        body["systemInstruction"] = {"parts": [{"text": t.text} for t in system]}
    body["contents"] = _write_contents(req, model)
    if req.tools:
        body["tools"] = [{"functionDeclarations": [_write_tool(t, req) for t in req.tools]}]
        if any(t.strict for t in req.tools):
            req.drop("tools.strict", "Gemini function declarations take no strict flag")
    choice = req.tool_choice
    if choice:
        config = {"mode": {"auto": "AUTO", "required": "ANY", "tool": "ANY", "none": "NONE"}.get(choice.mode, "AUTO")}
        if choice.mode == "tool":
            config["allowedFunctionNames"] = [choice.name]
        body["toolConfig"] = {"functionCallingConfig": config}
    if req.parallel_tool_calls is not None:
        req.drop("parallel_tool_calls", "Gemini has no switch for parallel calls")
    for name in ("user", "metadata"):
        if getattr(req, name) is not None:
            req.drop(name, "Gemini takes no end-user id or metadata")
    config = _write_generation(req)
    extras = dict(req.extras)
    if req.format == FORMAT:
        config.update(extras.pop("generationConfig", {}))
        for name, value in extras.items():
            body.setdefault(name, value)
    else:
        for name in extras:
            req.drop(name, f"no equivalent in {FORMAT}")
    if config:
        body["generationConfig"] = config
    return body


def _write_generation(req: hub.Request) -> dict:
    config = {}
    if req.max_tokens is not None:
        config["maxOutputTokens"] = req.max_tokens
    if req.temperature is not None:
        config["temperature"] = req.temperature
    if req.top_p is not None:
        config["topP"] = req.top_p
    if req.stop:
        config["stopSequences"] = list(req.stop)
    if req.response_format:
        config["responseMimeType"] = "application/json"
        if req.response_format.schema is not None:
            config["responseJsonSchema"] = req.response_format.schema
    budget = req.reasoning_budget
    if budget is None and req.reasoning_effort is not None:
        budget = hub.budget_for_effort(req.reasoning_effort) or 0
    if budget == 0 and req.format != FORMAT:
        # Some Gemini models (2.5 Pro) cannot stop thinking and refuse a zero budget
        req.drop("reasoning", "turning reasoning off is left to the Gemini model's default")
    elif budget is not None:
        # includeThoughts: clients of every format expect to see the reasoning they asked for
        config["thinkingConfig"] = {"thinkingBudget": budget, "includeThoughts": True} if budget else {"thinkingBudget": 0}
    return config


def _write_image(image: hub.Image | hub.File) -> dict:
    default = "application/pdf" if isinstance(image, hub.File) else "image/png"
    if image.url:
        guess = default if isinstance(image, hub.File) else _guess_type(image.url)
        return {"fileData": {"mimeType": image.media_type or guess, "fileUri": image.url}}
    return {"inlineData": {"mimeType": image.media_type or default, "data": image.data or ""}}


def _guess_type(url: str) -> str:
    ending = url.rsplit(".", 1)[-1].lower().split("?")[0]
    return {"png": "image/png", "gif": "image/gif", "webp": "image/webp"}.get(ending, "image/jpeg")


def _write_parts(parts: list, where: str, req: hub.Request | None, model: str, names: dict) -> list[dict]:
    """Gemini parts; a signature-only Thinking rides on the part after it."""
    out: list[dict] = []
    pending = None  # a signature waiting for the next part
    for part in parts:
        if isinstance(part, hub.Thinking):
            if req is not None and foreign(part, FORMAT):
                req.drop(f"{where}.thought", f"reasoning sealed by a {part.origin} provider is only valid there")
                continue
            value = part.signature or part.encrypted_content
            if req is None and value:  # an answer for a client: another provider's seal goes out sealed
                part = hub.Thinking(text=part.text, signature=seal(value, part.origin, FORMAT, part.id, part.source_model))
            if req is not None and part.source_model and part.source_model != model and part.signature:
                req.drop(f"{where}.thought", f"signed reasoning from {part.source_model} is not valid for {model}")
                continue  # (answers keep it: their `model` is the name the client asked for)
            if part.text:
                thought = {"text": part.text, "thought": True}
                if part.signature:
                    thought["thoughtSignature"] = part.signature
                out.append(thought)
            elif part.signature:
                pending = part.signature
            elif part.redacted and req is not None:
                req.drop(f"{where}.thought", "Anthropic's redacted reasoning has no Gemini form")
            continue
        if isinstance(part, hub.Text):
            item = {"text": part.text}
        elif isinstance(part, (hub.Image, hub.File)):
            item = _write_image(part)
        elif isinstance(part, hub.ToolCall):
            names[part.id] = part.name
            arguments = {"input": part.arguments} if part.kind == "custom" else parse_arguments(part.arguments)
            call = {"name": part.name, "args": arguments}
            if not part.id.startswith(SYNTHETIC_ID):
                call["id"] = part.id
            item = {"functionCall": call}
        elif isinstance(part, hub.ToolResult):
            text = "".join(p.text for p in part.parts if isinstance(p, hub.Text))
            response = {"name": part.name or names.get(part.call_id, ""),
                        "response": {"error" if part.is_error else "result": text}}
            if not part.call_id.startswith(SYNTHETIC_ID):
                response["id"] = part.call_id
            out.append({"functionResponse": response})
            # images a tool returned follow its response, where the model still sees them
            out += [_write_image(p) for p in part.parts if isinstance(p, hub.Image)]
            continue
        else:
            continue
        if pending:
            item["thoughtSignature"], pending = pending, None
        out.append(item)
    if pending:  # nothing followed it: an empty part carries it, so the order is kept
        out.append({"text": "", "thoughtSignature": pending})
    return out


def _write_contents(req: hub.Request, model: str) -> list[dict]:
    out: list[dict] = []
    names: dict[str, str] = {}  # call id -> function name: Gemini answers calls by name
    previous_role = None
    for i, message in enumerate(req.messages):
        if message.role in (hub.Role.SYSTEM, hub.Role.DEVELOPER):
            continue
        role = "model" if message.role == hub.Role.ASSISTANT else "user"
        where = message.source or f"contents[{i}]"
        parts = _write_parts(message.parts, where, req, model, names)
        if not parts:
            req.drop(where, "a turn with nothing Gemini can carry")
            continue
        if out and out[-1]["role"] == role == "user" and hub.Role.TOOL in (message.role, previous_role):
            out[-1]["parts"] += parts  # function responses share the user turn around them
        else:
            out.append({"role": role, "parts": parts})
        previous_role = message.role
    return out


def _write_tool(tool: hub.Tool, req: hub.Request) -> dict:
    out = {"name": tool.name}
    if tool.description is not None:
        out["description"] = tool.description
    if tool.kind == "custom":
        out["parametersJsonSchema"] = custom_as_function(tool, req, f"tools.{tool.name}")
        return out
    # parametersJsonSchema takes full JSON Schema; the older `parameters` refuses much of it
    out["parametersJsonSchema"] = object_schema(tool.parameters)
    return out


# --- answers ---------------------------------------------------------------------------

def read_usage(usage: dict | None) -> hub.Usage | None:
    """promptTokenCount INCLUDES cachedContentTokenCount; candidatesTokenCount EXCLUDES
    thoughtsTokenCount. The hub counts cached apart and thoughts inside output."""
    if not usage:
        return None
    cached = usage.get("cachedContentTokenCount") or 0
    thoughts = usage.get("thoughtsTokenCount") or 0
    prompt = (usage.get("promptTokenCount") or 0) + (usage.get("toolUsePromptTokenCount") or 0)
    return hub.Usage(input_tokens=max(prompt - cached, 0), cached_read=cached,
                     output_tokens=(usage.get("candidatesTokenCount") or 0) + thoughts, reasoning_tokens=thoughts)


def write_usage(usage: hub.Usage) -> dict:
    out = {"promptTokenCount": usage.prompt_tokens,
           "candidatesTokenCount": usage.output_tokens - usage.reasoning_tokens,
           "totalTokenCount": usage.prompt_tokens + usage.output_tokens}
    if usage.cached_read:
        out["cachedContentTokenCount"] = usage.cached_read
    if usage.reasoning_tokens:
        out["thoughtsTokenCount"] = usage.reasoning_tokens
    return out


def read_finish(reason: str | None, has_calls: bool) -> tuple[hub.StopReason, str | None]:
    if reason == "STOP":
        return (hub.StopReason.TOOL_USE if has_calls else hub.StopReason.END), None
    if reason == "MAX_TOKENS":
        return hub.StopReason.MAX_TOKENS, None
    if reason in FILTERED:
        return hub.StopReason.CONTENT_FILTER, reason
    return hub.StopReason.OTHER, reason


def write_finish(reason: hub.StopReason, raw: str | None) -> str:
    if reason in (hub.StopReason.END, hub.StopReason.TOOL_USE, hub.StopReason.STOP_SEQUENCE):
        return "STOP"
    if reason == hub.StopReason.MAX_TOKENS:
        return "MAX_TOKENS"
    if reason in (hub.StopReason.CONTENT_FILTER, hub.StopReason.REFUSAL):
        return raw if raw in FILTERED else "SAFETY"
    return raw or "OTHER"  # never passed off as STOP


def read_answer(body) -> hub.Answer:
    body = load_json(body)
    model = body.get("modelVersion") or ""
    candidate = (body.get("candidates") or [{}])[0]
    parts = _read_parts((candidate.get("content") or {}).get("parts") or [], "candidates[0]", _CallIds(), model)
    has_calls = any(isinstance(p, hub.ToolCall) for p in parts)
    blocked = (body.get("promptFeedback") or {}).get("blockReason")
    if blocked and not body.get("candidates"):
        stop, raw = hub.StopReason.CONTENT_FILTER, blocked
    else:
        stop, raw = read_finish(candidate.get("finishReason"), has_calls)
    return hub.Answer(id=body.get("responseId") or "", model=model, parts=parts, stop_reason=stop,
                      usage=read_usage(body.get("usageMetadata")), stop_raw=raw)


def write_answer(ans: hub.Answer, model: str) -> dict:
    parts = _write_parts(ans.parts, "candidates[0]", None, model, {})
    body = {"candidates": [{"content": {"role": "model", "parts": parts},
                            "finishReason": write_finish(ans.stop_reason, ans.stop_raw), "index": 0}]}
    if ans.usage:
        body["usageMetadata"] = write_usage(ans.usage)
    body["modelVersion"] = model
    body["responseId"] = ans.id or uuid.uuid4().hex
    return body


# --- errors ------------------------------------------------------------------------------

def error_body(status: int, type: str, message: str, code=None, param=None) -> dict:
    """Google's error shape: the HTTP status as code, and its canonical status name."""
    return {"error": {"code": status, "message": message,
                      "status": STATUS.get(status, "INTERNAL" if status >= 500 else "INVALID_ARGUMENT")}}


def error_event(status: int, type: str, message: str, code=None, param=None) -> bytes:
    return data_event(error_body(status, type, message, code, param))


def read_error(content: bytes) -> str:
    return error_message(content)


# --- streams -------------------------------------------------------------------------------

class StreamReader(EventReader):
    """streamGenerateContent?alt=sse chunks in, hub events out. Each chunk holds whole parts;
    text and thoughts continue a block across chunks, each function call is a block of its own."""

    def __init__(self):
        self._splitter = EventSplitter()
        self.started = False
        self.done = False
        self._next = 0
        self._open: tuple[hub.BlockKind, int] | None = None
        self._calls = _CallIds()
        self._has_calls = False
        self._usage: hub.Usage | None = None
        self._model = ""

    def close(self) -> list:
        return []  # Gemini says it finished with a finishReason; without one it has not

    def _close_open(self) -> list:
        if self._open is None:
            return []
        index = self._open[1]
        self._open = None
        return [hub.BlockStop(index)]

    def _begin(self, kind: hub.BlockKind, **fields) -> list:
        events = self._close_open()
        index = self._next
        self._next += 1
        self._open = (kind, index)
        return events + [hub.BlockStart(index, kind, **fields)]

    def read_event(self, chunk: dict) -> list:
        if "error" in chunk:
            self.done = True
            error = chunk["error"] or {}
            return self._close_open() + [hub.Error(error.get("status") or "INTERNAL", error.get("message") or "")]
        events = []
        if not self.started:
            self.started = True
            self._model = chunk.get("modelVersion") or ""
            events.append(hub.Start(chunk.get("responseId") or "", self._model))
        if chunk.get("usageMetadata"):
            self._usage = read_usage(chunk["usageMetadata"])
        candidate = (chunk.get("candidates") or [{}])[0]
        for part in (candidate.get("content") or {}).get("parts") or []:
            events += self._read_part(part)
        blocked = (chunk.get("promptFeedback") or {}).get("blockReason")
        if candidate.get("finishReason") or blocked:
            self.done = True
            if blocked and not chunk.get("candidates"):
                stop, raw = hub.StopReason.CONTENT_FILTER, blocked
            else:
                stop, raw = read_finish(candidate["finishReason"], self._has_calls)
            events += self._close_open() + [hub.Finish(stop, self._usage, raw)]
        return events

    def _read_part(self, part: dict) -> list:
        events = []
        signature = part.get("thoughtSignature")
        if part.get("thought"):
            if not self._open or self._open[0] != hub.BlockKind.THINKING:
                events += self._begin(hub.BlockKind.THINKING)
            if part.get("text"):
                events.append(hub.ThinkingDelta(self._open[1], part["text"]))
            if signature:
                events.append(hub.SignatureDelta(self._open[1], signature, origin=FORMAT))
            return events
        if signature:  # a signature-only thinking block before the part it came on
            events += self._begin(hub.BlockKind.THINKING)
            events += [hub.SignatureDelta(self._open[1], signature, origin=FORMAT)] + self._close_open()
        if part.get("text"):
            if not self._open or self._open[0] != hub.BlockKind.TEXT:
                events += self._begin(hub.BlockKind.TEXT)
            events.append(hub.TextDelta(self._open[1], part["text"]))
        elif "functionCall" in part:
            call = part["functionCall"]
            self._has_calls = True
            events += self._begin(hub.BlockKind.TOOL_CALL, tool_id=self._calls.call(call), tool_name=call.get("name", ""))
            events.append(hub.ToolArgsDelta(self._open[1], json.dumps(call.get("args") or {}, ensure_ascii=False)))
            events += self._close_open()
        return events


class StreamWriter:
    """Hub events in, Gemini SSE chunks out: text and thoughts as they come, each function
    call whole when its arguments are complete, and a last chunk with finishReason and usage."""

    def __init__(self, model: str):
        self.model = model
        self.id = None
        self.finished = False
        self._kinds: dict[int, hub.BlockKind] = {}
        self._calls: dict[int, dict] = {}  # hub index -> {"id", "name", "args"} of a call in progress
        self._texts: dict[int, bool] = {}  # hub index of a thinking block -> has it shown text yet
        self._pending: str | None = None  # a signature for the next part

    def write(self, event) -> bytes:
        if self.finished:
            return b""
        if isinstance(event, hub.Error):
            self.finished = True
            return error_event(500, event.type, event.message)
        if self.id is None:
            self.id = (event.id if isinstance(event, hub.Start) else "") or uuid.uuid4().hex
        if isinstance(event, hub.BlockStart):
            self._kinds[event.index] = event.kind
            if event.kind == hub.BlockKind.TOOL_CALL:
                self._calls[event.index] = {"id": event.tool_id, "name": event.tool_name, "args": ""}
            return b""
        if isinstance(event, hub.TextDelta):
            return self._chunk({"text": event.text}) if event.text else b""
        if isinstance(event, hub.ThinkingDelta):
            if not event.text:
                return b""
            self._texts[event.index] = True
            return self._chunk({"text": event.text, "thought": True})
        if isinstance(event, hub.SignatureDelta):
            signature = seal(event.signature, event.origin, FORMAT, event.id, event.model)
            if self._texts.get(event.index):
                return self._chunk({"text": "", "thought": True, "thoughtSignature": signature})
            self._pending = signature
            return b""
        if isinstance(event, hub.ToolArgsDelta):
            if event.index in self._calls:
                self._calls[event.index]["args"] += event.json
            return b""
        if isinstance(event, hub.BlockStop):
            call = self._calls.pop(event.index, None)
            if call is None:
                return b""
            function = {"name": call["name"], "args": parse_arguments(call["args"])}
            if call["id"] and not call["id"].startswith(SYNTHETIC_ID):
                function["id"] = call["id"]
            return self._chunk({"functionCall": function})
        if isinstance(event, hub.Finish):
            self.finished = True
            last = {"text": ""}
            return self._chunk(last, finish=write_finish(event.stop_reason, event.stop_raw), usage=event.usage)
        return b""

    def fail(self, message: str, type: str = "INTERNAL") -> bytes:
        return self.write(hub.Error(type, message))

    def _chunk(self, part: dict, finish: str | None = None, usage: hub.Usage | None = None) -> bytes:
        if self._pending:
            part["thoughtSignature"], self._pending = self._pending, None
        candidate = {"content": {"role": "model", "parts": [part]}, "index": 0}
        if finish:
            candidate["finishReason"] = finish
        chunk = {"candidates": [candidate]}
        if usage:
            chunk["usageMetadata"] = write_usage(usage)
        chunk["modelVersion"] = self.model
        chunk["responseId"] = self.id
        return b"data: " + json.dumps(chunk, ensure_ascii=False, separators=(",", ":")).encode() + b"\r\n\r\n"
