"""Cross-checks: references between items, and against the database for sections the file leaves out."""
from django.core.exceptions import ValidationError

from healthcheck.models import HealthTarget
from keys.models import VirtualKey
from providers.models import Provider
from routing.models import Route, RouteTarget

from .schema import _BAD, _fail
from .validators import prompt_rule_errors, validate_regex


def check_references(data: dict, errors: list[str]) -> None:
    """Append an error for every broken reference or collision in normalized `data`."""
    providers = _known_names(data, "providers", Provider.objects.all())
    routes = _known_names(data, "models", Route.objects.all())
    for name, spec in _items(data.get("providers")):
        _check_provider(name, spec, errors)
    for name, spec in _items(data.get("models")):
        _check_route(name, spec, providers, errors)
    _check_aliases(data.get("models"), errors)
    _check_virtual_keys(data.get("virtual_keys"), routes, errors)
    _check_monitoring(data.get("monitoring"), routes, errors, data)
    _check_dependents_outside_file(data, errors)


def _known_names(data, section, queryset) -> set | None:
    """What a reference may name: the file's section if present (it replaces the table), else the database."""
    if section not in data:
        return set(queryset.values_list("name", flat=True))
    return set(data[section]) if isinstance(data[section], dict) else None


def _items(section):
    """(name, spec) pairs of a named section, skipping anything that already failed."""
    if not isinstance(section, dict):
        return []
    return [(name, spec) for name, spec in section.items() if isinstance(spec, dict)]


def _records(value):
    return [(i, item) for i, item in enumerate(value) if isinstance(item, dict)] if isinstance(value, list) else []


def _check_provider(name, spec, errors):
    seen = set()
    for i, key in _records(spec["keys"]):
        label = key["label"]
        if isinstance(label, str) and label and label in seen:
            _fail(errors, f"providers.{name}.keys[{i}].label", f"duplicate label {label!r}")
        seen.add(label)


def _check_route(name, spec, providers, errors):
    path = f"models.{name}"
    seen = set()
    for i, target in _records(spec["targets"]):
        provider, model = target["provider"], target["model"]
        if providers is not None and provider is not _BAD and provider not in providers:
            _fail(errors, f"{path}.targets[{i}].provider", f"unknown provider {provider!r}")
        if _BAD in (provider, model):
            continue
        if (provider, model) in seen:
            _fail(errors, f"{path}.targets[{i}]", f"duplicate target {provider}/{model}")
        seen.add((provider, model))
    for i, rule in _records(spec["prompt_rules"]):
        _check_rule(rule, f"{path}.prompt_rules[{i}]", errors)


def _check_rule(rule, path, errors):
    pattern, text = rule["pattern"], rule["text"]
    if _BAD not in (rule["operation"], pattern, text):
        for field, message in prompt_rule_errors(rule["operation"], pattern, text).items():
            _fail(errors, f"{path}.{field}", f"{message} ({rule['operation']})")
    if isinstance(pattern, str) and pattern:
        try:
            validate_regex(pattern)
        except ValidationError as exc:
            _fail(errors, f"{path}.pattern", "; ".join(exc.messages))


def _check_aliases(models, errors):
    owners = {name: f"the name of model {name!r}" for name, _ in _items(models)}
    for name, spec in _items(models):
        aliases = spec["aliases"] if isinstance(spec["aliases"], list) else []
        for i, alias in enumerate(aliases):
            path = f"models.{name}.aliases[{i}]"
            if alias is _BAD:
                continue
            if alias == name:
                _fail(errors, path, "an alias must differ from the model's name")
            elif alias in owners:
                _fail(errors, path, f"{alias!r} is already {owners[alias]}")
            else:
                owners[alias] = f"an alias of model {name!r}"


def _check_virtual_keys(keys, routes, errors):
    reserved = set(VirtualKey.objects.filter(is_monitoring=True).values_list("name", flat=True))
    secrets: dict[str, str] = {}
    for name, spec in _items(keys):
        path = f"virtual_keys.{name}"
        if name in reserved:
            _fail(errors, path, "this name belongs to the health monitor's key")
        models = spec["models"]  # None: every model; [] : none (a key whose models were all deleted)
        for i, model in enumerate(models if isinstance(models, list) else []):
            if routes is not None and model is not _BAD and model not in routes:
                _fail(errors, f"{path}.models[{i}]", f"unknown model {model!r}")
        if isinstance(spec["key"], str):
            if spec["key"] in secrets:
                _fail(errors, f"{path}.key", f"same key as virtual key {secrets[spec['key']]!r}")
            secrets.setdefault(spec["key"], name)


def _check_probed_upstream(data, target, path, errors):
    """`provider` and `upstream_model` go together and must name one of the model's targets."""
    provider, upstream = target["provider"], target["upstream_model"]
    if provider is _BAD or upstream is _BAD or (not provider and not upstream):
        return
    if not provider or not upstream:
        _fail(errors, f"{path}.provider", "set both provider and upstream_model, or neither")
        return
    models = data.get("models")
    if isinstance(models, dict):
        spec = models.get(target["model"])
        targets = spec.get("targets") if isinstance(spec, dict) else None
        known = {(t.get("provider"), t.get("model")) for t in targets or () if isinstance(t, dict)}
    else:
        known = set(RouteTarget.objects.filter(route__name=target["model"])
                    .values_list("provider__name", "upstream_model"))
    if (provider, upstream) not in known:
        _fail(errors, f"{path}.provider", f"model {target['model']!r} has no target {provider}:{upstream}")


def _check_monitoring(monitoring, routes, errors, data=None):
    if not isinstance(monitoring, dict):
        return
    seen = set()
    for i, target in _records(monitoring["targets"]):
        path = f"monitoring.targets[{i}]"
        if isinstance(target["name"], str) and target["name"] in seen:
            _fail(errors, f"{path}.name", f"duplicate name {target['name']!r}")
        seen.add(target["name"])
        model = target["model"]
        if routes is not None and model is not _BAD and model not in routes:
            _fail(errors, f"{path}.model", f"unknown model {model!r}")
        elif model is not _BAD:
            _check_probed_upstream(data or {}, target, path, errors)


def _check_dependents_outside_file(data, errors):
    """A deletion must not silently change a section the file leaves alone."""
    if isinstance(data.get("providers"), dict) and "models" not in data:
        targets = RouteTarget.objects.exclude(provider__name__in=list(data["providers"]))
        _report_dependents(errors, "provider", targets.values_list("provider__name", "route__name"),
                           "model {} still targets it", "models")
    if not isinstance(data.get("models"), dict):
        return
    kept = list(data["models"])
    if "virtual_keys" not in data:
        allowed = VirtualKey.allowed_routes.through.objects.filter(virtualkey__is_monitoring=False)
        allowed = allowed.exclude(route__name__in=kept).values_list("route__name", "virtualkey__name")
        _report_dependents(errors, "model", allowed, "virtual key {} still allows it", "virtual_keys")
    if "monitoring" not in data:
        probes = HealthTarget.objects.exclude(route__name__in=kept).values_list("route__name", "name")
        _report_dependents(errors, "model", probes, "health target {} still probes it", "monitoring")


def _report_dependents(errors, kind, pairs, dependent, section):
    for name, user in sorted(set(pairs)):
        _fail(errors, f"{kind}s", f"{kind} {name!r} is not in the file but {dependent.format(repr(user))}"
                                 f" (add a {section} section or keep the {kind})")
