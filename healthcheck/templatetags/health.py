"""Small formatting filters of the status pages."""
from django import template
from django.utils.safestring import mark_safe
from django.utils.translation import gettext_lazy as _

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
    if availability is None:
        return "unknown"
    if availability >= 99.9:
        return "healthy"
    return "degraded" if availability >= 80 else "down"


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
def strip_bars(bars: list[dict]):
    """The strip's bars in one go: a page of 200 cards has 4,800 of them, too many to render
    through template tags (or format_html) within the page's time budget. Every value is
    ours (a class name, a time, a percentage), so plain formatting is safe."""
    return mark_safe("".join(
        f'<span class="{bar_state(bar["availability"])}" title="{bar["label"]} UTC · {pct(bar["availability"])}"></span>'
        for bar in bars))
