"""The route snapshot is read in separate statements while admins and `gateway_config apply`
write: whatever commits between them, a route is never served without the targets it was
saved with (routing/snapshot.py build_snapshot)."""
import pytest
from django.db import connection

from routing.snapshot import build_snapshot

from .factories import make_provider, make_route

pytestmark = pytest.mark.django_db


def saved_between_statements(after_table: str, save):
    """A query wrapper that runs `save` once, right after the first SELECT on `after_table`."""
    done = []

    def wrapper(execute, sql, params, many, context):
        result = execute(sql, params, many, context)
        if not done and sql.lstrip().upper().startswith("SELECT") and f'FROM "{after_table}"' in sql:
            done.append(True)
            save()
        return result
    return wrapper


@pytest.mark.parametrize("table", ["routing_route", "providers_provider", "routing_routetarget"])
def test_a_route_saved_with_its_targets_during_a_build_comes_whole_or_not_at_all(table):
    existing = make_provider("http://127.0.0.1:9/v1")
    make_route(existing)  # something to read already
    saved = []

    def save():  # a new provider, then a route over it and the existing one (a failover pair)
        saved.append(make_route(existing, make_provider("http://127.0.0.1:9/v1")).name)

    with connection.execute_wrapper(saved_between_statements(table, save)):
        snapshot = build_snapshot("test")

    assert saved, f"no SELECT on {table}"
    route = snapshot.routes_by_name.get(saved[0])
    assert route is None or len(route.targets) == 2
