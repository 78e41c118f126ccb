"""Prompt rules: pure rewrites of a request's prompt, applied in order, in the client's wire format.

Every operation is written once, against a small "prompt view" of the body: where its system
prompt lives, which entries are conversation turns, how a text part looks. One view per wire
format (OpenAI chat, Anthropic Messages, OpenAI Responses) gives every rule the same meaning
whatever the client speaks. Bodies are never modified: what changes is copied, the rest is
shared, so a large request costs only what its rules touch. Non-text parts (images, files,
tool calls and results) are never touched.
"""
import datetime
import re
from collections.abc import Callable

from .snapshot import RuleEntry

# Claude Code puts a per-request line at the very start of its system prompt (its `cch=` value
# changes on every request), which defeats the upstream's prefix-based prompt caching:
#   x-anthropic-billing-header: cc_version=2.1.38.713; cc_entrypoint=cli; cch=90d92;
BILLING_HEADER = re.compile(r"\A\s*x-anthropic-billing-header:[^\n]*(?:\n|\Z)")
TEMPLATE_FIELD = re.compile(r"\{\{\s*(user_prompt|date|model)\s*\}\}")


class PromptView:
    """Where one wire format keeps its prompt. Subclasses name the differences."""

    entries_key = "messages"  # the list of turns
    system_key: str | None = None  # a top-level system prompt field, if the format has one
    system_roles: frozenset = frozenset()  # roles of turns that are system prompts
    text_type = "text"  # the type of a text part the gateway adds

    def entries(self, body: dict) -> list | None:
        entries = body.get(self.entries_key)
        return entries if isinstance(entries, list) else None

    def set_entries(self, body: dict, entries: list) -> None:
        body[self.entries_key] = entries

    def role(self, entry) -> str | None:
        return entry.get("role") if isinstance(entry, dict) else None

    def new_system_entry(self, text: str) -> dict:
        return {"role": "system", "content": text}


class ChatView(PromptView):
    system_roles = frozenset({"system", "developer"})


class MessagesView(PromptView):
    system_key = "system"


class ResponsesView(PromptView):
    entries_key = "input"
    system_key = "instructions"
    system_roles = frozenset({"system", "developer"})
    text_type = "input_text"

    def entries(self, body):
        entries = body.get("input")
        if isinstance(entries, str):  # the short form: one user message
            return [{"role": "user", "content": entries}]
        return entries if isinstance(entries, list) else None

    def set_entries(self, body, entries):
        if isinstance(body.get("input"), str) and len(entries) == 1 and entries[0].keys() == {"role", "content"} \
                and entries[0]["role"] == "user" and isinstance(entries[0]["content"], str):
            body["input"] = entries[0]["content"]  # still the short form: keep it as the client sent it
        else:
            body["input"] = entries


VIEWS = {"openai_chat": ChatView(), "anthropic_messages": MessagesView(), "openai_responses": ResponsesView()}


def apply_rules(body: dict, rules: tuple[RuleEntry, ...], wire: str = "openai_chat",
                today: datetime.date | None = None) -> dict:
    """Return `body` with `rules` applied (the input is never modified: what changes is copied).

    `wire` is the client's wire format; a body of another shape (embeddings, completions)
    passes unchanged. `today` fills `{{date}}` in templates.
    """
    view = VIEWS.get(wire)
    if not rules or view is None or view.entries(body) is None:
        return body
    prompt = _Prompt(view, body, today or datetime.date.today())
    for rule in rules:
        operation = OPERATIONS.get(rule.operation)
        if operation is not None:  # a rule stored by a newer version is skipped, not fatal
            operation(prompt, rule)
    return prompt.body


