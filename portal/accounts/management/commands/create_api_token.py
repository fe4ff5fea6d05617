"""`python manage.py create_api_token USERNAME`: print a new API token for automation."""
from datetime import timedelta

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from portal.accounts.models import ApiToken


class Command(BaseCommand):
    help = "Create a personal API token for USERNAME and print it (only the token, on stdout)."

    def add_arguments(self, parser):
        parser.add_argument("username")
        parser.add_argument("--name", default="created with manage.py", help="What the token is for.")
        parser.add_argument("--expires-days", type=int, default=None, help="Expire after this many days.")

    def handle(self, *args, username, name, expires_days, **options):
        user = get_user_model().objects.filter(username=username).first()
        if user is None:
            raise CommandError(f"No user named {username!r}. Create one first (manage.py createsuperuser).")
        if not user.is_active:
            raise CommandError(f"The user {username!r} is disabled.")
        if expires_days is not None and expires_days <= 0:
            raise CommandError("--expires-days must be a positive number of days.")
        expires = timezone.now() + timedelta(days=expires_days) if expires_days else None
        _, raw = ApiToken.issue(user, name, expires=expires)
        self.stdout.write(raw)
