"""What an API request may see: its user's teams, narrowed to the token's teams when it names any.

Every API view takes its querysets from here, so another team's object is simply not found (404),
and a token never sees more than its user.
"""
from django.http import Http404
from rest_framework.exceptions import PermissionDenied

from portal.api.models import ApiToken
from portal.front.access import teams_for_user
from portal.sweeps.models import Plan, Run, Target


def api_teams(request, *, write: bool = False):
    """Teams visible to this request (only those it may change things in when `write`)."""
    teams = teams_for_user(request.user, write=write)
    if isinstance(request.auth, ApiToken):
        chosen = list(request.auth.teams.values_list("pk", flat=True))
        if chosen:
            teams = teams.filter(pk__in=chosen)
    return teams


def targets_for(request):
    return Target.objects.filter(team__in=api_teams(request))


def plans_for(request):
    return Plan.objects.filter(team__in=api_teams(request))


def runs_for(request):
    return Run.objects.filter(team__in=api_teams(request))


def check_write(request, team) -> None:
    """404 when the team is not visible at all, 403 when the request's role there is read-only."""
    if not api_teams(request).filter(pk=team.pk).exists():
        raise Http404("No such object.")
    if not api_teams(request, write=True).filter(pk=team.pk).exists():
        raise PermissionDenied("Your role in this team is read-only.")