class _Prompt:
    """A body being rewritten: a shallow copy whose turns list is copied too."""

    def __init__(self, view: PromptView, body: dict, today: datetime.date):
        self.view = view
        self.body = dict(body)
        self.entries = list(view.entries(body))
        view.set_entries(self.body, self.entries)
        self.today = today

    def commit(self):
        self.view.set_entries(self.body, self.entries)

    # The system prompt: the top-level field when the format has one and the client set it,
    # else the first system-role turn; new ones go where the format keeps them.

    def _system_turn(self) -> int | None:
        for i, entry in enumerate(self.entries):
            if self.view.role(entry) in self.view.system_roles:
                return i
        return None

    def system(self):
        key = self.view.system_key
        if key and self.body.get(key) not in (None, "", []):
            return self.body[key]
        i = self._system_turn()
        return self.entries[i].get("content") if i is not None else None

    def set_system(self, content) -> None:
        key = self.view.system_key
        if key and self.body.get(key) not in (None, "", []):
            self.body[key] = content
            return
        i = self._system_turn()
        if i is not None:
            self.entries[i] = {**self.entries[i], "content": content}
        elif key:
            self.body[key] = content
        else:
            self.entries.insert(0, self.view.new_system_entry(content))
        self.commit()

    def drop_system(self, roles: frozenset, top_level: str | None) -> None:
        if top_level and self.view.system_key == top_level:
            self.body.pop(self.view.system_key, None)
        self.entries[:] = [e for e in self.entries if self.view.role(e) not in roles]
        self.commit()

    # The last user message that has text (a turn that only carries tool results is not a prompt).

    def last_user(self) -> int | None:
        for i in range(len(self.entries) - 1, -1, -1):
            entry = self.entries[i]
            if self.view.role(entry) == "user" and _texts(entry.get("content")):
                return i
        return None

    def map_user(self, fn: Callable) -> None:
        i = self.last_user()
        if i is not None:
            self.entries[i] = {**self.entries[i], "content": fn(self.entries[i]["content"])}
            self.commit()

    def first_turn(self) -> bool:
        # A Responses request that continues a stored response or conversation is a later turn,
        # though its input has no assistant item.
        if self.body.get("previous_response_id") or self.body.get("conversation"):
            return False
        return not any(self.view.role(e) == "assistant" for e in self.entries)

    def map_all_text(self, fn: Callable[[str], str]) -> None:
        key = self.view.system_key
        if key and self.body.get(key) is not None:
            self.body[key] = _map_text(self.body[key], fn)
        self.entries[:] = [{**e, "content": _map_text(e["content"], fn)} if isinstance(e, dict) and "content" in e
                           else e for e in self.entries]
        self.commit()


# Content is a string or a list of parts; a text part is a dict whose "text" is a string
# (chat "text", Anthropic "text", Responses "input_text"/"output_text"). Helpers return new values.

def _is_text(part) -> bool:
    return isinstance(part, dict) and isinstance(part.get("text"), str) and part.get("type", "text") in (
        "text", "input_text", "output_text")


def _texts(content) -> list[str]:
    if isinstance(content, str):
        return [content] if content else []
    if isinstance(content, list):
        return [p["text"] for p in content if _is_text(p)]
    return []


def _map_text(content, fn):
    if isinstance(content, str):
        return fn(content)
    if isinstance(content, list):
        return [{**p, "text": fn(p["text"])} if _is_text(p) else p for p in content]
    return content


def _map_edge(content, fn, first: bool, new_part: dict):
    """fn applied to the first (or last) text of content; a new text part when it has none."""
    if content is None or isinstance(content, str):
        return fn(content or "")
    if not isinstance(content, list):
        return content
    order = range(len(content)) if first else range(len(content) - 1, -1, -1)
    for i in order:
        if _is_text(content[i]):
            return [*content[:i], {**content[i], "text": fn(content[i]["text"])}, *content[i + 1:]]
    return [new_part, *content] if first else [*content, new_part]


def _replace_text(content, text: str, new_part: dict):
    """Content whose text is `text`: the first text part keeps its place (and its cache marks),
    other text parts go, images and other parts stay."""
    if not isinstance(content, list):
        return text
    out, placed = [], False
    for part in content:
        if _is_text(part):
            if not placed:
                out.append({**part, "text": text})
                placed = True
        else:
            out.append(part)
    return out if placed else [new_part, *out]


