"""Wire-format codecs: one module per format, each reading and writing the hub form.

Every codec module offers the same names, all pure (no I/O):

    validate_request(body)              raise InvalidField for a bad field the gateway reads
    read_request(body) -> hub.Request   write_request(req, model) -> dict
    read_answer(body) -> hub.Answer     write_answer(ans, model) -> dict
    StreamReader().feed(bytes) -> [hub events], .close() -> [hub events]
    StreamWriter(model).write(event) -> bytes, .fail(message) -> bytes
    error_body(status, type, message, code=None, param=None) -> dict
    error_event(status, type, message, code=None, param=None) -> bytes
    read_error(content) -> str

`codec(name)` returns the module for a format name; `translate.py` joins two of them.

Adding a format: a module here with those names; its name in FORMATS; a strategy of what
it carries in tests/test_hub_roundtrip.py; a sample request, answer and stream in
tests/test_wire_translate_pairs.py (every pair is then tested); its own playbook tests.
"""
import importlib
import json

from ..sse import block_data

# The C scanner behind json.loads, called directly: a stream event is decoded without
# json.loads' encoding detection and wrappers (a translated stream decodes every event).
_scan_json = json.JSONDecoder().scan_once

FORMATS = ("openai_chat", "anthropic_messages", "openai_responses", "gemini")


class InvalidField(ValueError):
    """A request field the gateway cannot accept (or cannot translate without changing its
    meaning). `param` names the field the way the client's format spells it."""

    def __init__(self, param: str, message: str):
        super().__init__(message)
        self.param = param
        self.message = message


def codec(name: str):
    """The codec module of a wire format."""
    if name not in FORMATS:
        raise ValueError(f"unknown wire format {name!r}")
    return importlib.import_module(f"{__name__}.{name}")


def load_json(content: bytes | str | dict):
    """A body as parsed JSON (dicts pass through); InvalidField when it is not JSON."""
    if isinstance(content, dict):
        return content
    try:
        return json.loads(content)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidField("body", f"The body is not valid JSON: {exc}") from None


def dumps(payload) -> str:
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False)


def parse_arguments(arguments: str):
    """Tool-call arguments as an object (formats that carry objects need one); a text that
    is not a JSON object is kept under "input" rather than lost."""
    if not arguments:
        return {}
    try:
        value = json.loads(arguments)
    except ValueError:
        return {"input": arguments}
    return value if isinstance(value, dict) else {"input": value}


def error_message(content: bytes | str) -> str:
    """The human message of an upstream error body in any of the formats, else its text."""
    text = content.decode("utf-8", "replace") if isinstance(content, bytes) else content
    try:
        body = json.loads(text)
    except ValueError:
        return text.strip()[:2000]
    if isinstance(body, list) and body:  # Gemini non-SSE streams wrap errors in an array
        body = body[0]
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return error["message"]
        if isinstance(error, str):
            return error
        if isinstance(body.get("message"), str):
            return body["message"]
    return text.strip()[:2000]


def custom_as_function(tool, req, where: str) -> dict:
    """A JSON schema for a custom (free-form) tool, for formats without them: one string
    `input` holding the whole text (calls are unwrapped again on the way back)."""
    req.drop(where, f"custom tool {tool.name!r} is sent as a function taking one string `input`")
    return {"type": "object", "properties": {"input": {"type": "string", "description": "The whole input, as free text."}},
            "required": ["input"]}


def unwrap_custom_input(arguments: str) -> str:
    """The free text of a custom tool call that went through a function's `input` argument."""
    try:
        value = json.loads(arguments)
    except ValueError:
        return arguments
    if isinstance(value, dict) and isinstance(value.get("input"), str):
        return value["input"]
    return arguments


def read_safely(read, payload) -> list:
    """The hub events of one upstream event; one whose shape is not what its format promises
    ends the stream with an Error instead of breaking the relay."""
    if not isinstance(payload, dict):
        return [_hub().Error("invalid_response", "The upstream sent an event that is not a JSON object.")]
    try:
        return read(payload)
    except (AttributeError, TypeError, KeyError, ValueError):
        return [_hub().Error("invalid_response", "The upstream sent an event the gateway cannot read.")]


def came_from(messages: list, start: int, where: str) -> None:
    """Note `where` (a client's path) as the source of the hub turns read from it, from
    index `start` on (a turn that merely grew keeps the source it began with)."""
    for message in messages[start:]:
        if message.source is None:
            message.source = where


def user_turn_runs(parts: list) -> list:
    """A user turn of a format that puts tool results and new input together (Anthropic,
    Gemini), as the hub keeps it: runs of TOOL and USER messages, in their order."""
    hub = _hub()
    runs: list = []
    for part in parts:
        role = hub.Role.TOOL if isinstance(part, hub.ToolResult) else hub.Role.USER
        if runs and runs[-1].role == role:
            runs[-1].parts.append(part)
        else:
            runs.append(hub.Message(role, [part]))
    return runs or [hub.Message(hub.Role.USER, [])]


class EventReader:
    """What every format's StreamReader does with arriving bytes: cut them into whole SSE
    events, decode each event's JSON, and read it into hub events with `read_event`; an
    event that is not JSON, or not of its format's shape, becomes an Error. `[DONE]` (chat's
    end marker) goes to `on_done`. Subclasses set `_splitter` (an sse.EventSplitter) and
    `done`, and define `read_event`."""

    def feed(self, data: bytes) -> list:
        block = self._splitter.feed_block(data)
        if not block:
            return []
        events = []
        for payload in block_data(block):
            if payload is None or self.done:
                continue
            try:
                event = decode_event(payload)
            except ValueError:
                if payload.strip() == b"[DONE]":
                    events += self.on_done()
                    continue
                events.append(_hub().Error("invalid_response", "The upstream sent an event that is not JSON."))
                continue
            if event.__class__ is not dict:
                events += read_safely(self.read_event, event)  # the error for a non-object
                continue
            try:  # read_safely, inlined: this runs for every event of a translated stream
                events += self.read_event(event)
            except (AttributeError, TypeError, KeyError, ValueError):
                events.append(_hub().Error("invalid_response", "The upstream sent an event the gateway cannot read."))
        return events

    def on_done(self) -> list:
        return []


def decode_event(payload: bytes):
    """An event's JSON data, exactly as json.loads reads it (ValueError when it is not JSON)."""
    try:
        text = payload.decode()
        value, end = _scan_json(text, 0)
    except (StopIteration, ValueError):  # ValueError covers UnicodeDecodeError
        return json.loads(payload)  # leading whitespace, a BOM, UTF-16, or not JSON: json.loads decides
    if end != len(text) and text[end:].strip(" \t\n\r"):
        raise ValueError("Extra data after the event's JSON")
    return value


def _hub():
    from .. import hub  # the hub imports nothing from here; the late import keeps it that way
    return hub


def require_positive_int(body: dict, name: str, *, required: bool = False) -> None:
    value = body.get(name)
    if value is None:
        if required:
            raise InvalidField(name, f"`{name}` is required.")
        return
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise InvalidField(name, f"`{name}` must be a positive integer.")


def require_bool(body: dict, name: str) -> None:
    if name in body and body[name] is not None and not isinstance(body[name], bool):
        raise InvalidField(name, f"`{name}` must be a boolean.")


def require_model(body: dict) -> None:
    if "model" in body and not isinstance(body["model"], str):
        raise InvalidField("model", "`model` must be a string.")


# The codec modules by format name, for the hot path (a dict lookup, no import machinery).
CODECS = {name: codec(name) for name in FORMATS}
