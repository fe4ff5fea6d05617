"""API tokens: hashing, expiry, revocation, team limits, the settings page and the management command."""
from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone
from rest_framework.test import APIClient

from portal.accounts.models import ApiToken, hash_token
from tests.api_support import token_client

pytestmark = pytest.mark.usefixtures("fresh_throttles")


def test_anonymous_gets_401(db):
    response = APIClient().get("/api/v1/runs/")
    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Bearer")


def test_token_is_stored_hashed(owner):
    token, raw = ApiToken.issue(owner, "ci")
    assert raw.startswith("embp_")
    assert token.digest == hash_token(raw)
    assert raw not in (token.digest, token.prefix)
    assert raw.startswith(token.prefix)
    assert not ApiToken.objects.filter(digest=raw).exists()


def test_valid_token_authenticates_and_records_use(owner, target):
    client = token_client(owner)
    response = client.get("/api/v1/targets/")
    assert response.status_code == 200
    assert [t["name"] for t in response.json()["results"]] == ["sim"]
    assert ApiToken.objects.get(user=owner).last_used is not None


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ("Bearer embp_not-a-real-token", "Unknown API token."),
        ("Bearer sk-something-else", "Not an embperf API token"),
        ("Bearer", "Authorization header must be"),
    ],
)
def test_bad_tokens_get_401_with_reason(db, header, message):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=header)
    response = client.get("/api/v1/runs/")
    assert response.status_code == 401
    assert message in response.json()["detail"]


def test_revoked_token_gets_401(owner):
    client = token_client(owner)
    ApiToken.objects.get(user=owner).revoke()
    response = client.get("/api/v1/runs/")
    assert response.status_code == 401
    assert "revoked" in response.json()["detail"]


def test_expired_token_gets_401(owner):
    client = token_client(owner, expires=timezone.now() - timedelta(seconds=1))
    response = client.get("/api/v1/runs/")
    assert response.status_code == 401
    assert "expired" in response.json()["detail"]


def test_token_of_disabled_user_gets_401(owner):
    client = token_client(owner)
    owner.is_active = False
    owner.save()
    assert client.get("/api/v1/runs/").status_code == 401


def test_token_limited_to_a_team_sees_only_that_team(owner, target, other_team):
    from portal.accounts.models import Membership
    from portal.sweeps.models import Target

    Membership.objects.create(team=other_team, user=owner, role="member")
    Target.objects.create(team=other_team, name="other-sim", base_urls=["http://127.0.0.1:1/v1"], model_name="m")
    everything = token_client(owner)
    assert {t["name"] for t in everything.get("/api/v1/targets/").json()["results"]} == {"sim", "other-sim"}
    limited = token_client(owner, teams=[other_team])
    assert [t["name"] for t in limited.get("/api/v1/targets/").json()["results"]] == ["other-sim"]
    assert limited.get(f"/api/v1/targets/{target.pk}/").status_code == 404


def test_token_never_sees_a_team_its_user_left(owner, target, team):
    from portal.accounts.models import Membership

    client = token_client(owner, teams=[team])
    Membership.objects.filter(user=owner, team=team).delete()
    assert client.get(f"/api/v1/targets/{target.pk}/").status_code == 404
    assert client.get("/api/v1/targets/").json()["results"] == []


