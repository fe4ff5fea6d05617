"""A full disk as the web side sees it: writes answer a JSON 503 naming it, reads never fail on the
token's last-used bookkeeping write (the end-to-end test with a real full tmpfs: test_e2e_full_disk.py)."""
import errno

import pytest
from django.db import OperationalError

from portal.storage import is_storage_full
from tests.api_support import token_client

pytestmark = pytest.mark.usefixtures("fresh_throttles")

FULL = OperationalError("database or disk is full")


def test_what_counts_as_a_full_disk():
    assert is_storage_full(FULL)
    assert is_storage_full(OSError(errno.ENOSPC, "No space left on device"))
    assert is_storage_full("OperationalError: could not extend file \"base/1/2\": No space left on device")
    assert not is_storage_full(OperationalError("connection refused"))
    assert not is_storage_full(None)


def test_a_read_succeeds_when_the_last_used_write_is_refused(db, owner, target, monkeypatch):
    from portal.accounts.models import ApiToken

    api = token_client(owner)
    real = ApiToken.objects.filter

    def refusing_filter(*args, **kwargs):
        query = real(*args, **kwargs)
        query.update = lambda **fields: (_ for _ in ()).throw(FULL)
        return query

    monkeypatch.setattr(ApiToken.objects, "filter", refusing_filter)
    response = api.get(f"/api/v1/targets/{target.pk}/")
    assert response.status_code == 200, response.content


def test_a_write_refused_for_a_full_disk_is_a_json_503(db, owner, target, plan, monkeypatch):
    from portal.sweeps import services

    api = token_client(owner)

    def full(**kwargs):
        raise FULL

    monkeypatch.setattr(services, "create_run", full)
    monkeypatch.setattr("portal.api.views.services.create_run", full, raising=False)
    response = api.post("/api/v1/runs/", {"target": target.pk, "plan": plan.pk}, format="json")
    assert response.status_code == 503, response.content
    assert response["Content-Type"].startswith("application/json")
    assert "the portal's storage is full" in response.json()["detail"].lower()