def _joined(old: str, new: str, new_first: bool) -> str:
    if not old:
        return new
    return f"{new}\n\n{old}" if new_first else f"{old}\n\n{new}"


# The operations. Each takes the prompt being rewritten and the rule.

def _system_edit(first: bool):
    def edit(prompt: _Prompt, rule: RuleEntry):
        part = {"type": prompt.view.text_type, "text": rule.text}
        prompt.set_system(_map_edge(prompt.system(), lambda old: _joined(old, rule.text, first), first, part))
    return edit


def _system_replace(prompt: _Prompt, rule: RuleEntry):
    prompt.set_system(_replace_text(prompt.system(), rule.text, {"type": prompt.view.text_type, "text": rule.text}))


def _system_set(prompt: _Prompt, rule: RuleEntry):
    if not _texts(prompt.system()):
        _system_replace(prompt, rule)


def _user_edit(first: bool):
    def edit(prompt: _Prompt, rule: RuleEntry):
        part = {"type": prompt.view.text_type, "text": rule.text}
        prompt.map_user(lambda content: _map_edge(content, lambda old: _joined(old, rule.text, first), first, part))
    return edit


def _user_template(prompt: _Prompt, rule: RuleEntry):
    i = prompt.last_user()
    if i is None:
        return
    content = prompt.entries[i]["content"]
    values = {"user_prompt": "\n\n".join(_texts(content)), "date": prompt.today.isoformat(),
              "model": str(prompt.body.get("model", ""))}
    text = TEMPLATE_FIELD.sub(lambda m: values[m.group(1)], rule.text)
    prompt.map_user(lambda content: _replace_text(content, text, {"type": prompt.view.text_type, "text": text}))


def _inject_once(prompt: _Prompt, rule: RuleEntry):
    if prompt.first_turn():
        _user_edit(first=True)(prompt, rule)


def _pattern(replacement: Callable[[RuleEntry], str]):
    def edit(prompt: _Prompt, rule: RuleEntry):
        if rule.pattern is not None:
            new = replacement(rule)
            prompt.map_all_text(lambda text: rule.pattern.sub(new, text))
    return edit


def _strip_billing_header(prompt: _Prompt, rule: RuleEntry):
    system = prompt.system()
    texts = _texts(system)
    if not texts or not BILLING_HEADER.match(texts[0]):
        return
    if isinstance(system, str):
        prompt.set_system(BILLING_HEADER.sub("", system, count=1))
        return
    i = next(i for i, p in enumerate(system) if _is_text(p))
    rest = BILLING_HEADER.sub("", system[i]["text"], count=1)
    # Claude Code sends the line as a block of its own: the block goes with it.
    prompt.set_system([*system[:i], *([{**system[i], "text": rest}] if rest else []), *system[i + 1:]])


OPERATIONS: dict[str, Callable[[_Prompt, RuleEntry], None]] = {
    "system_set": _system_set,
    "system_prepend": _system_edit(first=True),
    "system_append": _system_edit(first=False),
    "system_replace": _system_replace,
    "user_prepend": _user_edit(first=True),
    "user_append": _user_edit(first=False),
    "user_template": _user_template,
    "inject_once": _inject_once,
    # Literal replacement text: a backslash in the rule's text is not a group reference.
    "replace": _pattern(lambda rule: rule.text.replace("\\", "\\\\")),
    "remove": _pattern(lambda rule: ""),
    "strip_system": lambda prompt, rule: prompt.drop_system(frozenset({"system", "developer"}),
                                                            top_level=prompt.view.system_key),
    # Codex's own prompt: Responses `instructions` and developer turns (a system turn stays).
    "strip_instructions": lambda prompt, rule: prompt.drop_system(frozenset({"developer"}), top_level="instructions"),
    "strip_billing_header": _strip_billing_header,
}
