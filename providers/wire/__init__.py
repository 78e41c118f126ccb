"""Wire codecs, one per wire format: parsing and rendering of requests, answers, stream
events and error bodies in that format. Pure: no I/O, no Django.

To add one, see CONTRIBUTING.md ("Add a wire format").
"""
from . import openai_chat

CODECS = {
    "openai_chat": openai_chat,
}


class InvalidField(ValueError):
    """A request field the gateway reads is malformed: the client gets a 400 naming `param`."""

    def __init__(self, param: str | None, message: str):
        super().__init__(message)
        self.param = param
        self.message = message
