"""The access rules every page and the API use (portal/accounts/access.py)."""
import pytest
from django.contrib.auth.models import AnonymousUser
from django.core.exceptions import PermissionDenied
from django.http import Http404
from django.urls import reverse

from portal.accounts.access import get_owned_or_404, teams_for_user
from portal.accounts.models import Membership
from portal.sweeps.models import Target


def test_anonymous_user_has_no_teams():
    assert list(teams_for_user(AnonymousUser())) == []
    assert list(teams_for_user(AnonymousUser(), write=True)) == []


def test_viewer_sees_the_team_but_may_not_write_to_it(team, member):
    Membership.objects.filter(user=member).update(role=Membership.Role.VIEWER)
    assert list(teams_for_user(member)) == [team]
    assert list(teams_for_user(member, write=True)) == []


def test_write_rule_looks_at_the_users_own_membership(team, owner, member):
    # Another member being an owner must not lend write access to a viewer of the same team.
    Membership.objects.filter(user=member).update(role=Membership.Role.VIEWER)
    assert list(teams_for_user(owner, write=True)) == [team]
    assert list(teams_for_user(member, write=True)) == []


def test_outsider_gets_404_for_another_teams_target(target, outsider):
    with pytest.raises(Http404):
        get_owned_or_404(Target, outsider, target.pk)


def test_viewer_reads_but_may_not_change_a_target(target, member):
    Membership.objects.filter(user=member).update(role=Membership.Role.VIEWER)
    assert get_owned_or_404(Target, member, target.pk) == target
    with pytest.raises(PermissionDenied, match="read-only"):
        get_owned_or_404(Target, member, target.pk, write=True)


def test_one_write_rule_for_memberships_and_team_lists(team, owner, member):
    for role in Membership.Role.values:
        Membership.objects.filter(user=member).update(role=role)
        membership = Membership.objects.get(user=member)
        assert membership.can_write == (team in teams_for_user(member, write=True))


# The permission matrix: each role against each guarded action, queue grants and sign-in throttling included.
ROLES = ("owner", "member", "viewer", "outsider")
MATRIX = {
    # action: expected status per role (owner, member, viewer, outsider)
    "target on the team's granted queue": (201, 201, 400, 400),
    "target on the open queue": (201, 201, 400, 201),
    "run on the granted queue": (201, 201, 403, 400),
}


@pytest.fixture
def people(team, owner, member, outsider):
    from django.contrib.auth.models import User

    viewer = User.objects.create_user("vera", password="password")
    Membership.objects.create(team=team, user=viewer, role=Membership.Role.VIEWER)
    return {"owner": owner, "member": member, "viewer": viewer, "outsider": outsider}


def _attempt(action, user, team, plan):
    from portal.sweeps.models import QueueGrant, Target
    from tests.api_support import token_client

    QueueGrant.objects.get_or_create(team=team, queue="gpu-host-1")
    api = token_client(user)
    body = {"name": "t", "base_urls": ["http://10.0.0.5:30000/v1"], "model_name": "m"}
    if action == "target on the team's granted queue":
        return api.post("/api/v1/targets/", {**body, "queue": "gpu-host-1"})
    if action == "target on the open queue":
        return api.post("/api/v1/targets/", {**body, "queue": "sweeps"})
    target = Target.objects.create(team=team, name="gpu", base_urls=body["base_urls"], model_name="m",
                                   queue="gpu-host-1")
    return api.post("/api/v1/runs/", {"target": target.pk, "plan": plan.pk})


@pytest.mark.parametrize("action", MATRIX)
@pytest.mark.parametrize("role", ROLES)
def test_permission_matrix(people, team, plan, role, action):
    from django.core.cache import cache

    cache.clear()  # API throttle history
    response = _attempt(action, people[role], team, plan)
    assert response.status_code == MATRIX[action][ROLES.index(role)], response.content
    if role == "outsider" and action == "target on the team's granted queue":
        assert "not granted to Charlie's team" in response.json()["queue"][0]


@pytest.mark.parametrize("role", ROLES)
def test_permission_matrix_sign_in_throttle(client, people, role):
    """40 wrong passwords, then the right one is refused for the lockout period, whatever the role;
    the user's API token keeps working (it is not a password)."""
    from django.core.cache import cache

    from tests.api_support import token_client

    cache.clear()
    user = people[role]
    login = reverse("login")
    for _ in range(40):
        client.post(login, {"username": user.username, "password": "wrong"})
    response = client.post(login, {"username": user.username, "password": "password"})
    assert response.status_code == 429 and "Sign-in paused" in response.content.decode()
    assert "_auth_user_id" not in client.session
    assert token_client(user).get("/api/v1/teams/").status_code == 200
