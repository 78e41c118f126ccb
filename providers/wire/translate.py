"""Translation between wire formats through the hub: requests, answers and streams. Pure.

How the proxy uses it, when the client's format (src of the request) differs from the
upstream's: `translate_request(body, client, upstream, model)` gives the upstream body and
the diagnostics to log; the answer comes back through `translate_answer(body, upstream,
client, model, custom_tools, sealed_by)` or, streamed, through one `StreamTranslator(upstream,
client, model, custom_tools, sealed_by)` fed every upstream read. `sealed_by` is the upstream
model, which the seals of its reasoning carry (seals.py). `custom_tools` is
`custom_tool_names(body, client)`: OpenAI custom (free-form) tools travel to other providers
as functions taking one string, and their calls are turned back into custom calls here.
"""
from .. import hub
from . import CODECS, InvalidField, unwrap_custom_input


def translate_request(body, src: str, dst: str, model: str) -> tuple[dict, list[tuple[str, str]]]:
    """The `src` request `body` as a `dst` request for `model`, and what could not be carried
    as (field, reason) pairs. Raises InvalidField when dropping would change the meaning."""
    try:
        req = CODECS[src].read_request(body)
    except (AttributeError, TypeError, KeyError) as exc:
        # a field of the wrong shape that validation does not check: still the client's mistake
        raise InvalidField("body", f"The request has a field of the wrong shape ({type(exc).__name__}: {exc}).") from None
    out = CODECS[dst].write_request(req, model)
    return out, req.diagnostics


def custom_tool_names(body: dict, src: str) -> frozenset[str]:
    """Names of the custom (free-form input) tools a client declared; only OpenAI formats have them."""
    names = set()
    tools = body.get("tools") if isinstance(body, dict) else None
    for tool in tools if isinstance(tools, list) else []:
        if isinstance(tool, dict) and tool.get("type") == "custom":
            names.add((tool.get("custom") or {}).get("name") if src == "openai_chat" else tool.get("name"))
    return frozenset(n for n in names if n)


def translate_answer(body, src: str, dst: str, model: str, custom_tools=frozenset(),
                     sealed_by: str | None = None) -> dict:
    """A whole (non-streamed) `src` answer (its body, or already read into a hub.Answer) as
    the `dst` client expects it. `sealed_by` is the upstream model the gateway asked for:
    its opaque reasoning is sealed with it (see seals.py), not with the name the answer gives."""
    ans = body if isinstance(body, hub.Answer) else CODECS[src].read_answer(body)
    for part in ans.parts:
        if isinstance(part, hub.ToolCall) and part.name in custom_tools and part.kind != "custom":
            part.kind, part.arguments = "custom", unwrap_custom_input(part.arguments)
        elif isinstance(part, hub.Thinking):
            part.origin = part.origin or src  # unsigned reasoning too: see StreamTranslator._write
            part.source_model = sealed_by or part.source_model
    return CODECS[dst].write_answer(ans, model)


class StreamTranslator:
    """Upstream stream bytes in one format, client stream bytes in another. Pure: the relay
    feeds it what arrives and sends on what it returns, at once.

    `usage` is the last usage seen (hub.Usage), `error` the message of an upstream error or
    failure, `finished` whether the upstream finished properly."""

    def __init__(self, src: str, dst: str, model: str, custom_tools=frozenset(), sealed_by: str | None = None):
        self.reader = CODECS[src].StreamReader()
        self.writer = CODECS[dst].StreamWriter(model)
        self.src = src
        self.sealed_by = sealed_by  # the upstream model, for the seals of its reasoning
        self._unsigned: set[int] = set()  # thinking blocks open without a seal so far
        self.usage: hub.Usage | None = None
        self.error: str | None = None
        self.finished = False
        self.custom_tools = custom_tools
        self._custom_args: dict[int, str] = {}  # block index -> arguments of a custom call, held whole

    def feed(self, data: bytes) -> bytes:
        return self._write(self.reader.feed(data))

    def finish(self) -> bytes:
        """At the end of the upstream stream: what is owed to the client. A stream that ended
        without its proper finish ends with an error event in the client's protocol."""
        out = self._write(self.reader.close())
        if not self.finished and self.error is None:
            out += self.fail("The upstream stream ended before the answer was complete.")
        return out

    def fail(self, message: str, type: str = "upstream_error") -> bytes:
        """A failure mid-stream (timeout, connection lost) in the client's protocol."""
        if self.error is None:
            self.error = message
        return self.writer.write(hub.Error(type, message))

    def _write(self, events: list) -> bytes:
        out = []
        write = self.writer.write
        for event in events:
            kind = type(event)
            if kind is hub.TextDelta:  # most events: nothing to note, nothing to restore
                out.append(write(event))
                continue
            if kind is hub.Start or kind is hub.Finish:
                if event.usage:
                    self.usage = hub.merge_usage(self.usage, event.usage)
                if kind is hub.Finish:
                    self.finished = True
            elif kind is hub.Error and self.error is None:
                self.error = event.message
            elif kind is hub.SignatureDelta:
                event.model = self.sealed_by
                self._unsigned.discard(event.index)
            elif kind is hub.BlockStart and event.kind is hub.BlockKind.THINKING:
                self._unsigned.add(event.index)
            elif kind is hub.BlockStop and event.index in self._unsigned:
                # Unsigned reasoning (chat's reasoning_content) is sealed empty with its origin, so
                # that when the client sends it back, no provider that signs takes it for its own.
                self._unsigned.discard(event.index)
                out.append(write(hub.SignatureDelta(event.index, "", origin=self.src, model=self.sealed_by)))
            if self.custom_tools:
                out += [write(e) for e in self._restore_custom(event)]
            else:
                out.append(write(event))
        return b"".join(out)

    def _restore_custom(self, event) -> list:
        """A custom tool's call came back as a function call with one `input` argument: its
        arguments are held until the call is complete, then handed on as the plain text."""
        if isinstance(event, hub.BlockStart) and event.tool_name in self.custom_tools and not event.custom:
            event.custom = True
            self._custom_args[event.index] = ""
        elif isinstance(event, hub.ToolArgsDelta) and event.index in self._custom_args:
            self._custom_args[event.index] += event.json
            return []
        elif isinstance(event, hub.BlockStop) and event.index in self._custom_args:
            text = unwrap_custom_input(self._custom_args.pop(event.index))
            return [hub.ToolArgsDelta(event.index, text), event] if text else [event]
        return [event]
