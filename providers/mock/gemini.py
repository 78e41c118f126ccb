"""Gemini as the mock speaks it (placeholder until written)."""

from .core import Dialect

GEMINI = Dialect()


def add_routes(app):
    pass
