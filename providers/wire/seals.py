"""Opaque reasoning across providers: a signature (Anthropic, Gemini) or encrypted content
(OpenAI Responses) is valid only for the provider that made it. Handed to a client of
another format it is sealed with its origin, so that when the client sends it back the
gateway can return it to that provider byte for byte and never pass it to another."""
import re

from .. import hub
from . import FORMATS


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


# A sealed value in a request's raw JSON: the field that carries opaque reasoning in any
# format, its value starting with a format's name.
_SEALED = re.compile(rb'"(?:signature|encrypted_content|thoughtSignature|thought_signature)"\s*:\s*"('
                     + "|".join(FORMATS).encode() + rb'):')


def foreign_in(raw: bytes, upstream: str) -> bool:
    """Does this raw request carry reasoning sealed by a provider of another format than
    `upstream`? (One regex pass: same-format requests go out as sent unless it does.)"""
    return any(match.group(1).decode() != upstream for match in _SEALED.finditer(raw))
