"""Wire-format codecs: one module per format, each reading and writing the hub form.

Every codec module offers the same names: read_request, write_request, read_answer,
write_answer, StreamReader, StreamWriter, error_body, error_event, read_error and
validate_request. `codec(name)` returns the module for a format name.
"""
import importlib
import json

FORMATS = ("openai_chat", "anthropic_messages", "openai_responses", "gemini")


class InvalidField(ValueError):
    """A request field the gateway cannot accept (or cannot translate without changing its
    meaning). `param` names the field the way the client's format spells it."""

    def __init__(self, param: str, message: str):
        super().__init__(message)
        self.param = param
        self.message = message


def seal(value: str, origin: str | None, client: str, item_id: str | None = None) -> str:
    """Opaque reasoning (a signature, encrypted content) as handed to a client of format
    `client`. Made by a provider of another format, it is prefixed with that format, so when
    the client sends it back the gateway knows where it is valid and never passes one
    provider's seal to another. (Base64 seals never contain ":".) A Responses seal also keeps
    its reasoning item id, which OpenAI wants back with it."""
    if origin in (None, client):
        return value
    if origin == "openai_responses":
        return f"{origin}:{item_id or ''}:{value}"
    return f"{origin}:{value}"


def unseal(value: str, client: str) -> tuple[str, str, str | None]:
    """(opaque value, origin format, Responses item id) of a seal a `client` sent back."""
    origin, _, rest = value.partition(":")
    if origin not in FORMATS or not rest:
        return value, client, None
    if origin == "openai_responses":
        item_id, _, rest = rest.partition(":")
        return rest, origin, item_id or None
    return rest, origin, None


def sealed_thinking(text: str, value: str | None, client: str, **fields):
    """A hub Thinking for reasoning a `client` sent back with seal `value` (or none)."""
    from .. import hub

    if not value:
        return hub.Thinking(text=text, **fields)
    value, origin, item_id = unseal(value, client)
    if origin == "openai_responses":
        fields["id"] = item_id or fields.get("id")
        return hub.Thinking(text=text, encrypted_content=value, origin=origin, **fields)
    return hub.Thinking(text=text, signature=value, origin=origin, **fields)


def foreign(part, upstream: str) -> bool:
    """Is this reasoning sealed by a provider of another format than `upstream`?"""
    return bool(part.signature or part.redacted or part.encrypted_content) and part.origin not in (None, upstream)


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
