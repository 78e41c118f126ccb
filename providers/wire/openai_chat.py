"""The OpenAI wire format (chat completions, and the completions and embeddings endpoints
that share its error shape): validation, error bodies, usage, and the stream relay used
when client and upstream both speak it."""
import json

from ..adapters.base import Usage, as_int
from ..sse import EventSplitter, data_event, event_data, split_events

CHAT_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
TOKEN_LIMIT_FIELDS = ("max_tokens", "max_completion_tokens")


def validate_request(body: dict, endpoint: str) -> None:
    """Check the fields the gateway itself reads; everything else is the upstream's to judge."""
    from . import InvalidField

    if endpoint == "chat":
        messages = body.get("messages")
        if not isinstance(messages, list):
            raise InvalidField("messages", "'messages' must be an array of message objects.")
        if not messages:
            raise InvalidField("messages", "'messages' must contain at least one message.")
        for i, message in enumerate(messages):
            if not isinstance(message, dict):
                raise InvalidField(f"messages[{i}]", f"messages[{i}] must be an object.")
            role = message.get("role")
            if not isinstance(role, str):
                raise InvalidField(f"messages[{i}].role", f"messages[{i}] is missing its 'role'.")
            if role not in CHAT_ROLES:
                raise InvalidField(f"messages[{i}].role",
                                   f"messages[{i}].role must be one of {', '.join(sorted(CHAT_ROLES))}, not '{role}'.")
    for name in TOKEN_LIMIT_FIELDS:
        value = body.get(name)
        if value is not None and (type(value) is not int or value < 1):
            raise InvalidField(name, f"'{name}' must be a positive integer.")
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise InvalidField("stream", "'stream' must be a boolean.")


def error_body(err) -> dict:
    return {"error": {"message": err.message, "type": err.type, "param": err.param, "code": err.code}}


def error_event(err) -> bytes:
    """How an OpenAI stream ends when it fails part-way."""
    return data_event(error_body(err))


def read_error(content: bytes) -> str:
    """The human message of an upstream error body, whatever its shape."""
    try:
        data = json.loads(content)
    except ValueError:
        return content.decode("utf-8", "replace").strip()[:500]
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, dict) and error.get("message"):
        return str(error["message"])
    if isinstance(error, str):
        return error
    if isinstance(data, dict) and data.get("message"):
        return str(data["message"])
    return content.decode("utf-8", "replace")[:500]


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
