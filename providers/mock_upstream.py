"""Mock upstream server for tests and benchmarks; the code and its fault options live in `providers.mock`."""

from providers.mock import MockUpstream, MockUpstreamThread, build_app, serve, start
from providers.mock.core import STATE, DEFAULT_MODELS, REPLY_PREFIX

__all__ = ["MockUpstream", "MockUpstreamThread", "build_app", "serve", "start", "STATE", "DEFAULT_MODELS",
           "REPLY_PREFIX"]
