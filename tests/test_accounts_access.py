"""The access rules every page and the API use (portal/accounts/access.py)."""
import pytest
from django.contrib.auth.models import AnonymousUser
from django.core.exceptions import PermissionDenied
from django.http import Http404

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
