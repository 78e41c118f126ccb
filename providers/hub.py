"""The hub form: one block-structured shape every wire format reads into and writes from.

Codecs in `providers/wire/` translate each wire format to and from these objects, so N
formats need N codecs, not N² converters. Pure data, no I/O, no Django.

Usage convention (the one place it is decided): `input_tokens` EXCLUDES cached tokens,
`cached_read` and `cache_write` count them apart, `output_tokens` INCLUDES reasoning
tokens and `reasoning_tokens` is the part of it spent on reasoning. OpenAI-style formats
(chat, Responses) and Gemini report prompt tokens INCLUDING cached ones; Anthropic reports
input_tokens EXCLUDING cache reads and writes. Each codec converts exactly, both ways.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class Role(StrEnum):
    SYSTEM = "system"
    DEVELOPER = "developer"
    USER = "user"
    ASSISTANT = "assistant"
    TOOL = "tool"


class StopReason(StrEnum):
    """Why the model stopped. OTHER keeps the raw value beside it: an unknown reason is
    never passed off as a normal end."""
    END = "end"
    MAX_TOKENS = "max_tokens"
    TOOL_USE = "tool_use"
    STOP_SEQUENCE = "stop_sequence"
    REFUSAL = "refusal"
    PAUSE_TURN = "pause_turn"
    CONTENT_FILTER = "content_filter"
    OTHER = "other"


# --- parts ---------------------------------------------------------------------------

@dataclass(slots=True)
class Text:
    text: str


@dataclass(slots=True)
class Image:
    """An image given inline (base64 `data` with its `media_type`) or by `url`."""
    data: str | None = None
    media_type: str | None = None
    url: str | None = None
    detail: str | None = None  # OpenAI's low/high/auto hint


@dataclass(slots=True)
class File:
    """A document (PDF, plain text...) given inline (base64 `data` with its `media_type`) or by `url`."""
    data: str | None = None
    media_type: str | None = None
    url: str | None = None
    name: str | None = None


@dataclass(slots=True)
class Thinking:
    """Model reasoning. `signature` (Anthropic, Gemini thoughtSignature), `redacted` (Anthropic
    redacted_thinking data) and `encrypted_content` (OpenAI Responses) are opaque and only
    valid for the model that made them: `source_model` records it where known."""
    text: str = ""
    signature: str | None = None
    redacted: str | None = None
    encrypted_content: str | None = None
    source_model: str | None = None
    id: str | None = None  # Responses reasoning item id
    origin: str | None = None  # the wire format of the provider that sealed it (see wire/seals.py)


@dataclass(slots=True)
class ToolCall:
    id: str
    name: str
    arguments: str = "{}"  # a JSON text, kept as received
    kind: str = "function"  # or "custom" (free-form input, OpenAI custom tools)


@dataclass(slots=True)
class ToolResult:
    call_id: str
    parts: list[Text | Image] = field(default_factory=list)
    is_error: bool = False
    name: str | None = None  # the called tool, where the format says it (Gemini needs it)


Part = Text | Image | File | Thinking | ToolCall | ToolResult


@dataclass(slots=True)
class Message:
    role: Role
    parts: list[Part] = field(default_factory=list)
    # Where in the client's request this turn began (`messages.3`, `input[5]`): what a dropped
    # field's diagnostic names, so it points into the body the client sent. Not content: not compared.
    source: str | None = field(default=None, compare=False)


@dataclass(slots=True)
class Tool:
    name: str
    description: str | None = None
    parameters: dict | None = None  # JSON schema of the arguments (function tools)
    kind: str = "function"  # or "custom"
    strict: bool | None = None


@dataclass(slots=True)
class ToolChoice:
    mode: str  # auto | none | required | tool
    name: str | None = None  # the tool, when mode == "tool"


@dataclass(slots=True)
class ResponseFormat:
    """Structured output: `json_object` (any JSON) or `json_schema` (this `schema`)."""
    type: str
    schema: dict | None = None
    name: str | None = None
    strict: bool | None = None


@dataclass(slots=True)
class Request:
    model: str
    messages: list[Message] = field(default_factory=list)
    system: list[Text] = field(default_factory=list)  # top-level system prompt
    tools: list[Tool] = field(default_factory=list)
    tool_choice: ToolChoice | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: list[str] = field(default_factory=list)
    stream: bool = False
    response_format: ResponseFormat | None = None
    reasoning_effort: str | None = None  # minimal | low | medium | high | ...
    reasoning_budget: int | None = None  # tokens; 0 means reasoning off
    parallel_tool_calls: bool | None = None
    user: str | None = None
    metadata: dict | None = None
    extras: dict = field(default_factory=dict)  # fields this hub does not model
    format: str | None = None  # the wire format it was read from: extras only go back there
    diagnostics: list[tuple[str, str]] = field(default_factory=list)  # (field, why dropped)

    def drop(self, field_name: str, reason: str) -> None:
        """Record that `field_name` could not be carried (each field once)."""
        entry = (field_name, reason)
        if entry not in self.diagnostics:
            self.diagnostics.append(entry)


@dataclass(slots=True)
class Usage:
    input_tokens: int = 0  # excluding cached tokens, see the module docstring
    cached_read: int = 0
    cache_write: int = 0
    output_tokens: int = 0  # including reasoning tokens
    reasoning_tokens: int = 0

    @property
    def prompt_tokens(self) -> int:
        """All prompt tokens, cached or not (what OpenAI calls prompt_tokens)."""
        return self.input_tokens + self.cached_read + self.cache_write


@dataclass(slots=True)
class Answer:
    id: str
    model: str
    parts: list[Part] = field(default_factory=list)
    stop_reason: StopReason = StopReason.END
    usage: Usage | None = None
    stop_raw: str | None = None  # the format's own value, kept for OTHER
    stop_sequence: str | None = None


# --- stream events -------------------------------------------------------------------

class BlockKind(StrEnum):
    TEXT = "text"
    THINKING = "thinking"
    REDACTED_THINKING = "redacted_thinking"
    TOOL_CALL = "tool_call"


@dataclass(slots=True)
class Start:
    id: str
    model: str
    usage: Usage | None = None


@dataclass(slots=True)
class BlockStart:
    """A content block opens. Readers number blocks 0, 1, 2... in the order they open."""
    index: int
    kind: BlockKind
    tool_id: str | None = None
    tool_name: str | None = None
    redacted: str | None = None  # the data of a redacted thinking block
    custom: bool = False  # a call of a custom (free-form input) tool: its "arguments" are plain text


@dataclass(slots=True)
class TextDelta:
    index: int
    text: str


@dataclass(slots=True)
class ThinkingDelta:
    index: int
    text: str


@dataclass(slots=True)
class SignatureDelta:
    """The opaque seal of a thinking block: a signature, or (encrypted=True) OpenAI
    Responses encrypted_content; `origin` is the wire format that sealed it, `id` the
    Responses reasoning item it belongs to, `model` the upstream model that made it (set by
    the translator: the model the gateway asked for, not the one the answer names)."""
    index: int
    signature: str
    encrypted: bool = False
    origin: str | None = None
    id: str | None = None
    model: str | None = None


@dataclass(slots=True)
class ToolArgsDelta:
    index: int
    json: str


@dataclass(slots=True)
class BlockStop:
    index: int


@dataclass(slots=True)
class Finish:
    stop_reason: StopReason
    usage: Usage | None = None
    stop_raw: str | None = None
    stop_sequence: str | None = None


@dataclass(slots=True)
class Error:
    type: str
    message: str


Event = Start | BlockStart | TextDelta | ThinkingDelta | SignatureDelta | ToolArgsDelta | BlockStop | Finish | Error


# --- shared helpers for codecs -------------------------------------------------------

EFFORT_BUDGETS = {"minimal": 1024, "low": 2048, "medium": 8192, "high": 24576, "xhigh": 32768}


def budget_for_effort(effort: str) -> int | None:
    """Thinking tokens for a reasoning effort (None: "none", reasoning off)."""
    return None if effort == "none" else EFFORT_BUDGETS.get(effort, EFFORT_BUDGETS["medium"])


def effort_for_budget(budget: int) -> str:
    """The nearest reasoning effort for a thinking budget in tokens."""
    if budget <= 0:
        return "none"
    if budget <= EFFORT_BUDGETS["low"]:
        return "low"
    if budget <= EFFORT_BUDGETS["medium"]:
        return "medium"
    return "high"


def parse_data_url(url: str) -> Image:
    """An Image from a `data:<type>;base64,<data>` URL, or one that keeps the URL."""
    if url.startswith("data:") and ";base64," in url:
        head, data = url[5:].split(";base64,", 1)
        return Image(data=data, media_type=head or None)
    return Image(url=url)


def image_url(image: Image) -> str:
    """The image as a URL: its own, or a data URL of its bytes."""
    return image.url or f"data:{image.media_type or 'image/png'};base64,{image.data or ''}"


def parse_file_url(url: str, name: str | None = None) -> File:
    """A File from a data URL (inline bytes) or any other URL."""
    if url.startswith("data:") and ";base64," in url:
        head, data = url[5:].split(";base64,", 1)
        return File(data=data, media_type=head or None, name=name)
    return File(url=url, name=name)


def file_data_url(file: File) -> str:
    return f"data:{file.media_type or 'application/pdf'};base64,{file.data or ''}"


def merge_usage(old: Usage | None, new: Usage | None) -> Usage | None:
    """Later usage reports win field by field where they say something (non-zero)."""
    if old is None or new is None:
        return new or old
    return Usage(**{name: getattr(new, name) or getattr(old, name) for name in Usage.__slots__})
