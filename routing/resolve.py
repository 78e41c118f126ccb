"""Model name to route, and route to the ordered upstream targets worth trying."""
import itertools
import random

from keys.auth import KeyEntry, check_route_allowed
from llmgateway.errors import ModelNotFound

from .snapshot import RouteEntry, Snapshot, TargetEntry

_round_robin = {}  # route id -> itertools.count, per process


def find_route(snapshot: Snapshot, model: str, key: KeyEntry) -> RouteEntry:
    route = snapshot.route(model)
    if route is None:
        raise ModelNotFound(f"The model '{model}' does not exist.", param="model")
    check_route_allowed(key, route.id, model)
    return route


def order_targets(route: RouteEntry, rng=random, latency_ms=None) -> list[TargetEntry]:
    """The route's targets in the order to try them, by its strategy. least_latency uses
    `latency_ms` (target id -> moving average); a target without a sample yet goes first,
    so that every target gets measured."""
    targets = list(route.targets)
    if len(targets) < 2:
        return targets
    if route.strategy == "least_latency" and latency_ms:
        shuffled = _weighted_order(targets, rng)  # ties broken by weight
        return sorted(shuffled, key=lambda t: latency_ms.get(t.id, 0.0))
    if route.strategy == "weighted":
        return _weighted_order(targets, rng)
    if route.strategy == "round_robin":
        start = next(_round_robin.setdefault(route.id, itertools.count())) % len(targets)
        return targets[start:] + targets[:start]
    # priority, and least_latency until any latency is known: lower priority first,
    # weighted among equals.
    ordered = []
    for _, group in itertools.groupby(sorted(targets, key=lambda t: t.priority), key=lambda t: t.priority):
        ordered.extend(_weighted_order(list(group), rng))
    return ordered


def _weighted_order(targets: list[TargetEntry], rng) -> list[TargetEntry]:
    """A weighted random permutation (Efraimidis–Spirakis): heavier targets tend to go first."""
    if len(targets) < 2:
        return targets
    return sorted(targets, key=lambda t: rng.random() ** (1.0 / max(t.weight, 1e-9)) if t.weight else 0.0,
                  reverse=True)
