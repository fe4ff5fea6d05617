"""The form that creates an API token on the settings page."""
from datetime import timedelta

from django import forms
from django.utils import timezone

from portal.accounts.models import Team

EXPIRY_CHOICES = [("", "Never"), ("7", "In 7 days"), ("30", "In 30 days"), ("90", "In 90 days"), ("365", "In a year")]


class ApiTokenForm(forms.Form):
    name = forms.CharField(max_length=100, help_text="What the token is for, e.g. “CI on gpu-host-1”.")
    expires_in = forms.ChoiceField(choices=EXPIRY_CHOICES, required=False, label="Expires",
                                   help_text="Expired tokens stop working; revoke a token any time below.")
    teams = forms.ModelMultipleChoiceField(
        queryset=Team.objects.none(), required=False, widget=forms.CheckboxSelectMultiple,
        help_text="Limit the token to some of your teams; leave all unticked for every team you belong to.",
    )

    def __init__(self, *args, user=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["teams"].queryset = Team.objects.for_user(user).distinct()

    def expires(self):
        days = self.cleaned_data.get("expires_in")
        return timezone.now() + timedelta(days=int(days)) if days else None
