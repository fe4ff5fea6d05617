"""The settings page where a person creates and revokes personal API tokens."""
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from portal.accounts.forms import ApiTokenForm
from portal.accounts.models import ApiToken

# The new token is shown once, on the page after the redirect, then forgotten.
SESSION_KEY = "api_new_token"


@login_required
def token_list(request):
    """List the user's tokens; POST creates one and shows its secret once."""
    if request.method == "POST":
        form = ApiTokenForm(request.POST, user=request.user)
        if form.is_valid():
            token, raw = ApiToken.issue(request.user, form.cleaned_data["name"], expires=form.expires(),
                                        teams=form.cleaned_data["teams"])
            request.session[SESSION_KEY] = {"id": token.pk, "raw": raw}
            return redirect("api-tokens")
    else:
        form = ApiTokenForm(user=request.user)
    new_token = request.session.pop(SESSION_KEY, None)
    tokens = ApiToken.objects.filter(user=request.user).prefetch_related("teams")
    return render(request, "accounts/tokens.html", {"form": form, "tokens": tokens, "new_token": new_token})


@login_required
@require_POST
def token_revoke(request, pk):
    """Revoke one of the user's tokens; it stops working at once."""
    token = get_object_or_404(ApiToken, pk=pk, user=request.user)
    token.revoke()
    messages.success(request, f"Token “{token.name}” revoked. Scripts using it now get 401.")
    return redirect("api-tokens")
