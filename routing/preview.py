"""The live preview of prompt rules: a request as the upstream would receive it, as a diff.

Pure: the admin parses the form (rules as typed, saved or not) and hands over data.
"""
import datetime
import difflib
import json
from dataclasses import dataclass, field

from providers.wire import InvalidField
from providers.wire.translate import translate_request

from .rules import apply_rules
from .snapshot import RuleEntry

# The protocols a client may speak, by the name the admin shows, and their wire formats.
PROTOCOLS = {"chat": "openai_chat", "messages": "anthropic_messages", "responses": "openai_responses"}
# Request-log endpoints whose bodies are one of those protocols.
LOGGED_PROTOCOLS = {"chat": "chat", "messages": "messages", "responses": "responses"}


@dataclass(frozen=True, slots=True)
class Upstream:
    """The route's first target, as far as the body it receives depends on it."""

    wire: str
    model: str
    provider: str
    native_responses: bool = False


@dataclass(slots=True)
class Preview:
    original: str  # the pasted body, pretty-printed
    rewritten: str  # after the rules (the client's format)
    diff: list[tuple[str, str]]  # (kind, line): kind is "add", "del", "hunk" or "same"
    upstream: str = ""  # the body in the upstream's format, when it differs from the client's
    upstream_wire: str = ""
    problems: list[str] = field(default_factory=list)  # what the translation dropped, or why it failed

    @property
    def changed(self) -> bool:
        return self.original != self.rewritten


def pretty(body) -> str:
    return json.dumps(body, indent=2, ensure_ascii=False)


def diff_lines(before: str, after: str) -> list[tuple[str, str]]:
    """A unified diff of two texts, each line labelled for display."""
    kinds = {"+": "add", "-": "del", "@": "hunk", " ": "same"}
    lines = difflib.unified_diff(before.splitlines(), after.splitlines(), "original", "upstream", n=3, lineterm="")
    return [(kinds[line[0]], line) for line in lines if line and not line.startswith(("---", "+++"))]


def preview_rules(body: dict, protocol: str, rules: tuple[RuleEntry, ...], upstream: Upstream | None = None,
                  today: datetime.date | None = None) -> Preview:
    """`body` (of `protocol`: chat, messages or responses) after `rules`, and as `upstream` would get it.

    The diff shows what the rules (and the model name) change in the client's format; a body
    translated to another format differs in every line, so it is shown whole beside the diff.
    """
    wire = PROTOCOLS[protocol]
    rewritten = apply_rules(body, rules, wire, today=today)
    result = Preview(original=pretty(body), rewritten=pretty(rewritten), diff=[])
    sent = rewritten
    if upstream is not None:
        if upstream.wire == wire or (wire == "openai_responses" and upstream.native_responses):
            sent = {**rewritten, "model": upstream.model}  # goes out as sent, but for the model name
        else:
            try:
                translated, dropped = translate_request(rewritten, wire, upstream.wire, upstream.model)
            except InvalidField as exc:
                result.problems.append(f"{exc.param}: {exc.message}")
            else:
                result.problems.extend(f"{name}: {reason}" for name, reason in dropped)
                result.upstream, result.upstream_wire = pretty(translated), upstream.wire
    result.diff = diff_lines(result.original, pretty(sent))
    return result
