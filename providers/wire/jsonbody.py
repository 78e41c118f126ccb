"""Reading a client's JSON body strictly: standard JSON only, bounded nesting."""
import json


class NotJson(ValueError):
    pass


def _refuse_constant(name: str):
    raise NotJson(f"The request body is not valid JSON ({name} is not a JSON value).")


def load_body(raw: bytes) -> object:
    """The parsed body; NotJson for anything but standard JSON (NaN and Infinity included)
    and for nesting so deep that the parser would run out of stack."""
    try:
        return json.loads(raw, parse_constant=_refuse_constant)
    except NotJson:
        raise
    except RecursionError:
        raise NotJson("The request body is nested too deeply.") from None
    except (ValueError, UnicodeDecodeError):
        raise NotJson("The request body is not valid JSON.") from None
