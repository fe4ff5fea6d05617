"""Who may see and change what: each helper returns the object or raises 404 (403 for read-only roles).

Every page and endpoint that takes an id goes through one of these, so another team's object is
simply not found. `write=True` additionally requires a role that may change things (owner, member).
"""
from django.core.exceptions import PermissionDenied
from django.http import Http404
from django.shortcuts import get_object_or_404

from portal.accounts.models import Membership, Team
from portal.sweeps.models import Plan, Run, Target


def teams_for_user(user, *, write: bool = False):
    """The user's teams (only those where the user may create things when `write`)."""
    if not user.is_authenticated:
        return Team.objects.none()
    # One condition on one membership row: the user's own, with a role that may write when asked.
    memberships = {"memberships__user": user}
    if write:
        memberships["memberships__role__in"] = [Membership.Role.OWNER, Membership.Role.MEMBER]
    return Team.objects.filter(**memberships).distinct()


def can_write(user, team: Team) -> bool:
    """True when the user is an owner or member of the team (may change its objects)."""
    return Membership.objects.filter(team=team, user=user,
                                     role__in=[Membership.Role.OWNER, Membership.Role.MEMBER]).exists()


def check_can_write(user, team: Team) -> None:
    """Raise PermissionDenied unless the user is an owner or member of the team."""
    membership = Membership.objects.filter(team=team, user=user).first()
    if membership is None:
        raise Http404("No such object.")
    if not membership.can_write:
        raise PermissionDenied("Your role in this team is read-only.")


def _get_owned(model, user, pk, write: bool):
    obj = get_object_or_404(model.objects.for_user(user).distinct(), pk=pk)
    if write:
        check_can_write(user, obj.team)
    return obj


def get_target_for_user(user, pk, *, write: bool = False) -> Target:
    """The target with this id if it belongs to one of the user's teams, else 404."""
    return _get_owned(Target, user, pk, write)


def get_plan_for_user(user, pk, *, write: bool = False) -> Plan:
    """The plan with this id if it belongs to one of the user's teams, else 404."""
    return _get_owned(Plan, user, pk, write)


def get_run_for_user(user, pk, *, write: bool = False) -> Run:
    """The run with this id if it belongs to one of the user's teams, else 404."""
    return _get_owned(Run, user, pk, write)
