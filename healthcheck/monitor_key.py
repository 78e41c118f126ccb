"""The health monitor's own virtual key: created once, never shown, never limited."""
from keys.models import VirtualKey

MONITORING_KEY_NAME = "health-monitor"


def create_monitoring_key() -> VirtualKey:
    """A key for every model, with body logging off and no limits.

    Its secret is thrown away: probes run inside the gateway as this key and never
    present it, so nobody can use it from outside.
    """
    existing = VirtualKey.objects.filter(is_monitoring=True).first()
    if existing is not None:
        return existing
    name, n = MONITORING_KEY_NAME, 1
    while VirtualKey.objects.filter(name=name).exists():  # an operator's key took the name
        n += 1
        name = f"{MONITORING_KEY_NAME}-{n}"
    key = VirtualKey(name=name, is_monitoring=True, all_models=True, log_bodies=False, rpm=None, tpm=None,
                     budget_usd=None, notes="Used by the health monitor; managed by the gateway.")
    key.set_key()
    key.save()
    return key
