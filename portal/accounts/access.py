"""Who may see and change what, for pages and API alike.

Every page and endpoint that takes an id goes through `get_owned_or_404`, so another team's object is
simply not found (404); `write=True` additionally requires a role that may change things (owner,
member), else 403. An API request sees its user's teams, narrowed to its token's teams when the token
names any, so a token never sees more than its user.

The rules work on any team-owned model (one with a `team` foreign key), so this module needs to know
nothing of what the teams own.
"""
from django.core.exceptions import PermissionDenied
from django.http import Http404
from django.shortcuts import get_object_or_404
from rest_framework import exceptions as api_exceptions

from portal.accounts.models import ApiToken, Membership, Team

READ_ONLY = "Your role in this team is read-only."


def teams_for_user(user, *, write: bool = False):
    """The user's teams (only those where the user may create things when `write`)."""
    return Team.objects.for_user(user, write=write)


def can_write(user, team: Team) -> bool:
    """True when the user's role in the team may change its objects (owner, member)."""
    membership = Membership.objects.filter(team=team, user=user).first()
    return membership is not None and membership.can_write


def check_can_write(user, team: Team) -> None:
    """404 unless the user belongs to the team; PermissionDenied unless the role may write."""
    membership = Membership.objects.filter(team=team, user=user).first()
    if membership is None:
        raise Http404("No such object.")
    if not membership.can_write:
        raise PermissionDenied(READ_ONLY)


def get_owned_or_404(model, user, pk, *, write: bool = False):
    """The `model` row with this id if it belongs to one of the user's teams, else 404
    (403 when `write` and the user's role there is read-only)."""
    obj = get_object_or_404(model.objects.filter(team__in=teams_for_user(user)), pk=pk)
    if write:
        check_can_write(user, obj.team)
    return obj


def api_teams(request, *, write: bool = False):
    """Teams visible to an API request (only those it may change things in when `write`)."""
    teams = teams_for_user(request.user, write=write)
    if isinstance(request.auth, ApiToken):
        chosen = list(request.auth.teams.values_list("pk", flat=True))
        if chosen:
            teams = teams.filter(pk__in=chosen)
    return teams


def visible_to_request(model, request):
    """The rows of a team-owned model that an API request may see."""
    return model.objects.filter(team__in=api_teams(request))


def check_write(request, team: Team) -> None:
    """404 when the team is not visible to the request at all, 403 when its role there is read-only."""
    if not api_teams(request).filter(pk=team.pk).exists():
        raise Http404("No such object.")
    if not api_teams(request, write=True).filter(pk=team.pk).exists():
        # DRF's own PermissionDenied keeps the message in the API's JSON body.
        raise api_exceptions.PermissionDenied(READ_ONLY)