def test_token_whose_teams_are_all_deleted_sees_nothing(owner, target, team, other_team):
    from portal.accounts.models import Membership, Team
    from portal.sweeps.models import Target

    Membership.objects.create(team=other_team, user=owner, role="owner")
    Target.objects.create(team=other_team, name="other-sim", base_urls=["http://127.0.0.1:1/v1"], model_name="m")
    doomed = Team.objects.create(name="Short-lived")
    Membership.objects.create(team=doomed, user=owner, role="owner")
    alone = token_client(owner, teams=[doomed])
    two = token_client(owner, teams=[doomed, other_team])
    everything = token_client(owner)
    assert alone.get("/api/v1/targets/").json()["results"] == []
    Team.objects.filter(pk=doomed.pk).delete()  # as the admin's bulk delete does
    # Its only team gone, the token is revoked with it instead of widening to all of its user's teams.
    answer = alone.get("/api/v1/targets/")
    assert answer.status_code == 401 and "revoked" in answer.json()["detail"]
    assert alone.get(f"/api/v1/targets/{target.pk}/").status_code == 401
    # A token with a team left keeps to it; one never limited is unchanged.
    assert [t["name"] for t in two.get("/api/v1/targets/").json()["results"]] == ["other-sim"]
    assert {t["name"] for t in everything.get("/api/v1/targets/").json()["results"]} == {"sim", "other-sim"}


def test_deleting_one_team_object_revokes_its_only_tokens(owner, team, target):
    client = token_client(owner, teams=[team])
    token = ApiToken.objects.get(teams=team)
    team.delete()
    token.refresh_from_db()
    assert token.revoked is not None and client.get("/api/v1/targets/").status_code == 401


def test_session_auth_works_for_the_browser(owner, target):
    client = APIClient()
    client.force_login(owner)
    assert client.get("/api/v1/targets/").status_code == 200


def test_create_api_token_command_prints_a_working_token(owner):
    out = StringIO()
    call_command("create_api_token", "alice", "--name", "deploy", stdout=out)
    raw = out.getvalue().strip()
    assert raw.startswith("embp_") and "\n" not in raw
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    assert client.get("/api/v1/teams/").status_code == 200
    assert ApiToken.objects.get(user=owner).name == "deploy"


def test_create_api_token_command_unknown_user(db):
    with pytest.raises(CommandError, match="No user named 'nobody'"):
        call_command("create_api_token", "nobody", stdout=StringIO())


def test_settings_page_creates_shows_once_and_revokes(client, owner, team):
    client.force_login(owner)
    page = client.get("/settings/tokens/")
    assert page.status_code == 200
    assert b"Create a token" in page.content
    response = client.post("/settings/tokens/", {"name": "CI", "expires_in": "30", "teams": [team.pk]}, follow=True)
    token = ApiToken.objects.get(user=owner)
    raw = response.context["new_token"]["raw"]
    assert raw.encode() in response.content
    assert token.digest == hash_token(raw)
    assert list(token.teams.all()) == [team]
    assert token.expires is not None and token.expires > timezone.now() + timedelta(days=29)
    # Shown once: the next visit lists the prefix only.
    again = client.get("/settings/tokens/")
    assert raw.encode() not in again.content
    assert token.prefix.encode() in again.content
    client.post(f"/settings/tokens/{token.pk}/revoke/")
    token.refresh_from_db()
    assert token.revoked is not None


def test_settings_page_requires_a_name(client, owner):
    client.force_login(owner)
    response = client.post("/settings/tokens/", {"name": ""})
    assert response.status_code == 200
    assert not ApiToken.objects.exists()


def test_cannot_revoke_someone_elses_token(client, owner, outsider):
    token, _ = ApiToken.issue(outsider, "theirs")
    client.force_login(owner)
    assert client.post(f"/settings/tokens/{token.pk}/revoke/").status_code == 404
    token.refresh_from_db()
    assert token.revoked is None


def test_settings_page_needs_login(client, db):
    response = client.get("/settings/tokens/")
    assert response.status_code == 302


def test_throttling_answers_429(owner, monkeypatch):
    from django.core.cache import cache
    from rest_framework.throttling import SimpleRateThrottle

    monkeypatch.setattr(SimpleRateThrottle, "THROTTLE_RATES", {**SimpleRateThrottle.THROTTLE_RATES, "user": "3/minute"})
    cache.clear()
    try:
        client = token_client(owner)
        codes = [client.get("/api/v1/teams/").status_code for _ in range(4)]
        assert codes == [200, 200, 200, 429]
    finally:
        cache.clear()
