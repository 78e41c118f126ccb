"""/status (page and its htmx fragment, from one view), a page per target, and /public/health/*."""
from functools import wraps

from django.http import Http404, HttpResponse, JsonResponse
from django.shortcuts import render
from django.template.loader import render_to_string
from django.utils.safestring import mark_safe
from django.utils import timezone, translation
from django.utils.cache import patch_cache_control, patch_vary_headers
from django.utils.translation import gettext as _

from . import status
from .conf import setting
from .models import MonitoringSettings
from .ratelimit import client_ip, hit


def public(kind: str):
    """Off means 404; then the per-IP rate limit; answers are cacheable for a short while."""
    def decorate(view):
        @wraps(view)
        def wrapper(request, *args, **kwargs):
            if not MonitoringSettings.objects.filter(pk=1, enabled=True).exists():
                raise Http404("Monitoring is off.")
            ip = client_ip(request.META.get("REMOTE_ADDR"), request.META.get("HTTP_X_FORWARDED_FOR"),
                           setting("HEALTH_TRUSTED_PROXIES"))
            wait = hit(ip)
            if wait is not None:
                response = _too_many(kind, wait)
            else:
                with translation.override(_language(request)):
                    response = view(request, *args, **kwargs)
            if response.status_code == 200:
                patch_cache_control(response, public=True, max_age=setting("HEALTH_PUBLIC_MAX_AGE_S"))
            else:
                patch_cache_control(response, no_store=True)
            return response
        return wrapper
    return decorate


def _too_many(kind: str, wait: int) -> HttpResponse:
    message = f"Too many requests: at most {setting('HEALTH_PUBLIC_RPM')} a minute. Retry in {wait} s."
    if kind == "api":
        response = JsonResponse({"error": {"message": message, "code": "rate_limited"}}, status=429)
    else:
        response = HttpResponse(message, status=429, content_type="text/plain; charset=utf-8")
    response["Retry-After"] = str(wait)
    return response


def _language(request) -> str:
    # LocaleMiddleware may not be on: the page picks its language itself (?lang= wins).
    wanted = request.GET.get("lang")
    if wanted and translation.check_for_language(wanted):
        return wanted
    return translation.get_language_from_request(request)


@public("page")
def status_page(request):
    """The whole page, or only its cards when htmx asks (the auto-refresh)."""
    lang = request.GET.get("lang", "")
    overall, cards_html = status.cached(f"cards:{translation.get_language()}:{lang}", lambda: _cards(request, lang))
    context = {"cards_html": cards_html, "overall": overall, "lang": lang,
               "refresh_s": setting("HEALTH_STATUS_REFRESH_S"), "generated_at": timezone.now()}
    template = "healthcheck/_status_cards.html" if request.headers.get("HX-Request") else "healthcheck/status.html"
    response = render(request, template, context)
    patch_vary_headers(response, ["HX-Request", "Accept-Language"])
    return response


def _cards(request, lang: str) -> tuple[str, str]:
    """(overall state, the cards' HTML): what status_page caches."""
    cards = status.cards()
    html = render_to_string("healthcheck/_status_card_list.html", {"cards": cards, "lang": lang}, request)
    return status.overall_state([c.record for c in cards]), mark_safe(html)


@public("page")
def target_page(request, target_id: int):
    try:
        target = status.find_target(target_id)
    except LookupError:
        raise Http404(_("No such health target.")) from None
    context = {"record": status.target_record(target), "incidents": status.incidents(target),
               "runs": status.runs_page(target, "24h", 1, status.MAX_PAGE_SIZE)["runs"],
               "lang": request.GET.get("lang", "")}
    response = render(request, "healthcheck/target.html", context)
    patch_vary_headers(response, ["Accept-Language"])
    return response


def _api(build):
    """The JSON answer of `build(request)`; a bad query is a 400, an unknown target a 404."""
    @public("api")
    @wraps(build)
    def view(request):
        try:
            return JsonResponse(build(request))
        except status.BadQuery as err:
            return JsonResponse({"error": {"message": str(err), "code": "invalid_query"}}, status=400)
        except LookupError:
            return JsonResponse({"error": {"message": "No such health target.", "code": "not_found"}}, status=404)
    return view


@_api
def api_summary(request):
    return status.summary()


@_api
def api_targets(request):
    return {"targets": [status.target_record(t) for t in status.public_targets()]}


@_api
def api_detail(request):
    return status.detail(status.find_target(request.GET.get("target_id")))


@_api
def api_runs(request):
    target = status.find_target(request.GET.get("target_id"))
    window = status.parse_window(request.GET.get("window"))
    page, page_size = status.parse_page(request.GET.get("page"), request.GET.get("page_size"))
    return status.runs_page(target, window, page, page_size)
