"""What every adapter shares: the upstream request it builds, usage, and stream errors."""
from dataclasses import dataclass


@dataclass(slots=True)
class UpstreamRequest:
    method: str
    url: str
    headers: dict[str, str]
    content: bytes | None = None


@dataclass(frozen=True, slots=True)
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0

    def __reduce__(self):  # cheaper than the dataclass default, for the request-log hand-over
        return Usage, (self.input_tokens, self.output_tokens, self.cached_tokens)


def as_int(value) -> int:
    return value if isinstance(value, int) and value >= 0 else 0
