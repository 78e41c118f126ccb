"""Opaque reasoning across providers and models: a signature (Anthropic, Gemini), redacted
thinking data (Anthropic) or encrypted content (OpenAI Responses) is valid only for the
model that made it. Every one the gateway hands a client is sealed with its origin (the
provider's wire format) and the upstream model that made it, so that when the client sends
it back the gateway returns it byte for byte to that model and never passes it to another.

A seal is `<format>@<model>:<value>`, for Responses `openai_responses@<model>:<item id>:<value>`,
the model percent-encoded (it may hold ":" or "@"; base64 values hold neither). Seals made
before models were recorded, `<format>:<value>`, are still read (model unknown)."""
import re
from copy import deepcopy
from urllib.parse import quote, unquote

from .. import hub
from . import FORMATS


def seal(value: str, origin: str | None, client: str, item_id: str | None = None, model: str | None = None) -> str:
    """Opaque reasoning translated for a client of format `client`, made by `model` of a
    provider of format `origin`. Reasoning of the client's own format comes back through the
    hub only in tests: it stays bare (seal_native seals what goes out as received)."""
    if origin in (None, client):
        return value
    return _sealed(value, origin, item_id, model)


def _sealed(value: str, origin: str, item_id: str | None, model: str | None) -> str:
    if origin == "openai_responses":
        value = f"{item_id or ''}:{value}"
    return f"{origin}@{quote(model, safe='')}:{value}" if model else f"{origin}:{value}"


def unseal(value: str, client: str) -> tuple[str, str, str | None, str | None]:
    """(opaque value, origin format, upstream model, Responses item id) of what a `client`
    sent back; a value the gateway did not seal is the client's own format's, model unknown."""
    head, colon, rest = value.partition(":")
    origin, _, model = head.partition("@")
    if origin not in FORMATS or not colon:
        return value, client, None, None
    item_id = None
    if origin == "openai_responses":
        item_id, _, rest = rest.partition(":")
    return rest, origin, unquote(model) or None, item_id or None


def sealed_thinking(text: str, value: str | None, client: str, **fields):
    """A hub Thinking for reasoning a `client` sent back with seal `value` (or none)."""
    if not value:
        return hub.Thinking(text=text, **fields)
    value, origin, model, item_id = unseal(value, client)
    if model:
        fields["source_model"] = model
    if origin == "openai_responses":
        fields["id"] = item_id or fields.get("id")
        return hub.Thinking(text=text, encrypted_content=value, origin=origin, **fields)
    return hub.Thinking(text=text, signature=value, origin=origin, **fields)


def foreign(part, upstream: str) -> bool:
    """Is this reasoning sealed by a provider of another format than `upstream`?"""
    return bool(part.signature or part.redacted or part.encrypted_content) and part.origin not in (None, upstream)


# A sealed value in a request's raw JSON: the field that carries opaque reasoning in any
# format, its value starting with a format's name and, since models are recorded, "@model".
_SEALED = re.compile(rb'"(?:signature|data|encrypted_content|thoughtSignature|thought_signature)"\s*:\s*"('
                     + "|".join(FORMATS).encode() + rb')(?:@([^":]*))?:')


def seals_in(raw: bytes) -> set[tuple[str, str | None]]:
    """The (origin format, upstream model) of every seal in a raw request (one regex pass)."""
    return {(m.group(1).decode(), unquote(m.group(2).decode()) if m.group(2) else None)
            for m in _SEALED.finditer(raw)}


def same_format_plan(raw: bytes, upstream: str, model: str) -> str | None:
    """What a request in the upstream's own format needs before it goes out as sent:
    "hub" when it carries reasoning sealed by another format or another model (the hub drops
    it, with a diagnostic), "unseal" when it carries only this model's seals (they go back
    bare), None when it carries no seal."""
    seals = seals_in(raw)
    if not seals:
        return None
    if any(origin != upstream or (sealed_by is not None and sealed_by != model) for origin, sealed_by in seals):
        return "hub"
    return "unseal"


# Where each client format carries opaque reasoning: an object of that `type` and its field.
SEALED_FIELDS = {
    "anthropic_messages": {"thinking": "signature", "redacted_thinking": "data", "signature_delta": "signature"},
    "openai_responses": {"reasoning": "encrypted_content"},
}


def _sealed_objects(node, fields: dict):
    """Every object under `node` (answers, stream events, request histories: objects and
    lists of them, at most four levels down) whose type carries a seal, with its field."""
    stack = [(node, 0)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            field = fields.get(value.get("type"))
            if field and isinstance(value.get(field), str) and value[field]:
                yield value, field
            children = value.values()
            if str(value.get("type")).endswith("tool_use"):  # its input is the model's, whatever its shape
                children = [v for k, v in value.items() if k != "input"]
        elif isinstance(value, list):
            children = value
        else:
            continue
        if depth < 4:
            stack += [(child, depth + 1) for child in children if isinstance(child, (dict, list))]


def seal_native(payload: dict, fmt: str, model: str) -> bool:
    """Seal, in place, the opaque reasoning of an answer or stream event that went out in the
    client's own format as received; True when there was any."""
    found = False
    for obj, field in _sealed_objects(payload, SEALED_FIELDS[fmt]):
        obj[field] = _sealed(obj[field], fmt, obj.get("id") if fmt == "openai_responses" else None, model)
        found = True
    return found


def unseal_native(body: dict, fmt: str) -> dict:
    """A copy of a request in the upstream's own format with its seals (all this upstream
    model's: see same_format_plan) back to the bare values the upstream made. The history is
    copied only where a seal is, and the client's body is left as it was."""
    key = "messages" if fmt == "anthropic_messages" else "input"
    history = body.get(key)
    if not isinstance(history, list):
        return body
    fields = SEALED_FIELDS[fmt]
    copied = []
    for turn in history:
        if next(_sealed_objects(turn, fields), None) is not None:
            turn = deepcopy(turn)
            for obj, field in _sealed_objects(turn, fields):
                obj[field] = unseal(obj[field], fmt)[0]
        copied.append(turn)
    return {**body, key: copied}
