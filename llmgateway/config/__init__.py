"""Configuration as code: load, validate, apply and export the gateway's YAML config file.

The file and the admin are two views of the same models. `load_config` turns YAML text
into a normalized dict (or raises ConfigError listing every problem with its place),
`apply_config` makes the database match it, `export_config`/`export_yaml` go the other
way. docs/configuration.md describes the schema.

Modules: `schema` (checker combinators and record definitions), `env` (${ENV}
substitution), `load` (YAML to normalized dict), `references` (cross-checks),
`apply` (database writes) and `export` (database to YAML).
"""
from .apply import ApplySummary, apply_config
from .env import referenced_variables, substitute_env
from .export import export_config, export_yaml
from .load import load_config
from .references import check_references
from .schema import VERSION, ConfigError

__all__ = [
    "VERSION",
    "ApplySummary",
    "ConfigError",
    "apply_config",
    "check_references",
    "export_config",
    "export_yaml",
    "load_config",
    "referenced_variables",
    "substitute_env",
]
