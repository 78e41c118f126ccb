"""OpenAI Responses as the mock speaks it (placeholder until written)."""


def add_routes(app):
    pass
