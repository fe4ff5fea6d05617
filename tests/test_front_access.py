"""The permission helpers every view and the API use."""
import pytest
from django.contrib.auth.models import AnonymousUser
from django.http import Http404

from portal.accounts.models import Membership
from portal.front.access import get_target_for_user, teams_for_user


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
        get_target_for_user(outsider, target.pk)
