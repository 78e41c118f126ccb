"""${ENV_VAR} substitution in config values, its escape, and the variables a config refers to."""
import re

from .schema import _BAD, _at, _fail, _index

# `$${` is a literal `${`; `${NAME}` is a variable; any other `${` is a mistake.
_REFERENCE = re.compile(r"\$\$\{|\$\{([^}]*)(\}?)")
_VARIABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def substitute_env(node, environ, errors: list[str], path: str = ""):
    """Return `node` with `${NAME}` replaced in every string value (not in mapping keys)."""
    if isinstance(node, dict):
        return {key: substitute_env(value, environ, errors, _at(path, key)) for key, value in node.items()}
    if isinstance(node, list):
        return [substitute_env(value, environ, errors, _index(path, i)) for i, value in enumerate(node)]
    if isinstance(node, str):
        failures = len(errors)
        result = _REFERENCE.sub(lambda match: _resolve(match, environ, errors, path), node)
        # Reported once here; the schema checks skip _BAD instead of adding "must not be empty".
        return _BAD if len(errors) > failures else result
    return node


def _resolve(match, environ, errors, path) -> str:
    if match.group(0) == "$${":
        return "${"
    name, closed = match.group(1), match.group(2)
    if not closed or not _VARIABLE_NAME.match(name):
        shown = (name[:30] + "…") if len(name) > 30 else name
        _fail(errors, path, f"malformed variable reference '${{{shown}{closed}' (write $${{ for a literal ${{)")
    elif name not in environ:
        _fail(errors, path, f"environment variable {name} is not set")
    else:
        return environ[name]
    return ""


def _escape(text: str) -> str:
    """The inverse of substitution for text that must come back unchanged."""
    return text.replace("${", "$${")


def referenced_variables(node) -> list[str]:
    """The `${NAME}` variables used in a config dict's string values, sorted."""
    found: set[str] = set()
    if isinstance(node, dict):
        node = list(node.values())
    if isinstance(node, list):
        for value in node:
            found.update(referenced_variables(value))
    elif isinstance(node, str):
        found.update(m.group(1) for m in _REFERENCE.finditer(node) if m.group(0) != "$${")
    return sorted(found)
