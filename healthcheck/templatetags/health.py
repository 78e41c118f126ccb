"""Small formatting filters of the status pages."""
from django import template
from django.utils.safestring import mark_safe
from django.utils.translation import gettext_lazy as _

from healthcheck import rollups

register = template.Library()

STATE_LABELS = {
    "healthy": _("Operational"),
    "degraded": _("Degraded"),
    "down": _("Down"),
    "unknown": _("No data"),
}
OUTCOME_LABELS = {"healthy": _("OK"), "degraded": _("OK after retry"), "down": _("Failed")}
ERROR_LABELS = {
    "timeout": _("Timeout"),
    "connection_refused": _("Connection refused"),
    "dns_error": _("DNS error"),
    "not_found": _("Not found"),
    "auth": _("Authentication"),
    "rate_limited": _("Rate limited"),
    "upstream_5xx": _("Upstream error (5xx)"),
    "bad_response": _("Bad response"),
    "exception": _("Probe error"),
}


@register.filter
def state_label(state: str) -> str:
    return STATE_LABELS.get(state, state)


@register.simple_tag
def state_labels() -> dict:
    """Every state's label in the current language, looked up once for a page of cards."""
    return {state: str(label) for state, label in STATE_LABELS.items()}


@register.filter
def get(mapping: dict, key):
    return mapping.get(key, key)


@register.filter
def outcome_label(outcome: str) -> str:
    return OUTCOME_LABELS.get(outcome, outcome)


@register.filter
def error_label(kind: str) -> str:
    return ERROR_LABELS.get(kind, kind) if kind else ""


@register.filter
def pct(value) -> str:
    return "—" if value is None else f"{value:.2f}%".replace(".00%", "%")


@register.filter
def ms(value) -> str:
    if value is None:
        return "—"
    return f"{value / 1000:.1f} s" if value >= 1000 else f"{value:.0f} ms"


@register.filter
def bar_state(availability) -> str:
    """The colour class of a strip bar."""
    return rollups.bar_state(availability)


@register.filter
def when(iso: str | None) -> str:
    """An API timestamp ("2026-12-01T14:10:50.140823Z") as people read it, to the second."""
    return f"{iso[:10]} {iso[11:19]}" if iso else ""


@register.filter
def duration(seconds: int) -> str:
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


@register.simple_tag
def strip_bars(strip: rollups.Strip):
    """The strip in one go, one span per run of same-coloured bars growing by its number of
    bars: a page of 200 cards of 288 bars would otherwise be 57,600 elements. Every value is
    ours (a class name, a time, a percentage, a count), so plain formatting is safe."""
    return mark_safe("".join(
        f'<span class="{s["state"]}" style="flex-grow:{s["bars"]}" '
        f'title="{s["label"]} UTC · {pct(s["availability"])}"></span>'
        for s in strip.segments))
