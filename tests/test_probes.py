"""/healthz and /readyz."""
import pytest

from llmgateway.redis import sync_client


@pytest.mark.django_db
def test_healthz_and_readyz_answer_when_all_is_well(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").status_code == 200


@pytest.mark.django_db
def test_readyz_names_redis_when_it_is_down(client, settings):
    from .conftest import free_port

    settings.REDIS_URL = f"redis://127.0.0.1:{free_port()}/0"
    sync_client.cache_clear()
    try:
        response = client.get("/readyz")
    finally:
        sync_client.cache_clear()
    assert response.status_code == 503
    assert response.json()["failing"] == {"redis": "ConnectionError"}
    assert client.get("/healthz").status_code == 200


def test_readyz_names_the_database_when_it_is_down(client, django_db_blocker):
    with django_db_blocker.unblock():
        from django.db import connection

        real = connection.settings_dict["NAME"]
        connection.close()
        connection.settings_dict["NAME"] = "/nonexistent/dir/db.sqlite3" if connection.vendor == "sqlite" else "no_such_db"
        try:
            response = client.get("/readyz")
        finally:
            connection.close()
            connection.settings_dict["NAME"] = real
    assert response.status_code == 503
    assert "database" in response.json()["failing"]
