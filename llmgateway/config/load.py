"""Loading a config file: strict YAML parsing, ${ENV} substitution and the top-level checks."""
import os

import yaml

from .env import substitute_env
from .references import check_references
from .schema import SECTION_CHECKERS, SECTIONS, VERSION, ConfigError, _fail, _kind, _run, _unknown_field_message


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that rejects a name given twice in one mapping instead of keeping the last."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:  # unhashable: the base class reports it
                continue
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark)
        return super().construct_mapping(node, deep)


def load_config(document: str, environ=None) -> dict:
    """Parse a YAML document, substitute `${VARS}` from `environ` (default os.environ) and validate it.

    Returns the normalized config: only the sections present in the file, every field
    filled in (defaults for omitted ones). Raises ConfigError listing every problem.
    """
    environ = os.environ if environ is None else environ
    raw = _parse_yaml(document)
    errors: list[str] = []
    raw = substitute_env(raw, environ, errors)
    data = _check_top_level(raw, errors)
    check_references(data, errors)
    if errors:
        raise ConfigError(errors)
    return data


def _parse_yaml(document: str) -> dict:
    try:
        raw = yaml.load(document, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "YAML"
        raise ConfigError([f"{where}: {getattr(exc, 'problem', None) or exc}"]) from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError([f"(top level): expected a mapping of sections, got {_kind(raw)}"])
    return raw


def _check_top_level(raw: dict, errors: list[str]) -> dict:
    data = {}
    for key in raw:
        if key != "version" and key not in SECTIONS:
            _fail(errors, str(key), _unknown_field_message(key, ("version", *SECTIONS)))
    if "version" in raw and raw["version"] != VERSION:
        _fail(errors, "version", f"unsupported version {raw['version']!r}; this gateway reads version {VERSION}")
    for section in SECTIONS:
        if section in raw:
            data[section] = _run(SECTION_CHECKERS[section], raw[section], section, errors)
    return data
