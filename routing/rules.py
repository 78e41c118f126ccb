"""Prompt rules: pure rewrites of a chat request's messages, applied in order."""
from .snapshot import RuleEntry


def apply_rules(body: dict, rules: tuple[RuleEntry, ...]) -> dict:
    """Return `body` with `rules` applied to its `messages` (the input is not modified)."""
    messages = body.get("messages")
    if not rules or not isinstance(messages, list):
        return body
    messages = [dict(m) if isinstance(m, dict) else m for m in messages]
    for rule in rules:
        messages = _APPLY[rule.operation](messages, rule)
    return {**body, "messages": messages}


def _map_text(message: dict, fn) -> dict:
    """Apply fn to a message's text, whether a string or a list of text parts."""
    content = message.get("content")
    if isinstance(content, str):
        return {**message, "content": fn(content)}
    if isinstance(content, list):
        parts = [
            {**p, "text": fn(p["text"])} if isinstance(p, dict) and isinstance(p.get("text"), str) else p
            for p in content
        ]
        return {**message, "content": parts}
    return message


def _system_index(messages) -> int | None:
    for i, m in enumerate(messages):
        if isinstance(m, dict) and m.get("role") in ("system", "developer"):
            return i
    return None


def _last_user_index(messages) -> int | None:
    for i in range(len(messages) - 1, -1, -1):
        if isinstance(messages[i], dict) and messages[i].get("role") == "user":
            return i
    return None


def _system(messages, rule, combine):
    i = _system_index(messages)
    if i is None:
        return [{"role": "system", "content": rule.text}, *messages]
    messages[i] = _map_text(messages[i], lambda text: combine(text, rule.text))
    return messages


def _user(messages, rule, combine):
    i = _last_user_index(messages)
    if i is not None:
        messages[i] = _map_text(messages[i], lambda text: combine(text, rule.text))
    return messages


def _replace(messages, rule, replacement):
    if rule.pattern is None:
        return messages
    return [_map_text(m, lambda text: rule.pattern.sub(replacement, text)) if isinstance(m, dict) else m
            for m in messages]


_APPLY = {
    "system_prepend": lambda ms, r: _system(ms, r, lambda old, new: f"{new}\n\n{old}"),
    "system_append": lambda ms, r: _system(ms, r, lambda old, new: f"{old}\n\n{new}"),
    "system_replace": lambda ms, r: _system(ms, r, lambda old, new: new),
    "user_prepend": lambda ms, r: _user(ms, r, lambda old, new: f"{new}\n\n{old}"),
    "user_append": lambda ms, r: _user(ms, r, lambda old, new: f"{old}\n\n{new}"),
    "replace": lambda ms, r: _replace(ms, r, r.text.replace("\\", "\\\\")),
    "remove": lambda ms, r: _replace(ms, r, ""),
}
