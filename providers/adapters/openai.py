"""OpenAI-compatible upstreams: chat completions, completions, embeddings, models.

Same protocol in and out, so requests go upstream as sent except `model` (and a request
for usage on streams); responses and events come back untouched, apart from dropping
the usage-only stream chunk a client did not ask for.
"""
import json

from ..sse import EventSplitter, data_event, event_data, split_events
from .base import UpstreamRequest, Usage, as_int

PATHS = {"chat": "/chat/completions", "completions": "/completions", "embeddings": "/embeddings"}
# Streams carry usage only when asked; the gateway always asks, for honest accounting.
STREAMING_ENDPOINTS = ("chat", "completions")


class OpenAIAdapter:
    protocol = "openai"
    supports_embeddings = True

    def build_request(self, endpoint: str, body: dict, *, upstream_model: str, base_url: str,
                      api_key: str | None, extra_headers=()) -> UpstreamRequest:
        body = {**body, "model": upstream_model}
        if body.get("stream") is True and endpoint in STREAMING_ENDPOINTS:
            options = body.get("stream_options")
            body["stream_options"] = {**(options if isinstance(options, dict) else {}), "include_usage": True}
        # identity: events must be readable as they arrive, and the client gets them uncompressed anyway.
        headers = {"content-type": "application/json", "accept": "application/json", "accept-encoding": "identity"}
        headers.update(extra_headers)
        if api_key:
            headers["authorization"] = f"Bearer {api_key}"
        return UpstreamRequest("POST", base_url + PATHS[endpoint], headers, json.dumps(body).encode())

    @staticmethod
    def usage_from_response(content: bytes) -> Usage | None:
        """Usage reported in a non-streamed response body, if any."""
        try:
            usage = json.loads(content).get("usage")
        except (ValueError, AttributeError):
            return None
        return usage_from_dict(usage)

    @staticmethod
    def text_from_response(content: bytes) -> str:
        """The generated text of a non-streamed response, for a token estimate."""
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

    @staticmethod
    def usage_from_events(blocks: list[bytes]) -> Usage | None:
        """The usage a stream reported (its last usage event), if any."""
        for event in reversed(split_events(b"".join(blocks))):
            data = event_data(event)
            if data and (b'"usage":{' in data or b'"usage": {' in data):
                usage = OpenAIAdapter.usage_from_response(data)
                if usage is not None:
                    return usage
        return None

    @staticmethod
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

    @staticmethod
    def error_message(content: bytes) -> str:
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

    @staticmethod
    def error_event(message: str, type_: str = "upstream_error", code: str | None = None) -> bytes:
        """How an OpenAI stream ends when it fails part-way."""
        return data_event({"error": {"message": message, "type": type_, "param": None, "code": code}})

    def stream_relay(self, client_wants_usage: bool) -> "OpenAIStreamRelay":
        return OpenAIStreamRelay(client_wants_usage)


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


# Events worth decoding: usage (not the `"usage":null` of every chunk), errors, the end.
_MARKERS = (b'"usage":{', b'"usage": {', b'"error"', b"[DONE]")


def _no_choices(data: bytes) -> bool:
    return b'"choices":[]' in data or b'"choices": []' in data or b'"choices"' not in data


class OpenAIStreamRelay:
    """Passes an OpenAI stream through as it arrives, reading only what accounting needs.

    Content events go out untouched and unparsed: decoding every token costs several
    times more than relaying it. A chunk is searched (in C) for the few markers of events
    that matter: usage, an error, the end. Everything before the first marker goes out as
    it came; only the events from there on are looked at one by one, and only errors are
    decoded. Content and usage events are kept (`events_to_log`): the log writer reads
    the usage from them, or estimates tokens from the text, later and in its own process.
    """

    __slots__ = ("client_wants_usage", "error", "done", "_content", "_usage", "_splitter")

    def __init__(self, client_wants_usage: bool):
        self.client_wants_usage = client_wants_usage
        self.error: str | None = None
        self.done = False
        self._content: list[bytes] = []
        self._usage: list[bytes] = []  # events that carry usage
        self._splitter = EventSplitter()

    def feed(self, chunk: bytes) -> bytes:
        """The bytes to send the client for a chunk read from the upstream (events that
        arrived together go out together; an event cut in two waits for its end)."""
        block = self._splitter.feed_block(chunk)
        if not block:
            return b""
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
        self._usage.append(event)  # the log writer reads the usage from it
        if not self.client_wants_usage and _no_choices(data):
            return None  # the usage-only chunk the gateway asked for on its own account
        return event

    def _inspect_error(self, event: bytes, data: bytes) -> bytes:
        try:
            chunk = json.loads(data)
        except ValueError:
            chunk = None
        if isinstance(chunk, dict) and "error" in chunk:
            error = chunk["error"]
            self.error = str(error.get("message") if isinstance(error, dict) else error)
        else:  # not ours to judge: relayed like any other event
            self._content.append(event)
        return event

    def events_to_log(self, with_text: bool) -> list[bytes]:
        """The events the log writer needs (raw SSE) for `usage_from_events` and
        `text_from_events`: the usage events, and the content only when there is no usage
        (for an estimate) or the text is to be logged. Holding every stream's content
        until it is handed over would cost memory in proportion to traffic."""
        if self._usage and not with_text:
            return self._usage
        return self._content + self._usage

    @property
    def finished(self) -> bool:
        return self.done or self.error is not None
