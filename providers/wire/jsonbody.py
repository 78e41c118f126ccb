"""Reading a client's JSON body strictly: standard JSON only, bounded nesting."""
import json


class NotJson(ValueError):
    pass


def _refuse_constant(name: str):
    raise NotJson(f"The request body is not valid JSON ({name} is not a JSON value).")


# One decoder for every request: json.loads with options would build one per call.
_DECODER = json.JSONDecoder(parse_constant=_refuse_constant)


def load_body(raw: bytes) -> object:
    """The parsed body; NotJson for anything but standard UTF-8 JSON (NaN and Infinity
    included) and for nesting so deep that the parser would run out of stack."""
    try:
        return _DECODER.decode(raw.decode("utf-8"))
    except NotJson:
        raise
    except RecursionError:
        raise NotJson("The request body is nested too deeply.") from None
    except (ValueError, UnicodeDecodeError):
        raise NotJson("The request body is not valid JSON.") from None
