"""The mock's deterministic behaviour, shared by every wire format: what to answer to a conversation.

Each format reads its request into a `Turn`; `plan_reply` decides the `Reply`:
- the last message carries tool results -> text that quotes them ("... tool said: <results>");
- tools are offered (and tool_choice is not "none") -> tool calls (mock.tool_calls, default 1);
- otherwise -> "Hello from mock: <last user text>" (mock.chunks words exactly, if given).
With reasoning asked for (mock.reasoning, or the format's own switch), a thinking text comes first;
its signature is an HMAC the mock checks when the text comes back (mock.require_signature).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from .core import MAX_ECHO_CHARS, REPLY_PREFIX, BadRequest, int_option, sign

TOOL_RESULT_PREFIX = "the tool said: "
MAX_ARGUMENT_CHARS = 60


@dataclass
class Turn:
    """What the mock needs from a request, whatever its wire format."""

    last_user_text: str = ""
    tool_results: list = field(default_factory=list)  # texts, when the last message carries tool results
    tools: list = field(default_factory=list)  # [{"name": str, "parameters": JSON schema}]
    tool_choice_none: bool = False
    prompt_tokens: int = 0
    wants_reasoning: bool = False


@dataclass
class ToolCall:
    id: str
    name: str
    arguments: str  # JSON text

    def argument_pieces(self):
        """The arguments in three deltas, as a real model streams them."""
        third = max(len(self.arguments) // 3, 1)
        return [p for p in (self.arguments[:third], self.arguments[third:2 * third], self.arguments[2 * third:]) if p]


@dataclass
class Reply:
    words: list = field(default_factory=list)
    tool_calls: list = field(default_factory=list)
    reasoning_words: list = field(default_factory=list)

    @property
    def text(self):
        return " ".join(self.words)

    @property
    def reasoning(self):
        return " ".join(self.reasoning_words)

    @property
    def signature(self):
        return sign(self.reasoning) if self.reasoning_words else ""

    @property
    def output_tokens(self):
        arguments = sum(len(call.arguments.split()) + 1 for call in self.tool_calls)
        return len(self.words) + len(self.reasoning_words) + arguments

    @property
    def reasoning_tokens(self):
        return len(self.reasoning_words)


def words_of(text):
    return len(text.split())


def reply_words(prompt_text, chunks):
    """Reply words; with `chunks` set, the reply is cycled/truncated to exactly that many words."""
    words = (REPLY_PREFIX + prompt_text[:MAX_ECHO_CHARS]).split()
    if chunks is None:
        return words
    if chunks < 0:
        raise BadRequest("mock.chunks must be >= 0", param="mock.chunks")
    return [words[i % len(words)] for i in range(chunks)]


def pieces(words):
    """Stream deltas whose concatenation equals " ".join(words)."""
    last = len(words) - 1
    return [w if i == last else w + " " for i, w in enumerate(words)]


def plan_reply(turn, fault, call_id):
    """The reply to `turn`. `call_id(i)` names the i-th tool call in the format's style."""
    reply = Reply()
    if fault.get("reasoning") or turn.wants_reasoning:
        subject = "the tool result" if turn.tool_results else turn.last_user_text[:MAX_ECHO_CHARS]
        reply.reasoning_words = f"Thinking about {subject}".split()
    count = int_option(fault, "tool_calls")
    if turn.tool_results:
        reply.words = reply_words(TOOL_RESULT_PREFIX + " | ".join(turn.tool_results), int_option(fault, "chunks"))
    elif turn.tools and not turn.tool_choice_none and count != 0:
        for i in range(count or 1):
            tool = turn.tools[i % len(turn.tools)]
            arguments = json.dumps(tool_arguments(tool.get("parameters"), turn.last_user_text, i))
            reply.tool_calls.append(ToolCall(call_id(i), tool["name"], arguments))
    else:
        reply.words = reply_words(turn.last_user_text, int_option(fault, "chunks"))
    return reply


def tool_arguments(schema, user_text, index):
    """Arguments that fit a JSON schema's required (else first) properties, built from the prompt."""
    if not isinstance(schema, dict):
        return {}
    properties = schema.get("properties") or {}
    if not isinstance(properties, dict) or not properties:
        return {}
    names = [n for n in schema.get("required") or [] if n in properties] or list(properties)[:1]
    return {name: _value_for(properties[name], user_text, index) for name in names}


def _value_for(prop, user_text, index):
    prop = prop if isinstance(prop, dict) else {}
    if prop.get("enum"):
        return prop["enum"][0]
    kind = prop.get("type")
    kind = kind[0] if isinstance(kind, list) and kind else kind
    if isinstance(kind, str):
        kind = kind.lower()  # Gemini writes its schema types in upper case
    if kind in ("integer", "number"):
        return index + 1
    if kind == "boolean":
        return True
    if kind == "array":
        return []
    if kind == "object":
        return {}
    return user_text[:MAX_ARGUMENT_CHARS] or "mock"
